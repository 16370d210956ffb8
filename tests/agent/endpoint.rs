//! A scripted OpenAI-compatible endpoint for the agent tests: an axum server on a free
//! loopback port whose answers a closure picks from each request. It stands in for a
//! paid remote model, so the tests run offline and deterministically.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

/// What the endpoint answers to one request.
pub enum Reply {
    /// A status and a JSON body.
    Json(u16, Value),
    /// Say nothing for this long (a stalled server).
    #[allow(
        dead_code,
        reason = "each test binary that includes this file uses part of it"
    )]
    Stall(Duration),
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
                    match script(&body, &headers) {
                        Reply::Json(status, value) => {
                            let code = StatusCode::from_u16(status).expect("a status");
                            (code, Json(value))
                        }
                        Reply::Stall(d) => {
                            tokio::time::sleep(d).await;
                            (StatusCode::OK, Json(json!({})))
                        }
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
