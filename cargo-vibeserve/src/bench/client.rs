//! The streaming client: sends one request, reads its SSE stream, and records when each
//! piece of output arrived, how many tokens it held, or what went wrong.
//!
//! A request never outlives its timeout, and a stream that goes quiet for longer than the
//! stall timeout is abandoned, so a misbehaving server cannot hang the harness.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::sse::SseDecoder;
use super::workload::Request;

/// How many bytes of an error response body are kept in the error message.
const ERROR_BODY_CHARS: usize = 200;

/// What kind of failure a request ended in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The connection could not be made (nothing listening, connection refused).
    Refused,
    /// The server answered with a non-2xx HTTP status.
    HttpStatus,
    /// The whole request took longer than the request timeout.
    Timeout,
    /// The stream went quiet for longer than the stall timeout.
    Stalled,
    /// The response was not a well-formed SSE stream of OpenAI JSON chunks.
    MalformedSse,
    /// The stream ended (or the connection dropped) before `data: [DONE]`.
    Truncated,
    /// The server sent an `error` object inside the stream.
    StreamError,
    /// Any other transport failure.
    Transport,
}

impl ErrorKind {
    /// The snake_case name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Stalled => "stalled",
            ErrorKind::MalformedSse => "malformed_sse",
            ErrorKind::Truncated => "truncated",
            ErrorKind::StreamError => "stream_error",
            ErrorKind::Transport => "transport",
        }
    }
}

/// A failed request: the kind, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestError {
    /// The kind of failure, counted in the report.
    pub kind: ErrorKind,
    /// What happened, e.g. `HTTP 500: {"error": …}`.
    pub message: String,
}

/// Everything measured about one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRecord {
    /// Time to the first chunk that carried output text; `None` if none did.
    pub ttft: Option<Duration>,
    /// Gaps between consecutive output chunks (vLLM's ITL: one per chunk after the first).
    pub itl: Vec<Duration>,
    /// Time from sending the request to the end of its stream (`[DONE]`).
    pub latency: Duration,
    /// Output tokens: the server's `usage.completion_tokens`, else the output chunks.
    pub output_tokens: u64,
    /// Prompt tokens from the server's `usage`, when it sent one.
    pub prompt_tokens: Option<u64>,
    /// Whether the token counts came from the server's `usage` object.
    pub usage_reported: bool,
    /// The failure, if the request failed.
    pub error: Option<RequestError>,
}

/// An HTTP client bound to one server, with the harness's timeouts.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    request_timeout: Duration,
    stall_timeout: Duration,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str, request_timeout: Duration, stall_timeout: Duration) -> Self {
        Client {
            // Idle connections are reused across requests, as a real client would.
            http: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            request_timeout,
            stall_timeout,
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The first model id from `GET /v1/models`, if the server answers in time.
    pub async fn first_model_id(&self, wait: Duration) -> Option<String> {
        let url = format!("{}/v1/models", self.base_url);
        let response = self.http.get(url).timeout(wait).send().await.ok()?;
        let body: Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        body["data"][0]["id"].as_str().map(str::to_owned)
    }

    /// Send `request` streamed (asking for usage in the stream) and measure it.
    pub async fn send(&self, request: &Request, model: Option<&str>) -> RequestRecord {
        let mut body = request.body.clone();
        body.insert("stream".into(), Value::Bool(true));
        body.insert(
            "stream_options".into(),
            serde_json::json!({ "include_usage": true }),
        );
        if let Some(model) = model {
            body.entry("model").or_insert_with(|| model.into());
        }
        let body = Value::Object(body).to_string();
        let url = format!("{}{}", self.base_url, request.endpoint.path());
        let start = Instant::now();
        let mut stream = Stream::new(start, start + self.request_timeout);
        if let Err(error) = self.exchange(&url, body, &mut stream).await {
            stream.record.error = Some(error);
        }
        stream.record.latency = start.elapsed();
        stream.finish()
    }

    async fn exchange(
        &self,
        url: &str,
        body: String,
        stream: &mut Stream,
    ) -> Result<(), RequestError> {
        let post = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        let mut response = match timeout_at(stream.deadline, post).await {
            Err(_) => return Err(stream.timeout()),
            Ok(Err(e)) => return Err(transport_error(&e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let text = timeout_at(stream.deadline, response.text()).await;
            let text = text.ok().and_then(Result::ok).unwrap_or_default();
            let text: String = text.chars().take(ERROR_BODY_CHARS).collect();
            return Err(error(
                ErrorKind::HttpStatus,
                format!("HTTP {status}: {text}"),
            ));
        }
        let content_type = response.headers().get(CONTENT_TYPE);
        let content_type = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err(error(
                ErrorKind::MalformedSse,
                format!("content-type is {content_type:?}, not text/event-stream"),
            ));
        }
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        let mut last_bytes = Instant::now();
        while !stream.done {
            let wait_until = stream.deadline.min(last_bytes + self.stall_timeout);
            let chunk = match timeout_at(wait_until, response.chunk()).await {
                Err(_) if wait_until >= stream.deadline => return Err(stream.timeout()),
                Err(_) => return Err(stream.stalled(self.stall_timeout)),
                Ok(Err(e)) => return Err(error(ErrorKind::Truncated, e.to_string())),
                Ok(Ok(None)) => return Err(stream.ended()),
                Ok(Ok(Some(chunk))) => chunk,
            };
            last_bytes = Instant::now();
            decoder
                .push(&chunk, &mut events)
                .map_err(|e| error(ErrorKind::MalformedSse, e.to_string()))?;
            for data in events.drain(..) {
                stream.event(&data, last_bytes)?;
            }
        }
        Ok(())
    }
}

/// The state of one response stream as it is read.
struct Stream {
    start: Instant,
    deadline: Instant,
    last_output: Option<Instant>,
    output_chunks: u64,
    usage_completion_tokens: Option<u64>,
    done: bool,
    record: RequestRecord,
}

impl Stream {
    fn new(start: Instant, deadline: Instant) -> Self {
        Stream {
            start,
            deadline,
            last_output: None,
            output_chunks: 0,
            usage_completion_tokens: None,
            done: false,
            record: RequestRecord::default(),
        }
    }

    /// Handle one event's data, received at `at`.
    fn event(&mut self, data: &str, at: Instant) -> Result<(), RequestError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            let head: String = data.chars().take(80).collect();
            error(ErrorKind::MalformedSse, format!("not JSON ({e}): {head:?}"))
        })?;
        if let Some(err) = chunk.get("error") {
            return Err(error(ErrorKind::StreamError, err.to_string()));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage_completion_tokens = usage["completion_tokens"].as_u64();
            self.record.prompt_tokens = usage["prompt_tokens"].as_u64();
        }
        if chunk_has_output(&chunk) {
            match self.last_output {
                None => self.record.ttft = Some(at - self.start),
                Some(previous) => self.record.itl.push(at - previous),
            }
            self.last_output = Some(at);
            self.output_chunks += 1;
        }
        Ok(())
    }

    fn timeout(&self) -> RequestError {
        let after = self.deadline - self.start;
        error(
            ErrorKind::Timeout,
            format!("no complete response after {after:?}"),
        )
    }

    fn stalled(&self, stall: Duration) -> RequestError {
        let got = self.output_chunks;
        error(
            ErrorKind::Stalled,
            format!("no bytes for {stall:?} after {got} output chunks"),
        )
    }

    fn ended(&self) -> RequestError {
        let got = self.output_chunks;
        error(
            ErrorKind::Truncated,
            format!("stream ended before [DONE], after {got} output chunks"),
        )
    }

    fn finish(mut self) -> RequestRecord {
        match self.usage_completion_tokens {
            Some(tokens) => {
                self.record.output_tokens = tokens;
                self.record.usage_reported = true;
            }
            None => self.record.output_tokens = self.output_chunks,
        }
        self.record
    }
}

/// Whether a stream chunk carries generated text (completions `text`, chat `content`, or
/// a reasoning model's `reasoning_content`). Role-only and finish-only chunks do not.
fn chunk_has_output(chunk: &Value) -> bool {
    let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
        return false;
    };
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let delta = choice.get("delta");
    non_empty(choice.get("text"))
        || non_empty(delta.and_then(|d| d.get("content")))
        || non_empty(delta.and_then(|d| d.get("reasoning_content")))
}

fn error(kind: ErrorKind, message: String) -> RequestError {
    RequestError { kind, message }
}

fn transport_error(e: &reqwest::Error) -> RequestError {
    let kind = if e.is_connect() {
        ErrorKind::Refused
    } else {
        ErrorKind::Transport
    };
    // reqwest's top-level message is generic; the cause says what happened.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    error(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_chunks_are_those_with_text() {
        assert!(chunk_has_output(&json!({"choices": [{"text": "a"}]})));
        assert!(chunk_has_output(
            &json!({"choices": [{"delta": {"content": "a"}}]})
        ));
        assert!(!chunk_has_output(
            &json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
        ));
        assert!(!chunk_has_output(
            &json!({"choices": [{"delta": {}, "finish_reason": "stop"}]})
        ));
        assert!(!chunk_has_output(&json!({"choices": [], "usage": {}})));
    }

    #[test]
    fn usage_overrides_chunk_counting() {
        let t0 = Instant::now();
        let mut stream = Stream::new(t0, t0 + Duration::from_secs(9));
        let ms = |n| t0 + Duration::from_millis(n);
        stream
            .event(r#"{"choices":[{"text":"a"}]}"#, ms(10))
            .unwrap();
        stream
            .event(r#"{"choices":[{"text":"bc"}]}"#, ms(25))
            .unwrap();
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        stream.event(usage, ms(26)).unwrap();
        stream.event("[DONE]", ms(27)).unwrap();
        assert!(stream.done);
        let record = stream.finish();
        assert_eq!(record.ttft, Some(Duration::from_millis(10)));
        assert_eq!(record.itl, vec![Duration::from_millis(15)]);
        assert_eq!((record.output_tokens, record.prompt_tokens), (3, Some(7)));
        assert!(record.usage_reported);
    }
}
