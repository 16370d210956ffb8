//! Whole rounds with the LLM back end on the real default target, against the scripted
//! endpoint (`agent/endpoint.rs`): round 1's agent reads a skill, changes a plan constant,
//! builds and stops — judged, reviewed, measured, its patch recorded; round 2's agent
//! skips half the forward pass — rejected by a probe, the reason in `log`. Then
//! `build --locked` rebuilds round 1's tree from the patch with no endpoint at all.
//!
//! Needs the real model: `VIBESERVE_TEST_MODEL=path/to/SmolLM2-135M-Instruct.Q4_1.gguf`.
//! Slow (round 0 and two agent rounds compile and judge the server; round 1 is
//! benchmarked): ignored by default; run with
//! `cargo test -p cargo-vibeserve --test agent_rounds -- --ignored`.

#[path = "agent/endpoint.rs"]
mod endpoint;
mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use endpoint::{Reply, answer, role_of, step_of};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::{target_copy, vibeserve};
use vibeserve::agent::roles::{Budget, End, converse};
use vibeserve::agent::tools::name;
use vibeserve::agent::{ChatClient, Endpoint, Role};
use vibeserve::bench::peer::{ServerProcess, free_port};
use vibeserve::lock::{Lock, LockedRound, PatchRef};
use vibeserve::search::Verdict;
use vibeserve::state::State;

const KEY: &str = "sk-test-ROUNDS-KEY-never-on-disk";
const HONEST_OLD: &str = "pub const PREFETCH_ROWS: usize = 4;";
const HONEST_NEW: &str = "pub const PREFETCH_ROWS: usize = 8;";
const LAYER_LOOP: &str = "for (layer, block) in self.blocks.iter().enumerate() {";
const SKIPPED_LOOP: &str =
    "for (layer, block) in self.blocks.iter().enumerate().take(N_LAYERS / 2) {";

fn call(tool: &str, args: serde_json::Value) -> (&str, String) {
    (tool, args.to_string())
}

/// The scripted model: an honest Implementer first, a cheating one second; a reviewer
/// that passes; an Evaluator with notes.
fn script() -> endpoint::Script {
    let implementer_runs = Arc::new(AtomicUsize::new(0));
    Arc::new(move |body, _| {
        let step = step_of(body);
        let usage = (400 + 100 * step as u32, 40);
        let reply = match role_of(body) {
            "implementer" => {
                if step == 0 {
                    implementer_runs.fetch_add(1, Ordering::SeqCst);
                }
                let honest = implementer_runs.load(Ordering::SeqCst) == 1;
                let calls = match (honest, step) {
                    (true, 0) => vec![call(
                        name::READ_SKILL,
                        json!({"id": "hardware/matmul-tiling"}),
                    )],
                    (true, 1) => vec![call(
                        name::READ,
                        json!({"path": "src/plan.rs", "start": 50, "end": 70}),
                    )],
                    (true, 2) => vec![call(
                        name::REPLACE,
                        json!({"path": "src/plan.rs", "old": HONEST_OLD, "new": HONEST_NEW}),
                    )],
                    (true, 3) => vec![call(name::CARGO, json!({"subcommand": "build"}))],
                    (false, 0) => vec![call(
                        name::REPLACE,
                        json!({"path": "src/model/llama.rs", "old": LAYER_LOOP, "new": SKIPPED_LOOP}),
                    )],
                    _ => vec![call(name::FINISH, json!({"summary": "done"}))],
                };
                let calls: Vec<(&str, String)> = calls;
                answer(None, &calls, usage.0, usage.1)
            }
            "reviewer" => answer(
                Some("{\"verdict\": \"pass\", \"reason\": \"a constant\"}"),
                &[],
                900,
                20,
            ),
            "evaluator" => answer(
                Some(
                    "{\"notes\": \"decode dominates\", \"suggest\": [\"hardware/matmul-tiling\"]}",
                ),
                &[],
                300,
                30,
            ),
            _ => answer(Some("{}"), &[], 1, 1),
        };
        Reply::Json(200, reply)
    })
}

/// Files under `dir` that hold `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                hits.push(p);
            }
        }
    }
    hits
}

#[test]
#[ignore = "whole rounds on the real model (minutes); run with --ignored"]
fn llm_rounds_are_judged_recorded_and_replayed_from_the_patch() {
    let dir = target_copy(false);
    let ep = endpoint::start(script());
    let shown = dir.path().display().to_string();
    let state = dir.path().join("state");
    let state_arg = state.display().to_string();
    let args = [
        "build",
        &shown,
        "--rounds",
        "2",
        "--state-dir",
        &state_arg,
        "--agent",
        "openai",
        "--agent-model",
        "scripted",
    ];
    let out = vibeserve(
        &args,
        &[
            ("OPENAI_BASE_URL", ep.url.as_str()),
            ("OPENAI_API_KEY", KEY),
        ],
    );
    assert!(out.status.success(), "the agent build failed");
    let attempts = State::open(&state.join("state.git"))
        .expect("state")
        .attempts()
        .expect("attempts");
    let verdicts: Vec<Verdict> = attempts.iter().map(|a| a.record.verdict).collect();
    assert_eq!(verdicts.len(), 3, "{verdicts:?}");
    assert!(
        matches!(
            verdicts[1],
            Verdict::Accepted | Verdict::RejectedRegression | Verdict::RejectedConstraint
        ),
        "round 1 must be judged correct and measured: {verdicts:?}"
    );
    assert_eq!(
        verdicts[2],
        Verdict::RejectedJudge,
        "the skipped forward pass must fail a probe"
    );
    let patch =
        std::fs::read_to_string(state.join("agent/round-1.patch")).expect("round 1's patch");
    assert!(
        patch.contains(&format!("-{HONEST_OLD}")) && patch.contains(&format!("+{HONEST_NEW}")),
        "{patch}"
    );
    assert!(!ep.requests.lock().expect("lock").is_empty());
    assert!(
        ep.auth
            .lock()
            .expect("lock")
            .iter()
            .all(|a| a == &format!("Bearer {KEY}"))
    );
    assert!(
        files_holding(&state, KEY).is_empty(),
        "the key was written: {:?}",
        files_holding(&state, KEY)
    );
    assert!(files_holding(dir.path(), KEY).is_empty());

    let log = vibeserve(&["log", &shown, "--state-dir", &state_arg], &[]);
    let text = String::from_utf8_lossy(&log.stdout);
    for role in ["implementer", "reviewer", "evaluator"] {
        assert!(text.contains(role), "log lacks the {role} row:\n{text}");
    }
    assert!(
        text.contains("round 2: rejected-judge: "),
        "log lacks the probe's reason:\n{text}"
    );

    // The lock names round 1's patch with its digest: as the search wrote it when the
    // round was accepted, or (a measured regression) as it would have.
    let lock_path = dir.path().join("Serve.lock");
    let mut lock = Lock::read(&lock_path).expect("Serve.lock");
    let round1 = &attempts[1];
    let files = State::open(&state.join("state.git"))
        .expect("state")
        .files(&round1.commit)
        .expect("files");
    if verdicts[1] != Verdict::Accepted {
        std::fs::create_dir_all(dir.path().join("patches")).expect("mkdir");
        std::fs::write(dir.path().join("patches/round-1.patch"), &patch).expect("write");
        let r = &round1.record;
        let patch_ref = PatchRef {
            path: "patches/round-1.patch".into(),
            sha256: hex::encode(Sha256::digest(patch.as_bytes())),
        };
        let locked = LockedRound {
            round: 1,
            skill: r.skill.clone().unwrap_or_default(),
            label: r.label.clone().unwrap_or_default(),
            verdict: Verdict::Accepted,
            changes: vec![],
            patch: Some(patch_ref),
            metrics: r.metrics.clone(),
        };
        // What `Lock::accept` records: the round and the tree it leads to.
        lock.rounds.push(locked);
        lock.tree = files.tree_digest();
        lock.write(&lock_path).expect("write Serve.lock");
    }
    let lock = Lock::read(&lock_path).expect("Serve.lock");
    let locked_patch = lock.rounds[0]
        .patch
        .clone()
        .expect("round 1 is a patch round");
    let on_disk = std::fs::read(dir.path().join(&locked_patch.path)).expect("the locked patch");
    assert_eq!(hex::encode(Sha256::digest(&on_disk)), locked_patch.sha256);
    assert_eq!(
        lock.tree,
        files.tree_digest(),
        "the lock's tree is round 1's crate"
    );

    let clean = dir.path().join("clean-state").display().to_string();
    let out = vibeserve(&["build", &shown, "--locked", "--state-dir", &clean], &[]);
    assert!(
        out.status.success(),
        "build --locked without the endpoint failed"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("locked server reproduced"));

    let model = std::env::var("VIBESERVE_TEST_MODEL").expect("the model");
    smoke_test_our_server(&state.join("rounds/0/server"), &model);
}

/// The transport against a real server: round 0's server (built by the rounds above)
/// answers the back end's chat request; no tools are offered to a 135M model.
fn smoke_test_our_server(server: &Path, model: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let port = free_port().expect("a free port");
    let args: Vec<OsString> = [
        "serve",
        "--model",
        model,
        "--port",
        &port.to_string(),
        "--served-model-name",
        "smollm2-cpu",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let server = rt
        .block_on(ServerProcess::start(
            server,
            &args,
            port,
            Duration::from_secs(60),
        ))
        .expect("round 0's server starts");
    let client = ChatClient::new(Endpoint {
        base_url: format!("{}/v1", server.url),
        api_key: String::new(),
        model: "smollm2-cpu".into(),
    });
    let mut budget = Budget {
        max_tool_calls: 0,
        max_tokens: 48,
        deadline: Instant::now() + Duration::from_secs(120),
        tool_calls: 0,
        tokens: 0,
    };
    let (end, conv) = rt.block_on(converse(
        &client,
        Role::Evaluator,
        "You are a helpful assistant.",
        "Name a colour.",
        None,
        &mut budget,
    ));
    let End::Done(text) = end else {
        panic!("our server did not answer: {end:?}")
    };
    assert!(!text.trim().is_empty(), "an empty answer");
    assert_eq!(conv.usage.calls, 1);
    assert!(
        conv.usage.prompt_tokens > 0 && conv.usage.completion_tokens > 0,
        "{:?}",
        conv.usage
    );
    eprintln!("our server answered: {text:?} ({:?})", conv.usage);
}
