//! What the tests that run whole `cargo vibeserve build`s share: the real binary run in
//! the workspace, and a copy of the default target whose model is a `path` source.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// The shared cargo target directory, so generated crates reuse compiled dependencies.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Runs `cargo vibeserve ARGS` in the workspace with `env` set and no OpenAI endpoint
/// inherited from the caller's environment; echoes its output for a failing test's log.
pub fn vibeserve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"));
    cmd.arg("vibeserve")
        .args(args)
        .current_dir(root())
        .env("CARGO_TARGET_DIR", target_dir())
        .env("NO_COLOR", "1")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cargo-vibeserve runs");
    eprintln!(
        "$ cargo vibeserve {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A copy of the smollm2-cpu target in a temp folder, its model a `path` source (the
/// GGUF named by `VIBESERVE_TEST_MODEL`), with its Serve.lock when `with_lock`.
pub fn target_copy(with_lock: bool) -> tempfile::TempDir {
    let model = std::env::var("VIBESERVE_TEST_MODEL").expect(
        "set VIBESERVE_TEST_MODEL to the SmolLM2-135M-Instruct Q4_1 GGUF (the smollm2-cpu model)",
    );
    let src = root().join("targets/smollm2-cpu");
    let dir = tempfile::tempdir().expect("a temp dir");
    let files: &[&str] = if with_lock {
        &["workload.jsonl", "Serve.lock"]
    } else {
        &["workload.jsonl"]
    };
    for name in files {
        std::fs::copy(src.join(name), dir.path().join(name)).expect("copy");
    }
    std::fs::create_dir(dir.path().join("accuracy")).expect("mkdir");
    for name in ["check.py", "golden.jsonl", "heldout.jsonl"] {
        std::fs::copy(
            src.join("accuracy").join(name),
            dir.path().join("accuracy").join(name),
        )
        .expect("copy");
    }
    let toml = std::fs::read_to_string(src.join("Serve.toml")).expect("read Serve.toml");
    let toml: String = toml
        .lines()
        .map(|l| match l.starts_with("source = ") {
            true => format!("source = {{ path = {model:?} }}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.path().join("Serve.toml"), toml).expect("write Serve.toml");
    dir
}

/// Caps every request's `max_tokens` in the target copy `dir`'s workload at `max_tokens`,
/// so a whole round's benchmark takes seconds, not minutes, on 2 cores.
#[allow(
    dead_code,
    reason = "each test binary that includes this file uses part of it"
)]
pub fn cap_workload(dir: &Path, max_tokens: u64) {
    let path = dir.join("workload.jsonl");
    let text = std::fs::read_to_string(&path).expect("the workload");
    let capped: String = text
        .lines()
        .map(|line| {
            let mut req: serde_json::Value = serde_json::from_str(line).expect("a request");
            let asked = req["max_tokens"].as_u64().unwrap_or(u64::MAX);
            req["max_tokens"] = serde_json::json!(asked.min(max_tokens));
            format!("{req}\n")
        })
        .collect();
    std::fs::write(&path, capped).expect("write the workload");
}
