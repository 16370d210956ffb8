//! The transport: streamed chat completions with tool calling through `async-openai`,
//! against any OpenAI-compatible base URL. Every request streams (`stream: true`, with
//! `stream_options.include_usage` so the last chunk carries the token counts); the
//! chunks are assembled by [`super::stream`]. async-openai's own layer retries 429 and
//! 5xx answers to the opening request (3 retries, exponential backoff, `Retry-After`
//! honoured); this loop adds a time limit per request and on the silence between
//! chunks, and retries, with exponential backoff, what that layer passes on: stalls,
//! connection errors, broken or unreadable streams and 429/5xx it gave up on —
//! [`MAX_ATTEMPTS`] in all, then an error. Nothing here ever prints the key.

use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::CreateChatCompletionRequest;
use futures_util::StreamExt as _;

use super::stream::{Assembler, Message};

/// Attempts per request: the first and up to this many minus one retries.
pub const MAX_ATTEMPTS: u32 = 5;
/// The wait before the first retry; it doubles each retry.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest one request may take (a hosted model answering a long turn).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest silence allowed before the stream opens and between its chunks (a
/// reasoning model may think a while before its first token).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// What stands in for the key wherever text might carry it.
pub const REDACTED: &str = "[REDACTED]";

/// Where and how to reach the model.
#[derive(Clone)]
pub struct Endpoint {
    /// The base URL, ending in `/v1` for most servers.
    pub base_url: String,
    /// The API key (may be empty for local servers). Never written anywhere.
    pub api_key: String,
    /// The model name sent with each request.
    pub model: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("api_key", &REDACTED)
            .field("model", &self.model)
            .finish()
    }
}

/// A chat client with retries.
pub struct ChatClient {
    client: Client<OpenAIConfig>,
    endpoint: Endpoint,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Longest silence of the stream.
    pub stall: Duration,
    /// The wait before the first retry.
    pub first_backoff: Duration,
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer, assembled from its chunks.
    pub message: Message,
    /// Retries it took.
    pub retries: u32,
    /// Wall time, retries included.
    pub elapsed: Duration,
}

impl ChatClient {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> ChatClient {
        let config = OpenAIConfig::new()
            .with_api_base(endpoint.base_url.trim_end_matches('/'))
            .with_api_key(endpoint.api_key.clone());
        ChatClient {
            client: Client::with_config(config),
            endpoint,
            timeout: REQUEST_TIMEOUT,
            stall: STALL_TIMEOUT,
            first_backoff: FIRST_BACKOFF,
        }
    }

    /// The model name.
    pub fn model(&self) -> &str {
        &self.endpoint.model
    }

    /// `text` with the key replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.endpoint.api_key)
    }

    /// Sends `request`, retrying transient failures, within `deadline` if given.
    pub async fn chat(
        &self,
        request: &CreateChatCompletionRequest,
        deadline: Option<Instant>,
    ) -> Result<Answer, ClientError> {
        let start = Instant::now();
        let mut backoff = self.first_backoff;
        let mut last = String::new();
        for attempt in 0..MAX_ATTEMPTS {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(ClientError::Deadline { last });
            }
            let limit = left.map_or(self.timeout, |l| l.min(self.timeout));
            let failure = match tokio::time::timeout(limit, self.stream_once(request)).await {
                Ok(Ok(message)) => {
                    return Ok(Answer {
                        message,
                        retries: attempt,
                        elapsed: start.elapsed(),
                    });
                }
                Ok(Err(Failure::Fatal(e))) => return Err(ClientError::Fatal(e)),
                Ok(Err(Failure::Transient(e))) => e,
                Err(_) => format!("no answer within {limit:?}"),
            };
            eprintln!(
                "  agent: request failed ({failure}); attempt {} of {MAX_ATTEMPTS}",
                attempt + 1
            );
            last = failure;
            if attempt + 1 < MAX_ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        Err(ClientError::GaveUp {
            attempts: MAX_ATTEMPTS,
            last,
        })
    }

    /// One streamed request: its chunks assembled, with at most `stall` of silence.
    async fn stream_once(&self, request: &CreateChatCompletionRequest) -> Result<Message, Failure> {
        let silent = || Failure::Transient(format!("the stream was silent for {:?}", self.stall));
        let chat = self.client.chat();
        let mut stream = tokio::time::timeout(self.stall, chat.create_stream(request.clone()))
            .await
            .map_err(|_| silent())?
            .map_err(|e| self.failure(&e))?;
        let mut assembler = Assembler::default();
        loop {
            match tokio::time::timeout(self.stall, stream.next()).await {
                Err(_) => return Err(silent()),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(self.failure(&e)),
                Ok(Some(Ok(chunk))) => assembler.push(chunk),
            }
        }
        let message = assembler.finish();
        if message.chunks == 0 {
            return Err(Failure::Transient("the stream ended with no chunks".into()));
        }
        Ok(message)
    }

    /// `e` classified, its text redacted.
    fn failure(&self, e: &OpenAIError) -> Failure {
        let text = self.redact(&e.to_string());
        match transient(e) {
            true => Failure::Transient(text),
            false => Failure::Fatal(text),
        }
    }
}

/// `text` with every occurrence of `key` replaced by [`REDACTED`] (nothing for an empty key).
pub fn redact(text: &str, key: &str) -> String {
    if key.is_empty() {
        text.to_string()
    } else {
        text.replace(key, REDACTED)
    }
}

/// A failed attempt, its text redacted.
enum Failure {
    Transient(String),
    Fatal(String),
}

/// 429, 5xx, transport errors, broken streams and unreadable chunks are worth a retry;
/// other API errors (400, 401, 404: a wrong model, key or URL) are not.
fn transient(e: &OpenAIError) -> bool {
    match e {
        OpenAIError::ApiError(api) => {
            let status = api.status_code;
            status.as_u16() == 429 || status.is_server_error()
        }
        OpenAIError::Reqwest(_)
        | OpenAIError::JSONDeserialize(..)
        | OpenAIError::StreamError(_) => true,
        _ => false,
    }
}

/// Why the model could not be reached. Messages never hold the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum ClientError {
    /// A failure a retry cannot fix.
    #[error("the endpoint refused the request: {0}")]
    #[diagnostic(help("check the [agent] model name, the base URL and the key"))]
    Fatal(String),
    /// Every attempt failed.
    #[error("the endpoint failed {attempts} times; last: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The round's time ran out.
    #[error("the round's time budget ran out waiting for the endpoint{}", if last.is_empty() { String::new() } else { format!(" (last: {last})") })]
    Deadline {
        /// The last failure, if any.
        last: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_redacted_and_an_empty_key_changes_nothing() {
        assert_eq!(
            redact("Bearer sk-123 failed", "sk-123"),
            "Bearer [REDACTED] failed"
        );
        assert_eq!(redact("text", ""), "text");
        let e = Endpoint {
            base_url: "http://x".into(),
            api_key: "sk-secret".into(),
            model: "m".into(),
        };
        assert!(!format!("{e:?}").contains("sk-secret"));
    }
}
