//! Build script of a CUDA server (the template part `cuda` brings it): compiles
//! `cuda/kernels.cu` and `cuda/gemv.cu` with nvcc for the plan's GPU architecture, writes the Rust
//! declarations of its launchers with bindgen, links the static CUDA runtime, and
//! turns on `cfg(vibeserve_cuda)` so `src/lib.rs` compiles the `cuda` module.
//!
//! nvcc is `$CUDA_HOME/bin/nvcc` when `CUDA_HOME` is set, else the one on `PATH`.

use std::env;
use std::path::{Path, PathBuf};

/// The value of constant `name` in `src/plan_cuda.rs` (the plan's single source), as in
/// `pub const CUDA_ARCH: &str = "sm_90a";` (quotes removed).
fn plan_const(name: &str) -> String {
    let plan = std::fs::read_to_string("src/plan_cuda.rs").expect("src/plan_cuda.rs is readable");
    let prefix = format!("pub const {name}: ");
    plan.lines()
        .find_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split_once(" = "))
        .map(|(_, value)| value.trim_end_matches(';').trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("src/plan_cuda.rs defines {name}"))
}

/// Where the CUDA toolkit is: `CUDA_HOME`, else the folder above the `nvcc` on PATH.
fn cuda_home() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CUDA_HOME") {
        return Some(PathBuf::from(home));
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("nvcc"))
        .find(|nvcc| nvcc.is_file())
        .and_then(|nvcc| nvcc.parent()?.parent().map(Path::to_path_buf))
}

fn main() {
    println!("cargo::rerun-if-changed=cuda");
    println!("cargo::rerun-if-changed=src/plan_cuda.rs");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rustc-check-cfg=cfg(vibeserve_cuda)");
    println!("cargo::rustc-cfg=vibeserve_cuda");
    let home = cuda_home().expect("no CUDA toolkit: set CUDA_HOME or put nvcc on PATH");
    // The architecture nvcc compiles for, and the plan's kernel constants that size
    // register arrays (compile-time in CUDA).
    let arch = plan_const("CUDA_ARCH");
    // sm_90a as `-gencode` (the `-arch=sm_90a` shorthand also runs a plain sm_90 pass).
    let compute = arch.replace("sm_", "compute_");
    let nvcc = home.join("bin").join("nvcc");
    // cc takes nvcc from `NVCC`; set it unless the caller chose one.
    if env::var_os("NVCC").is_none() {
        // SAFETY: the build script is single-threaded at this point.
        unsafe { env::set_var("NVCC", &nvcc) };
    }
    cc::Build::new()
        .cuda(true)
        // cc follows the profile's debug info, and for nvcc that means `-G`: device code
        // without optimisation (kernels 10-50x slower). Line tables are enough.
        .debug(false)
        .flag("-lineinfo")
        .flag(format!("-gencode=arch={compute},code={arch}"))
        .flag("-O3")
        .define("GEMV_UNROLL", plan_const("CUDA_GEMV_UNROLL").as_str())
        .define("SAMPLE_LOADS", plan_const("CUDA_SAMPLE_LOADS").as_str())
        .define("ATTN_STAGES", plan_const("ATTN_STAGES").as_str())
        .define("EARLY_TRIGGER", plan_const("CUDA_EARLY_TRIGGER").as_str())
        .define(
            "GEMV_EARLY_TRIGGER_MAX_TOKENS",
            plan_const("CUDA_GEMV_EARLY_TRIGGER_MAX_TOKENS").as_str(),
        )
        .include(home.join("include"))
        .file("cuda/kernels.cu")
        .file("cuda/comm.cu")
        .file("cuda/gemv.cu")
        .compile("vibeserve_kernels");
    for lib in ["lib", "lib64", "targets/x86_64-linux/lib"] {
        if home.join(lib).is_dir() {
            println!(
                "cargo::rustc-link-search=native={}",
                home.join(lib).display()
            );
        }
    }
    // The static CUDA runtime needs these system libraries.
    for lib in ["dl", "rt", "pthread", "stdc++"] {
        println!("cargo::rustc-link-lib={lib}");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindgen::Builder::default()
        .header("cuda/launchers.h")
        .header("cuda/comm.h")
        .allowlist_function("vs_.*")
        .allowlist_var("VS_.*")
        .generate()
        .expect("bindgen reads cuda/launchers.h")
        .write_to_file(out.join("launchers.rs"))
        .expect("OUT_DIR is writable");
}
