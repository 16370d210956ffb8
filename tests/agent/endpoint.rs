//! A scripted OpenAI-compatible endpoint for the agent tests: an axum server on a free
//! loopback port whose answers a closure picks from each request. It stands in for a
//! paid remote model, so the tests run offline and deterministically. A request with
//! `stream: true` gets its answer as server-sent events, as OpenAI sends them: a role
//! chunk, the content and each tool call's arguments in pieces, the finish reason, a
//! usage chunk when `stream_options.include_usage` asks, then `[DONE]`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What the endpoint answers to one request.
pub enum Reply {
    /// A status and a JSON body (a 200 completion is streamed when the request asks).
    Json(u16, Value),
    /// Say nothing for this long (a stalled server).
    #[allow(
        dead_code,
        reason = "each test binary that includes this file uses part of it"
    )]
    Stall(Duration),
    /// A 200 event stream sent as given (for broken and stalling streams).
    #[allow(
        dead_code,
        reason = "each test binary that includes this file uses part of it"
    )]
    Events(Vec<Event>),
}

/// One step of a scripted event stream.
#[allow(
    dead_code,
    reason = "each test binary that includes this file uses part of it"
)]
pub enum Event {
    /// A `data:` line with this text.
    Data(String),
    /// Silence for this long.
    Pause(Duration),
}

/// Picks the answer to a request body and its headers.
pub type Script = Arc<dyn Fn(&Value, &HeaderMap) -> Reply + Send + Sync>;

/// A running endpoint.
pub struct Endpoint {
    /// Its base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    /// Every request body received, in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// Every Authorization header received, in order.
    pub auth: Arc<Mutex<Vec<String>>>,
}

/// Starts an endpoint answering with `script` on a thread of its own.
pub fn start(script: Script) -> Endpoint {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let (reqs, auths) = (requests.clone(), auth.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let handler = move |headers: HeaderMap, Json(body): Json<Value>| {
                let (script, reqs, auths) = (script.clone(), reqs.clone(), auths.clone());
                async move {
                    reqs.lock().expect("lock").push(body.clone());
                    let header = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    auths.lock().expect("lock").push(header);
                    let streamed = body["stream"] == true;
                    match script(&body, &headers) {
                        Reply::Json(200, value) if streamed => {
                            let usage = body["stream_options"]["include_usage"] == true;
                            sse(sse_events(&value, usage))
                        }
                        Reply::Json(status, value) => {
                            let code = StatusCode::from_u16(status).expect("a status");
                            (code, Json(value)).into_response()
                        }
                        Reply::Stall(d) => {
                            tokio::time::sleep(d).await;
                            (StatusCode::OK, Json(json!({}))).into_response()
                        }
                        Reply::Events(events) => sse(events),
                    }
                }
            };
            let app = axum::Router::new().route("/v1/chat/completions", post(handler));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr").port())
                .expect("send the port");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let port = rx.recv().expect("the endpoint starts");
    Endpoint {
        url: format!("http://127.0.0.1:{port}/v1"),
        requests,
        auth,
    }
}

/// A chat completion answer: `content`, tool calls `(name, arguments text)`, and usage.
pub fn answer(
    content: Option<&str>,
    calls: &[(&str, String)],
    prompt: u32,
    completion: u32,
) -> Value {
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| {
            json!({"id": format!("call_{i}"), "type": "function",
                   "function": {"name": name, "arguments": args}})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": content});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": message,
                     "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" }}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}
    })
}

/// A 200 event-stream response that sends `events` in order, pausing where told.
fn sse(events: Vec<Event>) -> Response {
    let stream = futures_util::stream::unfold(events.into_iter(), |mut rest| async move {
        loop {
            match rest.next()? {
                Event::Pause(d) => tokio::time::sleep(d).await,
                Event::Data(text) => {
                    return Some((Ok::<_, Infallible>(format!("data: {text}\n\n")), rest));
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A chat completion as the chunks of its stream: the role, the content in two
/// pieces, each tool call's id and name with the first half of its arguments and then
/// the rest, the finish reason, the usage (when `usage`), and `[DONE]`.
pub fn sse_events(completion: &Value, usage: bool) -> Vec<Event> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
               "model": "scripted",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let halves = |text: &str| {
        let mut cut = text.len() / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        (text[..cut].to_string(), text[cut..].to_string())
    };
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut chunks = vec![chunk(json!({"role": "assistant"}), Value::Null)];
    if let Some(content) = message["content"].as_str() {
        let (a, b) = halves(content);
        chunks.push(chunk(json!({"content": a}), Value::Null));
        chunks.push(chunk(json!({"content": b}), Value::Null));
    }
    for (i, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let (a, b) = halves(call["function"]["arguments"].as_str().unwrap_or_default());
        chunks.push(chunk(
            json!({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                   "function": {"name": call["function"]["name"], "arguments": a}}]}),
            Value::Null,
        ));
        chunks.push(chunk(
            json!({"tool_calls": [{"index": i, "function": {"arguments": b}}]}),
            Value::Null,
        ));
    }
    chunks.push(chunk(json!({}), choice["finish_reason"].clone()));
    if usage {
        chunks.push(
            json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                           "created": 0, "model": "scripted", "choices": [],
                           "usage": completion["usage"]}),
        );
    }
    let mut events: Vec<Event> = chunks
        .into_iter()
        .map(|c| Event::Data(c.to_string()))
        .collect();
    events.push(Event::Data("[DONE]".into()));
    events
}

/// An OpenAI-style error body.
#[allow(
    dead_code,
    reason = "each test binary that includes this file uses part of it"
)]
pub fn error(message: &str) -> Value {
    json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
}

/// Which role a request is for, from its system prompt.
#[allow(
    dead_code,
    reason = "each test binary that includes this file uses part of it"
)]
pub fn role_of(body: &Value) -> &'static str {
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    for (marker, role) in [
        ("You are the Implementer", "implementer"),
        ("You are the Judge reviewer", "reviewer"),
        ("You are the Performance Evaluator", "evaluator"),
        ("You are the Orchestrator", "orchestrator"),
    ] {
        if system.starts_with(marker) {
            return role;
        }
    }
    "unknown"
}

/// The assistant turns already in a request: the step the script is at.
#[allow(
    dead_code,
    reason = "each test binary that includes this file uses part of it"
)]
pub fn step_of(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|x| x["role"] == "assistant").count())
}
