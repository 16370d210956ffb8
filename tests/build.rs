//! `cargo vibeserve build` through the real binary: `--locked` reproduces every committed
//! target, a drifted lock fails naming what differs, and a killed search resumes without
//! losing or recomputing a kept round.
//!
//! The drift and resume tests need the real model:
//! `VIBESERVE_TEST_MODEL=path/to/SmolLM2-135M-Instruct.Q4_1.gguf`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vibeserve::build::ABORT_AFTER_ROUND_ENV;
use vibeserve::state::State;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// The shared cargo target directory, so generated crates reuse compiled dependencies.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn vibeserve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"));
    cmd.arg("vibeserve")
        .args(args)
        .current_dir(root())
        .env("CARGO_TARGET_DIR", target_dir())
        .env("NO_COLOR", "1");
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

/// A copy of the smollm2-cpu target in a temp folder, its model a `path` source.
fn target_copy() -> tempfile::TempDir {
    let model = std::env::var("VIBESERVE_TEST_MODEL").expect(
        "set VIBESERVE_TEST_MODEL to the SmolLM2-135M-Instruct Q4_1 GGUF (the smollm2-cpu model)",
    );
    let src = root().join("targets/smollm2-cpu");
    let dir = tempfile::tempdir().expect("a temp dir");
    for name in ["workload.jsonl", "Serve.lock"] {
        if src.join(name).is_file() {
            std::fs::copy(src.join(name), dir.path().join(name)).expect("copy");
        }
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
        .map(|l| {
            if l.starts_with("source = ") {
                format!("source = {{ path = {model:?} }}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("Serve.toml"), toml).expect("write Serve.toml");
    dir
}

#[test]
fn locked_build_reproduces_every_committed_target() {
    let mut locked = 0;
    for entry in std::fs::read_dir(root().join("targets")).expect("targets/") {
        let dir = entry.expect("an entry").path();
        if !dir.join("Serve.lock").is_file() {
            continue;
        }
        let shown = dir.display().to_string();
        let out = vibeserve(&["build", &shown, "--locked"], &[]);
        assert!(out.status.success(), "{shown}: build --locked failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("locked server reproduced"), "{stdout}");
        locked += 1;
    }
    assert!(locked > 0, "no committed target has a Serve.lock");
}

#[test]
fn a_drifted_lock_fails_and_says_what_differs() {
    let dir = target_copy();
    let lock = dir.path().join("Serve.lock");
    let text = std::fs::read_to_string(&lock).expect("the target has a Serve.lock");
    let tree_line = text
        .lines()
        .find(|l| l.starts_with("tree = "))
        .expect("Serve.lock has a tree digest")
        .to_string();
    let tampered = text.replace(&tree_line, &format!("tree = \"{}\"", "0".repeat(64)));
    std::fs::write(&lock, tampered).expect("write");
    let state = dir.path().join("state");
    let shown = dir.path().display().to_string();
    let state_arg = state.display().to_string();
    let out = vibeserve(
        &["build", &shown, "--locked", "--state-dir", &state_arg],
        &[],
    );
    assert!(!out.status.success(), "a drifted lock must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("differs from Serve.lock"), "{stderr}");
    assert!(stderr.contains("--relock"), "{stderr}");
}

#[test]
fn a_killed_search_resumes_without_recomputing_kept_rounds() {
    let dir = target_copy();
    let _ = std::fs::remove_file(dir.path().join("Serve.lock"));
    let shown = dir.path().display().to_string();
    let state = dir.path().join("state");
    let state_arg = state.display().to_string();
    let args = ["build", &shown, "--rounds", "0", "--state-dir", &state_arg];
    let out = vibeserve(&args, &[(ABORT_AFTER_ROUND_ENV, "0")]);
    assert_eq!(out.status.code(), Some(vibeserve::build::ABORT_EXIT_CODE));
    let before = State::open(&state.join("state.git"))
        .expect("state")
        .attempts()
        .expect("attempts");
    assert_eq!(before.len(), 1, "round 0 was recorded before the kill");
    assert!(
        dir.path().join("Serve.lock").is_file(),
        "the lock was written"
    );

    let out = vibeserve(&args, &[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resuming after round 0"), "{stderr}");
    assert!(
        !stderr.contains("the template's defaults"),
        "round 0 was recomputed"
    );
    let after = State::open(&state.join("state.git"))
        .expect("state")
        .attempts()
        .expect("attempts");
    assert_eq!(after, before, "the kept round is unchanged");
}
