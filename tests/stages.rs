//! The server's per-stage timings and its step watchdog, against the real template
//! server (round 0's code) with the real model over real HTTP.
//!
//! * The stage counters in `/metrics` exist, grow with a request, and sum to no more
//!   than the wall time between two scrapes; the Evaluator's drill-down reads them.
//! * A hung engine step (injected with `VIBESERVE_STEP_FAULT`) fails its requests with
//!   503s (a stream ends with an error event, then `[DONE]`), `/health` turns 503, new
//!   requests get 503 with `Retry-After`, and nothing hangs.
//!
//! Needs the real model: `VIBESERVE_TEST_MODEL=path/to/SmolLM2-135M-Instruct.Q4_1.gguf`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vibeserve::evaluate::stages::{self, ENGINE_BUSY};
use vibeserve::manifest::Device;

/// How long the server may take to load and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The step deadline of the watchdog test: far above a 135M model's step on 2 cores
/// (tens of milliseconds), short enough to keep the test quick.
const TEST_DEADLINE_MS: u64 = 1500;
/// The bound on the whole hung scenario: the deadline, the watchdog's tenth, slack.
const HUNG_ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// The template's server, built once in release and copied out so a concurrent
/// generated-crate build cannot replace it mid-test.
fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--offline", "-p", "vibeserve-server"])
            .args(["--bin", "server"])
            .current_dir(root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "the template server builds");
        let dir = tempfile::tempdir().expect("a temp dir").keep();
        let bin = dir.join("server");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root().join("target"), PathBuf::from);
        let built = target.join("release").join("server");
        std::fs::copy(built, &bin).expect("copy the server");
        bin
    })
}

/// A running server on a free port; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let model = std::env::var_os("VIBESERVE_TEST_MODEL")
            .expect("set VIBESERVE_TEST_MODEL to the SmolLM2-135M-Instruct Q4_1 GGUF");
        let mut cmd = Command::new(server_bin());
        cmd.args(["serve", "--port", "0", "--model"])
            .arg(model)
            .args(extra);
        cmd.envs(env.iter().copied()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("the server starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line).expect("stdout");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address")
            .to_string();
        let server = Server { child, url };
        let deadline = Instant::now() + START_TIMEOUT;
        while block(get(&server.url, "/health")).0 != 200 {
            assert!(Instant::now() < deadline, "/health never answered 200");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// Status, `Retry-After` and body of a GET.
async fn get(url: &str, path: &str) -> (u16, Option<String>, String) {
    answer(
        reqwest::Client::new()
            .get(format!("{url}{path}"))
            .send()
            .await,
    )
    .await
}

/// Status, `Retry-After` and body of a completion request.
async fn complete(url: &str, body: serde_json::Value) -> (u16, Option<String>, String) {
    let request = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    answer(request.send().await).await
}

async fn answer(r: reqwest::Result<reqwest::Response>) -> (u16, Option<String>, String) {
    let r = r.expect("the server answers");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, retry, r.text().await.expect("a body"))
}

#[test]
fn stage_metrics_grow_with_a_request_and_fit_in_its_wall_time() {
    let server = Server::start(&[], &[]);
    let client = reqwest::Client::new();
    let (before, answer, after) = block(async {
        let before = stages::scrape(&client, &server.url)
            .await
            .expect("stage metrics");
        let body = serde_json::json!({"prompt": "The capital of France is", "max_tokens": 24,
            "temperature": 0, "ignore_eos": true, "stream": true});
        let answer = complete(&server.url, body).await;
        let after = stages::scrape(&client, &server.url)
            .await
            .expect("stage metrics");
        (before, answer, after)
    });
    assert_eq!(answer.0, 200, "{}", answer.2);
    assert!(answer.2.trim_end().ends_with("data: [DONE]"));
    let wall = after.at.duration_since(before.at).as_secs_f64();
    let grew =
        |stage: &str| after.seconds[stage] - before.seconds.get(stage).copied().unwrap_or(0.0);
    for stage in stages::PREFILL_STAGES
        .iter()
        .chain(&stages::DECODE_STAGES)
        .chain(&stages::OTHER_ENGINE_STAGES)
    {
        assert!(grew(stage) > 0.0, "{stage} did not grow: {after:?}");
    }
    for stage in ["queue_wait", "tokenize", "respond"] {
        assert!(grew(stage) > 0.0, "{stage} did not grow: {after:?}");
    }
    let total: f64 = after.seconds.keys().map(|s| grew(s)).sum();
    assert!(
        total <= wall,
        "stages sum to {total} s in {wall} s of wall time"
    );
    assert_eq!(after.finished - before.finished, 1.0);
    let shares = stages::shares(&before, &after);
    assert!(shares[ENGINE_BUSY] > 0.0 && shares[ENGINE_BUSY] <= 1.0);
    let drill = stages::drill_down(&shares, Device::Cpu, 1).expect("the drill-down reads them");
    assert!(!drill.notes.is_empty());
}

#[test]
fn a_hung_step_fails_its_requests_with_503_and_nothing_hangs() {
    let deadline = TEST_DEADLINE_MS.to_string();
    // Forward 1 prefills the streamed request, 2 decodes, 3 hangs.
    let fault = [("VIBESERVE_STEP_FAULT", "hang:3")];
    let server = Server::start(&["--step-deadline-ms", &deadline], &fault);
    let started = Instant::now();
    let (streamed, waiting, health, later) = block(async {
        let stream = serde_json::json!({"prompt": "Once upon a time", "max_tokens": 32,
            "temperature": 0, "ignore_eos": true, "stream": true});
        let plain = serde_json::json!({"prompt": "Hello", "max_tokens": 8});
        let (streamed, waiting) = tokio::join!(complete(&server.url, stream), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            complete(&server.url, plain.clone()).await
        });
        let health = get(&server.url, "/health").await;
        let later = complete(&server.url, plain).await;
        (streamed, waiting, health, later)
    });
    assert!(
        started.elapsed() < HUNG_ANSWER_WITHIN,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(streamed.0, 200);
    let events: Vec<&str> = streamed
        .2
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let [.., error, done] = events.as_slice() else {
        panic!("too few events: {}", streamed.2)
    };
    assert_eq!(*done, "[DONE]");
    let error: serde_json::Value = serde_json::from_str(error).expect("a JSON error event");
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("deadline"))
    );
    for (what, (status, retry, body)) in
        [("queued", waiting), ("/health", health), ("later", later)]
    {
        assert_eq!(status, 503, "{what}: {body}");
        assert!(retry.is_some(), "{what} has no Retry-After");
        assert!(body.contains("deadline"), "{what}: {body}");
    }
}
