//! `POST /v1/completions`: text in, text out, with OpenAI's legacy logprobs format
//! and `echo` (the prompt scored under teacher forcing, as accuracy checks use it).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::openai::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, TopLogprobMap,
    Usage,
};
use super::stream::{self, ChunkFormat};
use super::validate::{self, ValidPrompt};
use super::{AppState, body_bytes, collect_events, request_id, token_text, unix_now};
use crate::engine::{Event, GenerateRequest, TokenScore};
use crate::tokenizer::Tokenizer;

/// Answers one completions request, streamed or not.
pub async fn handle(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = validate::parse_body(&body_bytes(body)?)?;
    let valid = validate::completion(req, &app.model_id)?;
    let (prompt_ids, prompt_text) = match valid.prompt {
        ValidPrompt::Text(text) => (app.encode(&text)?, text),
        ValidPrompt::Tokens(ids) => {
            let text = app.decode(&ids)?;
            (ids, text)
        }
    };
    let max_new_tokens = validate::check_context(prompt_ids.len(), valid.params.max_tokens)?;
    let params = valid.params;
    let mut format = CompletionFormat {
        id: request_id("cmpl"),
        created: unix_now(),
        model: app.model_id.clone(),
        tokenizer: app.tokenizer.clone(),
        logprobs: params.logprobs,
        echo: params.echo.then_some(prompt_text.clone()),
        prompt: prompt_ids.clone(),
        offset: if params.echo {
            0
        } else {
            char_len(&prompt_text)
        },
        include_usage: params.include_usage,
    };
    let stream = params.stream;
    let events = app.engine.submit(GenerateRequest {
        prompt: prompt_ids,
        max_new_tokens,
        params,
    })?;
    if stream {
        return Ok(stream::sse_response(events, format, app.metrics.clone()));
    }
    let mut choice = format.empty_choice();
    let mut usage = None;
    for event in collect_events(events).await? {
        if let Event::Done {
            prompt_tokens,
            completion_tokens,
            ..
        } = &event
        {
            usage = Some(Usage::new(*prompt_tokens, *completion_tokens));
        }
        if let Some(delta) = format.delta(event)? {
            merge(&mut choice, delta);
        }
    }
    Ok(Json(format.response(vec![choice], usage)).into_response())
}

/// Builds completion choices (whole or as stream increments) from engine events.
struct CompletionFormat {
    id: String,
    created: u64,
    model: String,
    tokenizer: Arc<Tokenizer>,
    /// Alternatives per position, when logprobs were requested.
    logprobs: Option<usize>,
    /// The prompt text, when it is echoed.
    echo: Option<String>,
    prompt: Vec<u32>,
    /// Character offset of the next token in the returned text.
    offset: usize,
    include_usage: bool,
}

impl CompletionFormat {
    fn empty_choice(&self) -> CompletionChoice {
        CompletionChoice {
            text: String::new(),
            index: 0,
            logprobs: self.logprobs.map(|_| CompletionLogprobs::default()),
            finish_reason: None,
        }
    }

    fn response(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    /// The choice increment an event adds, if any; the first one starts with the
    /// echoed prompt.
    fn delta(&mut self, event: Event) -> Result<Option<CompletionChoice>, ApiError> {
        let mut choice = self.empty_choice();
        if let Some(echo) = self.echo.take() {
            choice.text = echo;
        }
        match event {
            Event::PromptScores(scores) => {
                let prompt = std::mem::take(&mut self.prompt);
                if let Some((&first, rest)) = prompt.split_first() {
                    self.push_logprob(&mut choice, first, None);
                    for (&id, score) in rest.iter().zip(scores) {
                        self.push_logprob(&mut choice, id, Some(score));
                    }
                }
            }
            Event::Token { id, text, score } => {
                choice.text.push_str(&text);
                if let Some(score) = score {
                    self.push_logprob(&mut choice, id, Some(score));
                }
            }
            Event::Done { finish, .. } => choice.finish_reason = Some(finish),
            Event::Failed(message) => return Err(ApiError::Internal(message)),
            Event::Unavailable(why) => return Err(ApiError::Unavailable(why)),
        }
        Ok(Some(choice))
    }

    /// Appends one token's entry to the choice's logprobs (a null score for the
    /// first prompt token, which nothing predicts).
    fn push_logprob(&mut self, choice: &mut CompletionChoice, id: u32, score: Option<TokenScore>) {
        let Some(lp) = choice.logprobs.as_mut() else {
            return;
        };
        let token = token_text(&self.tokenizer, id);
        lp.text_offset
            .push(u32::try_from(self.offset).unwrap_or(u32::MAX));
        self.offset += char_len(&token);
        lp.tokens.push(token);
        match score {
            Some(score) => {
                let top = score
                    .top
                    .iter()
                    .map(|&(id, logprob)| (token_text(&self.tokenizer, id), logprob))
                    .collect();
                lp.token_logprobs.push(Some(score.logprob));
                lp.top_logprobs.push(Some(TopLogprobMap(top)));
            }
            None => {
                lp.token_logprobs.push(None);
                lp.top_logprobs.push(None);
            }
        }
    }
}

impl ChunkFormat for CompletionFormat {
    fn chunks(&mut self, event: Event) -> Result<Vec<String>, ApiError> {
        let usage = match &event {
            Event::Done {
                prompt_tokens,
                completion_tokens,
                ..
            } if self.include_usage => Some(Usage::new(*prompt_tokens, *completion_tokens)),
            _ => None,
        };
        let mut chunks = Vec::new();
        if let Some(delta) = self.delta(event)? {
            let quiet = delta.text.is_empty()
                && delta.finish_reason.is_none()
                && delta.logprobs.as_ref().is_none_or(|l| l.tokens.is_empty());
            if !quiet {
                chunks.push(stream::json(&self.response(vec![delta], None))?);
            }
        }
        if let Some(usage) = usage {
            chunks.push(stream::json(&self.response(Vec::new(), Some(usage)))?);
        }
        Ok(chunks)
    }
}

/// Adds an increment to the whole choice.
fn merge(choice: &mut CompletionChoice, delta: CompletionChoice) {
    choice.text.push_str(&delta.text);
    if let (Some(all), Some(part)) = (choice.logprobs.as_mut(), delta.logprobs) {
        all.tokens.extend(part.tokens);
        all.token_logprobs.extend(part.token_logprobs);
        all.top_logprobs.extend(part.top_logprobs);
        all.text_offset.extend(part.text_offset);
    }
    if delta.finish_reason.is_some() {
        choice.finish_reason = delta.finish_reason;
    }
}

fn char_len(text: &str) -> usize {
    text.chars().count()
}
