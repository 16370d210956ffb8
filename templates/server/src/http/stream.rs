//! Server-sent events in OpenAI's framing: one `data: {json}` event per chunk, a
//! `data: [DONE]` event at the end, and comment keep-alives while the request waits
//! (they also reveal a vanished client, whose sequence the engine then frees).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::metrics::{Metrics, ServingStage};
use crate::engine::Event;
use crate::plan;

/// The data of the event that ends every OpenAI stream.
pub const DONE: &str = "[DONE]";

/// Turns engine events into the JSON chunks of one endpoint's stream format.
pub trait ChunkFormat: Send + 'static {
    /// The chunks (JSON text) to send for `event`; a `Done` event gives the last ones.
    fn chunks(&mut self, event: Event) -> Result<Vec<String>, ApiError>;
}

/// Serializes one chunk; our chunk types always serialize.
pub fn json<T: Serialize>(chunk: &T) -> Result<String, ApiError> {
    serde_json::to_string(chunk).map_err(|e| ApiError::Internal(format!("serializing: {e}")))
}

/// Where a stream is: sending chunks, or finished.
struct StreamState<F> {
    events: UnboundedReceiver<Event>,
    format: F,
    pending: VecDeque<String>,
    finished: bool,
    metrics: Arc<Metrics>,
}

/// The SSE response for a request whose engine events arrive on `events`.
///
/// Ends with `data: [DONE]` after the engine's `Done`; if the engine fails or goes
/// away first, an OpenAI error object is sent as a last data event before `[DONE]`,
/// so the client is never left hanging. The time spent formatting chunks goes to the
/// `respond` stage of `metrics`.
pub fn sse_response<F: ChunkFormat>(
    events: UnboundedReceiver<Event>,
    format: F,
    metrics: Arc<Metrics>,
) -> Response {
    let state = StreamState {
        events,
        format,
        pending: VecDeque::new(),
        finished: false,
        metrics,
    };
    let body = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(data) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.finished {
                return None;
            }
            match s.events.recv().await {
                Some(event) => {
                    let done = matches!(event, Event::Done { .. });
                    let started = Instant::now();
                    let chunks = s.format.chunks(event);
                    s.metrics
                        .add_stage(ServingStage::Respond, started.elapsed());
                    match chunks {
                        Ok(chunks) => s.pending.extend(chunks),
                        Err(e) => {
                            s.pending.push_back(error_data(&e));
                            s.finished = true;
                        }
                    }
                    s.finished |= done;
                }
                None => {
                    let e = ApiError::Internal("the engine stopped before finishing".into());
                    s.pending.push_back(error_data(&e));
                    s.finished = true;
                }
            }
            if s.finished {
                s.pending.push_back(DONE.to_string());
            }
        }
    });
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(plan::SSE_KEEP_ALIVE_SECS));
    Sse::new(body).keep_alive(keep_alive).into_response()
}

/// An error as the data of a stream event.
fn error_data(e: &ApiError) -> String {
    serde_json::to_string(&e.body()).unwrap_or_else(|_| r#"{"error":{}}"#.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Event, FinishReason};

    /// Echoes each token's text as a chunk.
    struct Echo;

    impl ChunkFormat for Echo {
        fn chunks(&mut self, event: Event) -> Result<Vec<String>, ApiError> {
            Ok(match event {
                Event::Token { text, .. } => vec![json(&text)?],
                Event::Done { .. } => vec![json(&"end")?],
                Event::PromptScores(_) => vec![],
                Event::Failed(msg) => return Err(ApiError::Internal(msg)),
                Event::Unavailable(why) => return Err(ApiError::Unavailable(why)),
            })
        }
    }

    async fn body_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn frames_chunks_and_ends_with_done() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for text in ["a", "b"] {
            let token = Event::Token {
                id: 1,
                text: text.into(),
                score: None,
            };
            tx.send(token).expect("open");
        }
        let done = Event::Done {
            finish: FinishReason::Length,
            prompt_tokens: 1,
            completion_tokens: 2,
        };
        tx.send(done).expect("open");
        let response = sse_response(rx, Echo, Arc::new(Metrics::new()));
        let content_type = response.headers()["content-type"].to_str().expect("ascii");
        assert_eq!(content_type, "text/event-stream");
        let body = body_of(response).await;
        assert_eq!(
            body,
            "data: \"a\"\n\ndata: \"b\"\n\ndata: \"end\"\n\ndata: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn a_vanished_engine_ends_the_stream_with_an_error() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let token = Event::Token {
            id: 1,
            text: "a".into(),
            score: None,
        };
        tx.send(token).expect("open");
        drop(tx);
        let body = body_of(sse_response(rx, Echo, Arc::new(Metrics::new()))).await;
        let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{body}");
        assert!(events[1].starts_with("data: {\"error\":"), "{body}");
        assert_eq!(events[2], "data: [DONE]");
    }
}
