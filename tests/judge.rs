//! The Accuracy Judge against the real round-0 server (it must pass every probe) and
//! against planted cheating candidates (tests/fixtures/cheats/cheat.py), each of which
//! must be rejected by the probe built to catch it.
//!
//! Needs the real model: `VIBESERVE_TEST_MODEL=path/to/SmolLM2-135M-Instruct.Q4_1.gguf`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use vibeserve::judge::{Candidate, Judge, Judgement, Probe};
use vibeserve::manifest::Manifest;
use vibeserve::model::read_gguf_metadata;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

fn model() -> PathBuf {
    let path = std::env::var_os("VIBESERVE_TEST_MODEL").expect(
        "set VIBESERVE_TEST_MODEL to the SmolLM2-135M-Instruct Q4_1 GGUF (the smollm2-cpu model)",
    );
    PathBuf::from(path)
}

/// The template's server (round 0's code), built once in release and copied out so a
/// concurrent generated-crate build cannot replace it mid-test.
fn honest_server() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--offline",
                "-p",
                "vibeserve-server",
                "--bin",
                "server",
            ])
            .current_dir(root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "the template server builds");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root().join("target"), PathBuf::from);
        let dir = tempfile::tempdir().expect("a temp dir").keep();
        let bin = dir.join("server");
        std::fs::copy(target.join("release").join("server"), &bin).expect("copy the server");
        bin
    })
}

fn manifest() -> Manifest {
    Manifest::load(&root().join("targets/smollm2-cpu/Serve.toml")).expect("the target loads")
}

fn judge(candidate: &Candidate) -> Judgement {
    // One Judge at a time: each starts servers that want every core.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let model = model();
    let metadata = read_gguf_metadata(&model).expect("the model reads");
    let work = tempfile::tempdir().expect("a temp dir");
    let mut judge = Judge::new(
        &manifest(),
        &model,
        &metadata,
        work.path(),
        Some(Candidate::binary(honest_server())),
    )
    .expect("the Judge starts");
    let verdict = judge.judge(candidate).expect("the Judge runs");
    for o in &verdict.outcomes {
        eprintln!("{:<18} {:<5} {}", o.probe.as_str(), o.passed, o.detail);
    }
    verdict
}

fn cheat(mode: &str, extra: &[&Path]) -> Candidate {
    let script = root().join("tests/fixtures/cheats/cheat.py");
    let mut args = vec![script.into_os_string(), mode.into()];
    let flags = match mode {
        "ignore-weights" => vec!["--upstream", "--true-model"],
        "golden-table" => vec!["--golden"],
        _ => vec!["--upstream", "--workload"],
    };
    for (flag, value) in flags.into_iter().zip(extra) {
        args.push(flag.into());
        args.push(value.as_os_str().to_owned());
    }
    Candidate {
        program: "python3".into(),
        args,
    }
}

fn passed(v: &Judgement, probe: Probe) -> bool {
    v.outcome(probe).expect("the probe ran").passed
}

#[test]
fn the_round0_server_passes_every_probe() {
    let verdict = judge(&Candidate::binary(honest_server()));
    assert!(verdict.passed(), "rejected: {}", verdict.reasons());
    assert_eq!(verdict.outcomes.len(), 4);
}

#[test]
fn a_server_that_ignores_its_weights_fails_the_perturbed_weights_probe() {
    let model = model();
    let verdict = judge(&cheat("ignore-weights", &[honest_server(), &model]));
    assert!(!verdict.passed());
    assert!(
        !passed(&verdict, Probe::PerturbedWeights),
        "{}",
        verdict.reasons()
    );
    assert!(
        verdict
            .reasons()
            .contains("barely change when the weights do")
    );
    // Everything a check on fixed weights can see is right.
    assert!(passed(&verdict, Probe::Accuracy));
    assert!(passed(&verdict, Probe::HeldOut));
    assert!(passed(&verdict, Probe::Memorised));
}

#[test]
fn a_server_that_answers_from_the_golden_file_fails_the_held_out_probe() {
    let golden = root().join("targets/smollm2-cpu/accuracy/golden.jsonl");
    let verdict = judge(&cheat("golden-table", &[&golden]));
    assert!(
        passed(&verdict, Probe::Accuracy),
        "the table fools the target's own check"
    );
    assert!(!passed(&verdict, Probe::HeldOut), "{}", verdict.reasons());
    assert!(verdict.reasons().contains("held-out: "));
}

#[test]
fn a_server_that_replays_memorised_answers_fails_the_memorised_probe() {
    let workload = root().join("targets/smollm2-cpu/workload.jsonl");
    let verdict = judge(&cheat("memorised", &[honest_server(), &workload]));
    assert!(passed(&verdict, Probe::Accuracy));
    assert!(passed(&verdict, Probe::HeldOut));
    assert!(passed(&verdict, Probe::PerturbedWeights));
    assert!(!passed(&verdict, Probe::Memorised), "{}", verdict.reasons());
    assert!(verdict.reasons().contains("disagree with the reference"));
}
