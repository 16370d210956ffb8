//! The OpenAI-compatible HTTP server: axum handlers in front of the engine thread.
//!
//! A request is parsed and validated (`validate`), its prompt tokenized here (so a
//! prompt longer than the context is a 400 before it queues), then submitted to the
//! engine, whose events become one JSON answer or an SSE stream (`stream`).

pub mod chat;
pub mod completions;
pub mod error;
pub mod launch;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod stream;
pub mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::chat_template::ChatTemplate;
use crate::engine::{EngineHandle, Event};
use crate::plan;
use crate::tokenizer::Tokenizer;
use error::ApiError;
use metrics::Metrics;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The id clients pass as `model`.
    pub model_id: String,
    /// Unix time the server started, in seconds.
    pub started: u64,
    /// The model's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The model's chat template.
    pub chat_template: ChatTemplate,
    /// The engine thread's request queue.
    pub engine: EngineHandle,
    /// Every exported metric.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Token ids of a prompt; special-token text (`<|im_start|>`) becomes its id, as
    /// llama-server does, so chat-formatted text prompts work.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        let started = std::time::Instant::now();
        let ids = self.tokenizer.encode(text, true);
        self.metrics
            .add_stage(metrics::ServingStage::Tokenize, started.elapsed());
        ids.map_err(|e| ApiError::InvalidParam {
            param: "prompt",
            message: format!("cannot be tokenized: {e}"),
        })
    }

    /// The text of token ids, special tokens written out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ApiError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| ApiError::Internal(format!("decoding the prompt: {e}")))
    }
}

/// Serves `app` on `listener` until SIGTERM or Ctrl-C. Then it stops accepting
/// connections, lets in-flight requests finish for `SHUTDOWN_GRACE_SECS`, and asks
/// the engine to end whatever still runs (those streams end with an error event and
/// `data: [DONE]`).
pub async fn serve(listener: TcpListener, app: Arc<AppState>) -> std::io::Result<()> {
    let engine = app.engine.clone();
    let router = routes::router(app);
    let shutdown = async move {
        shutdown_signal().await;
        engine.begin_shutdown();
        let grace = Duration::from_secs(plan::SHUTDOWN_GRACE_SECS);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            engine.abort_all();
        });
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM stops the server.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The body, or the reason it could not be read (413 when over the limit).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge {
            limit: plan::MAX_BODY_BYTES,
        },
        _ => ApiError::InvalidBody(rejection.body_text()),
    })
}

/// Every event of a request up to its end; an error if the engine failed it or
/// went away.
async fn collect_events(mut events: UnboundedReceiver<Event>) -> Result<Vec<Event>, ApiError> {
    let mut all = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Failed(message) => return Err(ApiError::Internal(message)),
            Event::Unavailable(why) => return Err(ApiError::Unavailable(why)),
            Event::Done { .. } => {
                all.push(event);
                return Ok(all);
            }
            other => all.push(other),
        }
    }
    Err(ApiError::Internal(
        "the engine stopped before finishing".into(),
    ))
}

/// A fresh request id: the prefix, the server's start time and a counter.
fn request_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:06x}", unix_now())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One token's text for logprobs (a token holding part of a character shows U+FFFD).
fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}
