//! Every path the server answers, and the router that maps them to handlers.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

use super::error::ApiError;
use super::openai::{ModelCard, ModelList};
use super::{AppState, chat, completions};
use crate::plan;

/// OpenAI text completions.
pub const COMPLETIONS: &str = "/v1/completions";
/// OpenAI chat completions.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// The served model.
pub const MODELS: &str = "/v1/models";
/// Liveness: 200 while the engine runs and the server accepts requests.
pub const HEALTH: &str = "/health";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";

/// The server's router: every route, the body limit, request counting by status,
/// and a panic guard that answers 500 instead of dropping the connection.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(COMPLETIONS, post(completions::handle))
        .route(CHAT_COMPLETIONS, post(chat::handle))
        .route(MODELS, get(models))
        .route(HEALTH, get(health))
        .route(METRICS, get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(plan::MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn models(State(app): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: app.model_id.clone(),
            object: "model",
            created: app.started,
            owned_by: "vibeserve",
            max_model_len: u32::try_from(plan::CONTEXT_LENGTH).unwrap_or(u32::MAX),
        }],
    })
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
    match app.engine.unavailable() {
        None => (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response(),
        Some(reason) => ApiError::Unavailable(reason).into_response(),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], app.metrics.render()).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Counts every answered request by route and status.
async fn count_requests(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let response = next.run(req).await;
    app.metrics
        .record_request(&endpoint, response.status().as_u16());
    response
}

/// The answer when a handler panics: an OpenAI 500, never a dropped connection.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    ApiError::Internal(format!("handler panicked: {what}")).into_response()
}
