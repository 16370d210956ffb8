//! Rounds whose building and running are on different machines: `build --stage DIR`,
//! `evaluate DIR`, `build --resume DIR`. The CPU target's evaluate is real and runs
//! here, so the whole flow a GPU host runs is exercised: compile, bundle (stripped,
//! xz), unpack, Judge with its probes, interleaved benchmark, then the state's commits
//! and Serve.lock.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{cap_workload, target_copy, vibeserve};
use vibeserve::lock::Lock;
use vibeserve::state::State;

/// The benchmark's answer length in the test's copy of the target: the flow, not the
/// speed, is under test.
const BENCH_MAX_TOKENS: u64 = 16;

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read json");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn staged_rounds_are_evaluated_elsewhere_and_resumed_into_state_and_lock() {
    let target = target_copy(false);
    cap_workload(target.path(), BENCH_MAX_TOKENS);
    let scratch = tempfile::tempdir().expect("tempdir");
    let shown = target.path().display().to_string();
    let state = scratch.path().join("state").display().to_string();
    let bundle = scratch.path().join("bundle");
    let bundle_arg = bundle.display().to_string();
    let build = |mode: &str| {
        let args = ["build", &shown, "--rounds", "1", "--state-dir", &state];
        let mut args = args.to_vec();
        args.extend([mode, &bundle_arg]);
        vibeserve(&args, &[])
    };

    let out = build("--stage");
    assert!(out.status.success(), "stage failed");
    let staged = json(&bundle.join("bundle.json"));
    assert_eq!(staged["baseline"], true, "round 0 is not measured yet");
    let candidates = staged["candidates"].as_array().expect("candidates");
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0]["round"], 1);
    let binary = candidates[0]["binary"].as_str().expect("round 1 builds");
    for file in [binary, "server-round-0.xz", "cargo-vibeserve.xz"] {
        let head = std::fs::read(bundle.join(file)).expect("packed binary");
        assert_eq!(&head[..6], b"\xfd7zXZ\x00", "{file} is xz");
    }
    let copied = bundle.join(staged["manifest"].as_str().expect("manifest"));
    assert!(copied.is_file() && copied.with_file_name("workload.jsonl").is_file());
    assert!(!copied.with_file_name("Serve.lock").exists());
    assert!(
        !target.path().join("Serve.lock").exists(),
        "staging records nothing"
    );

    let out = vibeserve(&["evaluate", &bundle_arg], &[]);
    assert!(out.status.success(), "evaluate failed");
    evaluate_resumes_an_interrupted_run(&bundle);
    let results = json(&bundle.join("results.json"));
    let baseline = &results["baseline"];
    assert_eq!(baseline["verdict"], "baseline");
    assert!(baseline["objective"].as_f64().expect("round 0 measured") > 0.0);
    let round1 = &results["candidates"][0];
    let probes: Vec<&str> = round1["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .map(|p| p["probe"].as_str().expect("name"))
        .collect();
    assert_eq!(
        probes,
        ["accuracy", "held-out", "perturbed-weights", "memorised"]
    );
    let verdict1 = round1["verdict"].as_str().expect("verdict").to_string();
    if verdict1 != "rejected-judge" {
        assert_eq!(round1["reps"].as_array().expect("reps").len(), 3);
        assert!(round1["metrics"]["ratio_vs_best"].as_f64().is_some());
    }

    let out = build("--resume");
    assert!(out.status.success(), "resume failed");
    let attempts = State::open(&scratch.path().join("state/state.git"))
        .expect("state")
        .attempts()
        .expect("attempts");
    let recorded: Vec<(u32, String)> = attempts
        .iter()
        .map(|a| (a.record.round, a.record.verdict.to_string()))
        .collect();
    assert_eq!(
        recorded,
        [(0, "baseline".to_string()), (1, verdict1.clone())]
    );
    let (kept, measured) = (attempts[0].record.objective, baseline["objective"].as_f64());
    let (kept, measured) = (kept.expect("recorded"), measured.expect("measured"));
    assert!(
        (kept - measured).abs() <= 0.01 * measured,
        "{kept} vs {measured}"
    );
    let lock = Lock::read(&target.path().join("Serve.lock")).expect("Serve.lock written");
    let locked: Vec<u32> = lock.rounds.iter().map(|r| r.round).collect();
    let expect: Vec<u32> = if verdict1 == "accepted" {
        vec![1]
    } else {
        vec![]
    };
    assert_eq!(locked, expect);

    let again = build("--resume");
    assert!(!again.status.success(), "a bundle resumes once");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already records round 0"));
}

/// Rewinds `bundle`'s results.json to what an evaluate killed after judging round 0
/// leaves (round 0 judged, not measured; round 1 not judged), runs evaluate again and
/// checks that it keeps round 0's judgement, judges round 1 and measures both; then
/// that a third run, with everything there, keeps it all and measures nothing.
fn evaluate_resumes_an_interrupted_run(bundle: &Path) {
    let path = bundle.join("results.json");
    let full = json(&path);
    let mut cut = full.clone();
    cut["candidates"] = Value::Array(Vec::new());
    let baseline = &mut cut["baseline"];
    for (field, empty) in [
        ("objective", Value::Null),
        ("metrics", Value::Object(Default::default())),
        ("reps", Value::Array(Vec::new())),
        ("hints", Value::Null),
    ] {
        baseline[field] = empty;
    }
    // A marker the Judge would never write: kept only if the judgement is reused.
    baseline["probes"][0]["detail"] = Value::String("judged by the interrupted run".into());
    std::fs::write(&path, serde_json::to_string_pretty(&cut).expect("json")).expect("write");
    let bundle_arg = bundle.display().to_string();

    let out = vibeserve(&["evaluate", &bundle_arg], &[]);
    assert!(out.status.success(), "resumed evaluate failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("judgements of round(s) 0 reused"),
        "{stderr}"
    );
    assert!(stderr.contains("(reused)"), "{stderr}");
    let resumed = json(&path);
    assert_eq!(
        resumed["baseline"]["probes"][0]["detail"], "judged by the interrupted run",
        "round 0's judgement is kept, not redone"
    );
    assert!(resumed["baseline"]["objective"].as_f64().expect("measured") > 0.0);
    let round1 = &resumed["candidates"][0];
    assert_eq!(round1["round"], 1);
    assert_eq!(
        round1["probes"].as_array().map(Vec::len),
        full["candidates"][0]["probes"].as_array().map(Vec::len),
        "round 1 is judged by the resumed run"
    );
    let judge1 = stderr.lines().find(|l| l.starts_with("round 1: judge"));
    assert!(judge1.is_some_and(|l| !l.contains("(reused)")), "{stderr}");
    if round1["verdict"] != "rejected-judge" {
        assert_eq!(
            round1["reps"].as_array().map(Vec::len),
            Some(3),
            "round 1 measured"
        );
    }

    let out = vibeserve(&["evaluate", &bundle_arg], &[]);
    assert!(out.status.success(), "evaluate of a finished run failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("judgements of round(s) 0, 1 reused"),
        "{stderr}"
    );
    assert!(stderr.contains("measurements: all reused"), "{stderr}");
    assert_eq!(json(&path), resumed, "nothing is redone");
}
