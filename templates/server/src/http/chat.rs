//! `POST /v1/chat/completions`: messages rendered by the model's chat template,
//! answered whole or as `chat.completion.chunk` events.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobs, ChatTokenLogprob, ChatTopLogprob,
    FinishReason, Usage,
};
use super::stream::{self, ChunkFormat};
use super::validate;
use super::{AppState, body_bytes, collect_events, request_id, token_text, unix_now};
use crate::chat_template::ChatMessage;
use crate::engine::{Event, GenerateRequest, TokenScore};
use crate::tokenizer::Tokenizer;

/// The role of every answer.
const ASSISTANT: &str = "assistant";

/// Answers one chat request, streamed or not.
pub async fn handle(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = validate::parse_body(&body_bytes(body)?)?;
    let valid = validate::chat(req, &app.model_id)?;
    let messages: Vec<ChatMessage> = valid
        .messages
        .into_iter()
        .map(|m| ChatMessage::new(m.role, m.content))
        .collect();
    let prompt_text =
        app.chat_template
            .render(&messages, true)
            .map_err(|e| ApiError::InvalidParam {
                param: "messages",
                message: e.to_string(),
            })?;
    let prompt = app.encode(&prompt_text)?;
    let max_new_tokens = validate::check_context(prompt.len(), valid.params.max_tokens)?;
    let params = valid.params;
    let format = ChatFormat {
        id: request_id("chatcmpl"),
        created: unix_now(),
        model: app.model_id.clone(),
        tokenizer: app.tokenizer.clone(),
        logprobs: params.logprobs,
        include_usage: params.include_usage,
        sent_role: false,
    };
    let stream = params.stream;
    let events = app.engine.submit(GenerateRequest {
        prompt,
        max_new_tokens,
        params,
    })?;
    if stream {
        return Ok(stream::sse_response(events, format, app.metrics.clone()));
    }
    let mut content = String::new();
    let mut logprobs = format.logprobs.map(|_| ChatLogprobs::default());
    let (mut finish, mut usage) = (FinishReason::Length, Usage::new(0, 0));
    for event in collect_events(events).await? {
        match event {
            Event::Token { id, text, score } => {
                content.push_str(&text);
                if let (Some(all), Some(score)) = (logprobs.as_mut(), score) {
                    all.content.push(format.token_logprob(id, score));
                }
            }
            Event::Done {
                finish: f,
                prompt_tokens,
                completion_tokens,
            } => {
                finish = f;
                usage = Usage::new(prompt_tokens, completion_tokens);
            }
            Event::Failed(message) => return Err(ApiError::Internal(message)),
            Event::Unavailable(why) => return Err(ApiError::Unavailable(why)),
            Event::PromptScores(_) => {}
        }
    }
    Ok(Json(ChatCompletionResponse {
        id: format.id,
        object: "chat.completion",
        created: format.created,
        model: format.model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: ASSISTANT,
                content,
            },
            logprobs,
            finish_reason: finish,
        }],
        usage,
    })
    .into_response())
}

/// Builds chat answers and stream chunks from engine events.
struct ChatFormat {
    id: String,
    created: u64,
    model: String,
    tokenizer: Arc<Tokenizer>,
    /// Alternatives per position, when logprobs were requested.
    logprobs: Option<usize>,
    include_usage: bool,
    /// Whether the first chunk, which carries the role, went out.
    sent_role: bool,
}

impl ChatFormat {
    /// One generated token's chat-format log probability.
    fn token_logprob(&self, id: u32, score: TokenScore) -> ChatTokenLogprob {
        let token = token_text(&self.tokenizer, id);
        ChatTokenLogprob {
            bytes: self.tokenizer.token_bytes(id).to_vec(),
            token,
            logprob: score.logprob,
            top_logprobs: score
                .top
                .into_iter()
                .map(|(id, logprob)| {
                    let token = token_text(&self.tokenizer, id);
                    ChatTopLogprob {
                        bytes: self.tokenizer.token_bytes(id).to_vec(),
                        token,
                        logprob,
                    }
                })
                .collect(),
        }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn choice(delta: ChatDelta, logprobs: Option<ChatLogprobs>) -> ChatChunkChoice {
        ChatChunkChoice {
            index: 0,
            delta,
            logprobs,
            finish_reason: None,
        }
    }
}

impl ChunkFormat for ChatFormat {
    fn chunks(&mut self, event: Event) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        if !self.sent_role {
            self.sent_role = true;
            let delta = ChatDelta {
                role: Some(ASSISTANT),
                content: Some(String::new()),
            };
            out.push(stream::json(
                &self.chunk(vec![Self::choice(delta, None)], None),
            )?);
        }
        match event {
            Event::Token { id, text, score } => {
                let logprobs = match (self.logprobs, score) {
                    (Some(_), Some(score)) => Some(ChatLogprobs {
                        content: vec![self.token_logprob(id, score)],
                    }),
                    _ => None,
                };
                if !text.is_empty() || logprobs.is_some() {
                    let delta = ChatDelta {
                        role: None,
                        content: Some(text),
                    };
                    let choice = Self::choice(delta, logprobs);
                    out.push(stream::json(&self.chunk(vec![choice], None))?);
                }
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let mut last = Self::choice(ChatDelta::default(), None);
                last.finish_reason = Some(finish);
                out.push(stream::json(&self.chunk(vec![last], None))?);
                if self.include_usage {
                    let usage = Usage::new(prompt_tokens, completion_tokens);
                    out.push(stream::json(&self.chunk(Vec::new(), Some(usage)))?);
                }
            }
            Event::Failed(message) => return Err(ApiError::Internal(message)),
            Event::Unavailable(why) => return Err(ApiError::Unavailable(why)),
            Event::PromptScores(_) => {}
        }
        Ok(out)
    }
}
