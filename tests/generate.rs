//! Round-0 generation through the real binary, on every committed target: the output is
//! byte-identical from run to run, snapshot-tested file by file, consistent with the
//! template's own `src/plan.rs`, and the generated crate builds on its own.

#[path = "support/cuda.rs"]
mod cuda;
// Only the workspace's paths: the rest of the shared support is for whole builds.
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::process::{Command, ExitStatus, Output};

use support::{root, target_dir};
use vibeserve::generate::FileSet;

/// `cargo ARGS --release --offline --locked` on the generated crate in `crate_dir`.
fn cargo_on_crate(args: &[&str], crate_dir: &Path, target_dir: &Path) -> ExitStatus {
    Command::new(env!("CARGO"))
        .args(args)
        .args(["--release", "--offline", "--locked", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("cargo runs")
}

/// Runs `cargo-vibeserve vibeserve ARGS` from the repository root.
fn vibeserve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"))
        .arg("vibeserve")
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("cargo-vibeserve runs")
}

/// Generates `target` into a fresh folder and returns the folder.
fn generate_into(target: &str, dir: &Path) {
    let out = vibeserve(&[
        "generate",
        target,
        "--out",
        dir.to_str().expect("UTF-8 temp path"),
    ]);
    assert!(
        out.status.success(),
        "generate {target} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, by relative path.
fn read_tree(dir: &Path) -> FileSet {
    let mut files = FileSet::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).expect("readable folder") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("under dir");
                let rel = rel.to_str().expect("UTF-8 paths").replace('\\', "/");
                files.insert(rel, std::fs::read(&path).expect("readable file"));
            }
        }
    }
    files
}

/// The committed targets whose model this machine has (CPU targets: all of them today).
fn committed_targets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("targets"))
        .expect("targets/ exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Serve.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn text(files: &FileSet, path: &str) -> String {
    String::from_utf8(files.get(path).expect("generated file").to_vec()).expect("UTF-8")
}

#[test]
fn generation_is_byte_identical_and_snapshotted() {
    let targets = committed_targets();
    assert!(targets.contains(&"smollm2-cpu".to_string()));
    for target in targets {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate_into(&target, a.path());
        generate_into(&target, b.path());
        let (first, second) = (read_tree(a.path()), read_tree(b.path()));
        assert_eq!(first, second, "{target}: two generations differ");

        let listing: String = first
            .digests()
            .into_iter()
            .map(|(path, digest)| format!("{digest}  {path}\n"))
            .collect();
        insta::assert_snapshot!(format!("{target}__files"), listing);
        for path in ["Plan.toml", "src/plan.rs", "src/plan_cuda.rs", "Cargo.toml"] {
            if path == "src/plan_cuda.rs" && first.get(path).is_none() {
                continue; // CPU targets have no CUDA constants.
            }
            let name = format!("{target}__{}", path.replace(['/', '.'], "_"));
            insta::assert_snapshot!(name, text(&first, path));
        }

        // A second `generate` onto the same folder changes nothing, and --check agrees.
        generate_into(&target, a.path());
        assert_eq!(read_tree(a.path()), first);
        let check = vibeserve(&[
            "generate",
            &target,
            "--check",
            "--out",
            a.path().to_str().unwrap(),
        ]);
        assert!(check.status.success(), "--check after generate failed");
    }
}

#[test]
fn check_names_the_first_drifted_file() {
    let dir = tempfile::tempdir().unwrap();
    generate_into("smollm2-cpu", dir.path());
    let main_rs = dir.path().join("src/main.rs");
    let mut edited = std::fs::read_to_string(&main_rs).unwrap();
    edited.push_str("// a hand edit\n");
    std::fs::write(&main_rs, edited).unwrap();
    std::fs::write(dir.path().join("src/extra.rs"), "// not generated\n").unwrap();

    let out = vibeserve(&[
        "generate",
        "smollm2-cpu",
        "--check",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not generated: src/extra.rs"), "{stderr}");
    assert!(stderr.contains("changed: src/main.rs"), "{stderr}");

    // Generating again repairs the folder: the hand edit and the stray file are gone.
    generate_into("smollm2-cpu", dir.path());
    assert!(!dir.path().join("src/extra.rs").exists());
    let check = vibeserve(&[
        "generate",
        "smollm2-cpu",
        "--check",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(check.status.success());
}

#[test]
fn generate_refuses_a_folder_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let out = vibeserve(&[
        "generate",
        "smollm2-cpu",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "mine"
    );
}

/// The template is built and tested in the workspace with the default target's round-0
/// plan: its `src/plan.rs` must be exactly what generation writes for that target, or
/// the workspace would be testing a server no user gets.
#[test]
fn template_plan_rs_is_the_default_targets_round0() {
    let dir = tempfile::tempdir().unwrap();
    generate_into("smollm2-cpu", dir.path());
    let generated = std::fs::read_to_string(dir.path().join("src/plan.rs")).unwrap();
    let body: String = generated
        .lines()
        .skip_while(|l| l.starts_with("// @generated") || l.starts_with("// Edit"))
        .skip_while(|l| l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let template = std::fs::read_to_string(root().join("templates/server/src/plan.rs")).unwrap();
    assert_eq!(
        body, template,
        "templates/server/src/plan.rs drifted from smollm2-cpu's round-0 plan"
    );
}

/// A CPU target's crate carries no CUDA code, no build script, no dummy-weights binary
/// and none of their dependencies; a CUDA target's crate has all of them.
#[test]
fn parts_follow_the_device_and_the_model_source() {
    let (cpu, cuda) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate_into("smollm2-cpu", cpu.path());
    generate_into("llama-3.2-1b-h100", cuda.path());
    let (cpu, cuda) = (read_tree(cpu.path()), read_tree(cuda.path()));
    let has = |files: &FileSet, prefix: &str| files.iter().any(|(p, _)| p.starts_with(prefix));
    for prefix in [
        "src/cuda/",
        "src/plan_cuda.rs",
        "build.rs",
        "cuda/",
        "src/bin/materialize/",
    ] {
        assert!(!has(&cpu, prefix), "the CPU crate has {prefix}");
        assert!(has(&cuda, prefix), "the CUDA crate lacks {prefix}");
    }
    for dep in ["cudarc", "safetensors", "bindgen"] {
        assert!(
            !text(&cpu, "Cargo.toml").contains(dep),
            "CPU Cargo.toml names {dep}"
        );
        assert!(
            text(&cuda, "Cargo.toml").contains(dep),
            "CUDA Cargo.toml lacks {dep}"
        );
    }
    let plan = text(&cuda, "Plan.toml");
    assert!(
        plan.contains("parts = [\"core\", \"cuda\", \"dummy\"]"),
        "{plan}"
    );
    assert!(!text(&cpu, "Plan.toml").contains("[cuda]"));
}

/// The template's `src/plan_cuda.rs` holds the CUDA targets' round-0 values, so the
/// CUDA code the workspace compiles is what round 0 of a CUDA target gets.
#[test]
fn template_plan_cuda_rs_is_the_cuda_targets_round0() {
    for target in ["llama-3.2-1b-h100", "llama-3.1-8b-h100"] {
        let dir = tempfile::tempdir().unwrap();
        generate_into(target, dir.path());
        let generated = std::fs::read_to_string(dir.path().join("src/plan_cuda.rs")).unwrap();
        let body: String = generated
            .lines()
            .skip_while(|l| l.starts_with("// @generated") || l.starts_with("// Edit"))
            .skip_while(|l| l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        let template =
            std::fs::read_to_string(root().join("templates/server/src/plan_cuda.rs")).unwrap();
        assert_eq!(
            body, template,
            "templates/server/src/plan_cuda.rs drifted from {target}'s round-0 plan"
        );
    }
}

/// Both CUDA targets' generated crates compile — kernels through nvcc, launcher
/// declarations through bindgen — on a machine with no GPU, and the 1B crate's unit tests
/// pass there (those that need a GPU are ignored with "needs a CUDA device", and show as
/// such in the output). `.ci/run` installs nvcc (pip `nvidia-cuda-nvcc==13.0.*`
/// and friends, `CUDA_HOME` exported), so this runs in CI; on a machine without nvcc it
/// prints that it is skipped and passes.
#[test]
fn cuda_generated_crates_build_without_a_gpu() {
    let Some(nvcc) = cuda::nvcc() else {
        println!(
            "SKIPPED cuda_generated_crates_build_without_a_gpu: no nvcc (set CUDA_HOME or put nvcc on PATH; .ci/run installs it)"
        );
        return;
    };
    println!("building the CUDA targets' crates with {}", nvcc.display());
    let target_dir = target_dir();
    for (folder, name) in [
        ("llama-3.2-1b-h100", "llama-3-2-1b-h100"),
        ("llama-3.1-8b-h100", "llama-3-1-8b-h100"),
    ] {
        let out = vibeserve(&["generate", folder]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let crate_dir = target_dir.join("vibeserve").join(name).join("server");
        assert!(
            cargo_on_crate(&["build"], &crate_dir, &target_dir).success(),
            "the generated {name} crate does not build"
        );
    }
    // The code is the same in both crates (only plan constants differ): the unit tests,
    // the CUDA part's and the core's under a CUDA target's plan, run once, in the 1B's.
    let crate_dir = target_dir.join("vibeserve/llama-3-2-1b-h100/server");
    assert!(
        cargo_on_crate(&["test", "--lib"], &crate_dir, &target_dir).success(),
        "the generated CUDA crate's unit tests fail"
    );
}

/// The generated crate builds on its own, offline, with its pinned lockfile. It is built
/// where `generate` puts it by default, so later runs and other tests reuse the build.
#[test]
fn generated_crate_builds() {
    let out = vibeserve(&["generate", "smollm2-cpu"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target_dir = target_dir();
    let crate_dir = target_dir.join("vibeserve/smollm2-cpu/server");
    assert!(
        cargo_on_crate(&["build"], &crate_dir, &target_dir).success(),
        "the generated smollm2-cpu crate does not build"
    );
}
