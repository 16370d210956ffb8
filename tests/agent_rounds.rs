//! Whole rounds with the LLM back end on the real default target, against the scripted
//! endpoint (`agent/endpoint.rs`, streamed): round 1's agent skips half the forward pass
//! — rejected by a probe, the reason in `log`; round 2's agent reads a skill, changes a
//! plan constant, builds, tests and stops — judged, reviewed, measured, its patch
//! recorded; round 3's endpoint answers every call with a 500, so that round ends
//! `agent-failed`, recorded and reverted. Then `build --locked` on a clean copy of the
//! target rebuilds round 2's tree from the patch with no endpoint at all, and round 0's
//! server answers the back end's own chat request (the transport against a real server).
//!
//! Needs the real model (`VIBESERVE_TEST_MODEL`, set by `.cargo/config.toml` to where
//! `cargo vibeserve fetch smollm2-cpu` puts it). To keep it to a few minutes on 2 cores,
//! the target copy's workload asks for at most [`BENCH_MAX_TOKENS`] tokens a request.

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
use support::{cap_workload, target_copy, vibeserve};
use vibeserve::agent::roles::{Budget, End, converse};
use vibeserve::agent::tools::name;
use vibeserve::agent::{ChatClient, Endpoint, Role, Transcript};
use vibeserve::bench::peer::{ServerProcess, free_port};
use vibeserve::lock::{Lock, LockedRound, PatchRef};
use vibeserve::search::Verdict;
use vibeserve::state::State;

const KEY: &str = "sk-test-ROUNDS-KEY-never-on-disk";
/// The benchmark's answer length in the test's copy of the target.
const BENCH_MAX_TOKENS: u64 = 16;
const HONEST_OLD: &str = "pub const PREFETCH_ROWS: usize = 4;";
const HONEST_NEW: &str = "pub const PREFETCH_ROWS: usize = 8;";
const LAYER_LOOP: &str = "for (layer, block) in self.blocks.iter().enumerate() {";
const SKIPPED_LOOP: &str =
    "for (layer, block) in self.blocks.iter().enumerate().take(N_LAYERS / 2) {";

fn call(tool: &str, args: serde_json::Value) -> (&str, String) {
    (tool, args.to_string())
}

/// The scripted model: a cheating Implementer first, an honest one second, a failing
/// endpoint third; a reviewer that passes; an Evaluator with notes.
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
                let run = implementer_runs.load(Ordering::SeqCst);
                if run >= 3 {
                    return Reply::Json(
                        500,
                        json!({"error": {"message": "upstream overloaded", "type": "server_error"}}),
                    );
                }
                let cheat = run == 1;
                let calls = match (cheat, step) {
                    (true, 0) => vec![call(
                        name::REPLACE,
                        json!({"path": "src/model/llama.rs", "old": LAYER_LOOP, "new": SKIPPED_LOOP}),
                    )],
                    (false, 0) => vec![call(
                        name::READ_SKILL,
                        json!({"id": "hardware/matmul-tiling"}),
                    )],
                    (false, 1) => vec![call(
                        name::SEARCH,
                        json!({"pattern": "PREFETCH_ROWS", "path": "src/plan.rs"}),
                    )],
                    (false, 2) => vec![call(
                        name::REPLACE,
                        json!({"path": "src/plan.rs", "old": HONEST_OLD, "new": HONEST_NEW}),
                    )],
                    (false, 3) => vec![call(name::CARGO, json!({"subcommand": "build"}))],
                    (false, 4) => vec![call(
                        name::CARGO,
                        json!({"subcommand": "test", "args": ["--release", "--lib"]}),
                    )],
                    _ => vec![call(name::FINISH, json!({"summary": "done"}))],
                };
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

/// A clean copy of the target folder `from` (Serve.toml, Serve.lock, patches, workload,
/// accuracy data): no state, no transcripts, no build output.
fn clean_copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("a temp dir");
    for sub in ["patches", "accuracy"] {
        std::fs::create_dir(to.path().join(sub)).expect("mkdir");
        for e in std::fs::read_dir(from.join(sub))
            .expect("read_dir")
            .flatten()
        {
            std::fs::copy(e.path(), to.path().join(sub).join(e.file_name())).expect("copy");
        }
    }
    for name in ["Serve.toml", "Serve.lock", "workload.jsonl"] {
        std::fs::copy(from.join(name), to.path().join(name)).expect("copy");
    }
    to
}

/// The text of every tool result in round `round`'s transcript.
fn tool_results(state: &Path, round: u32) -> Vec<String> {
    let path = state.join(format!("agent/round-{round}.json"));
    let t: Transcript =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the transcript"))
            .expect("a transcript");
    t.conversations
        .iter()
        .flat_map(|c| c.messages.iter())
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
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
fn llm_rounds_are_judged_recorded_and_replayed_from_the_patch() {
    let started = Instant::now();
    let dir = target_copy(false);
    cap_workload(dir.path(), BENCH_MAX_TOKENS);
    let ep = endpoint::start(script());
    let shown = dir.path().display().to_string();
    let state = dir.path().join("state");
    let state_arg = state.display().to_string();
    let args = [
        "build",
        &shown,
        "--rounds",
        "3",
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
    eprintln!("search: {:.0?}", started.elapsed());
    let attempts = State::open(&state.join("state.git"))
        .expect("state")
        .attempts()
        .expect("attempts");
    let verdicts: Vec<Verdict> = attempts.iter().map(|a| a.record.verdict).collect();
    assert_eq!(verdicts.len(), 4, "{verdicts:?}");
    assert_eq!(
        verdicts[1],
        Verdict::RejectedJudge,
        "the skipped forward pass must fail a probe"
    );
    assert!(
        matches!(
            verdicts[2],
            Verdict::Accepted | Verdict::RejectedRegression | Verdict::RejectedConstraint
        ),
        "round 2 must be judged correct and measured: {verdicts:?}"
    );
    assert_eq!(
        verdicts[3],
        Verdict::AgentFailed,
        "an endpoint that keeps failing must end the round, not the build"
    );
    let best = State::open(&state.join("state.git"))
        .expect("state")
        .best()
        .expect("best")
        .expect("a best round");
    assert!(best.record.round < 3, "the failed round was not reverted");
    let results = tool_results(&state, 2);
    assert!(
        results.first().is_some_and(|r| !r.starts_with("error:")),
        "round 2's agent could not read the skill: {results:#?}"
    );
    for (what, done) in [
        ("built", "cargo build: exit code 0"),
        ("tested", "cargo test: exit code 0"),
    ] {
        assert!(
            results.iter().any(|r| r.contains(done)),
            "round 2's agent has not {what}: {results:#?}"
        );
    }
    let patch =
        std::fs::read_to_string(state.join("agent/round-2.patch")).expect("round 2's patch");
    assert!(
        patch.contains(&format!("-{HONEST_OLD}")) && patch.contains(&format!("+{HONEST_NEW}")),
        "{patch}"
    );
    let requests = ep.requests.lock().expect("lock").clone();
    assert!(requests.iter().all(|r| r["stream"] == true));
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
    eprintln!("{text}");
    for role in ["implementer", "reviewer", "evaluator"] {
        assert!(text.contains(role), "log lacks the {role} row:\n{text}");
    }
    assert!(
        text.contains("round 1: rejected-judge: "),
        "log lacks the probe's reason:\n{text}"
    );
    assert!(
        text.contains("round 3: agent-failed: "),
        "log lacks the failed round's reason:\n{text}"
    );

    lock_round(dir.path(), &state, &attempts[2], &patch);
    let lock = Lock::read(&dir.path().join("Serve.lock")).expect("Serve.lock");
    let locked_patch = lock.rounds[0]
        .patch
        .clone()
        .expect("round 2 is a patch round");
    let on_disk = std::fs::read(dir.path().join(&locked_patch.path)).expect("the locked patch");
    assert_eq!(hex::encode(Sha256::digest(&on_disk)), locked_patch.sha256);
    let files = State::open(&state.join("state.git"))
        .expect("state")
        .files(&attempts[2].commit)
        .expect("files");
    assert_eq!(
        lock.tree,
        files.tree_digest(),
        "the lock's tree is round 2's crate"
    );

    let clean = clean_copy(dir.path());
    let clean_shown = clean.path().display().to_string();
    let out = vibeserve(&["build", &clean_shown, "--locked"], &[]);
    assert!(
        out.status.success(),
        "build --locked without the endpoint failed"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("locked server reproduced"));
    eprintln!("search and locked rebuild: {:.0?}", started.elapsed());

    let model = std::env::var("VIBESERVE_TEST_MODEL").expect("the model");
    smoke_test_our_server(&state.join("rounds/0/server"), &model);
}

/// Serve.lock naming round `attempt`'s patch with its digest: as the search wrote it
/// when the round was accepted, or, for a measured regression, as it would have.
fn lock_round(dir: &Path, state: &Path, attempt: &vibeserve::state::StoredAttempt, patch: &str) {
    if attempt.record.verdict == Verdict::Accepted {
        return;
    }
    let lock_path = dir.join("Serve.lock");
    let mut lock = Lock::read(&lock_path).expect("Serve.lock");
    let rel = format!("patches/round-{}.patch", attempt.record.round);
    std::fs::create_dir_all(dir.join("patches")).expect("mkdir");
    std::fs::write(dir.join(&rel), patch).expect("write");
    let r = &attempt.record;
    lock.rounds.push(LockedRound {
        round: r.round,
        skill: r.skill.clone().unwrap_or_default(),
        label: r.label.clone().unwrap_or_default(),
        verdict: Verdict::Accepted,
        changes: vec![],
        patch: Some(PatchRef {
            path: rel,
            sha256: hex::encode(Sha256::digest(patch.as_bytes())),
        }),
        metrics: r.metrics.clone(),
    });
    // What `Lock::accept` records: the round and the tree it leads to.
    let files = State::open(&state.join("state.git"))
        .expect("state")
        .files(&attempt.commit)
        .expect("files");
    lock.tree = files.tree_digest();
    lock.write(&lock_path).expect("write Serve.lock");
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
