//! Every way a request can fail, and the one mapping from failure to HTTP status
//! and OpenAI's error body `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::plan;

/// A request that cannot be served, with the reason the client is told.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the JSON this endpoint expects.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// A parameter has a value outside what it allows.
    #[error("invalid value for `{param}`: {message}")]
    InvalidParam {
        /// The offending parameter.
        param: &'static str,
        /// What is wrong and what would be valid.
        message: String,
    },
    /// A parameter asks for a feature this server does not have.
    #[error("`{param}` {message}")]
    Unsupported {
        /// The offending parameter.
        param: &'static str,
        /// What is not supported.
        message: String,
    },
    /// `model` names a model this server does not serve.
    #[error("the model `{requested}` does not exist; this server serves `{served}`")]
    UnknownModel {
        /// What the client asked for.
        requested: String,
        /// What this server serves.
        served: String,
    },
    /// The prompt plus the tokens to generate do not fit the context.
    #[error(
        "this model's maximum context length is {context} tokens, but the request needs \
         {prompt} prompt tokens plus {max_tokens} tokens to generate"
    )]
    ContextLength {
        /// Prompt tokens.
        prompt: usize,
        /// Tokens requested (`max_tokens`, at least 0).
        max_tokens: usize,
        /// The context length.
        context: usize,
    },
    /// The request body is larger than the server accepts.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The admission queue is full; the client should retry later.
    #[error("the server is busy: {queued} requests are already waiting; retry later")]
    QueueFull {
        /// Requests waiting.
        queued: usize,
    },
    /// The server is shutting down or its engine has stopped.
    #[error("the server is not accepting requests: {0}")]
    Unavailable(&'static str),
    /// No route matches the path.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Something failed inside the server while serving the request.
    #[error("internal error: {0}")]
    Internal(String),
}

/// OpenAI's error envelope.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// OpenAI's error object.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// Human-readable reason.
    pub message: String,
    /// Error class, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The parameter at fault, when one is.
    pub param: Option<&'static str>,
    /// Machine-readable code, when there is one.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// HTTP status, OpenAI error type, parameter at fault and error code: the one
    /// exhaustive mapping every failure goes through.
    pub fn classify(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    ) {
        const INVALID: &str = "invalid_request_error";
        match self {
            Self::InvalidBody(_) => (StatusCode::BAD_REQUEST, INVALID, None, None),
            Self::InvalidParam { param, .. } => {
                (StatusCode::BAD_REQUEST, INVALID, Some(param), None)
            }
            Self::Unsupported { param, .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                Some(param),
                Some("unsupported_parameter"),
            ),
            Self::UnknownModel { .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                Some("model"),
                Some("model_not_found"),
            ),
            Self::ContextLength { .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                None,
                Some("context_length_exceeded"),
            ),
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, INVALID, None, None),
            Self::QueueFull { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                None,
                Some("rate_limit_exceeded"),
            ),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None, None),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, INVALID, None, Some("not_found")),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, INVALID, None, None),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
            ),
        }
    }

    /// The JSON body OpenAI clients expect for this error.
    pub fn body(&self) -> ErrorBody {
        let (_, kind, param, code) = self.classify();
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, ..) = self.classify();
        let mut response = (status, Json(self.body())).into_response();
        if matches!(self, Self::QueueFull { .. } | Self::Unavailable(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(plan::RETRY_AFTER_SECS),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_full_is_429_with_retry_after() {
        let response = ApiError::QueueFull { queued: 3 }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .expect("Retry-After set");
        assert_eq!(retry, &HeaderValue::from(plan::RETRY_AFTER_SECS));
    }

    #[test]
    fn body_has_openai_shape() {
        let err = ApiError::InvalidParam {
            param: "temperature",
            message: "must be in [0, 2], got 3".into(),
        };
        let json = serde_json::to_value(err.body()).expect("serializes");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["param"], "temperature");
        assert!(json["error"]["code"].is_null());
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("got 3"))
        );
    }

    #[test]
    fn oversized_body_is_413_and_context_overflow_is_400() {
        let too_big = ApiError::BodyTooLarge { limit: 10 }.classify().0;
        assert_eq!(too_big, StatusCode::PAYLOAD_TOO_LARGE);
        let overflow = ApiError::ContextLength {
            prompt: 10,
            max_tokens: 10,
            context: 16,
        };
        assert_eq!(overflow.classify().0, StatusCode::BAD_REQUEST);
        assert_eq!(overflow.classify().3, Some("context_length_exceeded"));
    }
}
