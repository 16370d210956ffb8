//! Requests are checked here and turned into `Valid*` values; nothing unchecked
//! reaches the queue. Checks that need the prompt's token count (context length)
//! run in [`check_context`] once the prompt is tokenized.

use super::error::ApiError;
use super::openai::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, ContentPart, GenerationOptions,
    MessageContent, Prompt, Stop,
};
use crate::plan;
use crate::sampler::{MAX_TOP_LOGPROBS, SamplingError, SamplingParams, ValidSamplingParams};

/// OpenAI's default `max_tokens` for `/v1/completions`.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;
/// Most stop sequences per request (OpenAI allows 4).
const MAX_STOP_SEQUENCES: usize = 4;

/// Everything but the prompt, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidParams {
    /// Most tokens to generate; `None` means up to the context length.
    pub max_tokens: Option<usize>,
    /// How to pick each token and when to stop (stop strings, `ignore_eos`,
    /// logprobs), as the sampler takes them.
    pub sampling: ValidSamplingParams,
    /// Return log probabilities with this many alternatives per position.
    pub logprobs: Option<usize>,
    /// Completions only: return the prompt (scored, with `logprobs`) before the text.
    pub echo: bool,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Stream a final chunk with the usage.
    pub include_usage: bool,
}

/// A completions prompt, checked but not yet tokenized.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidPrompt {
    /// Text to tokenize.
    Text(String),
    /// Token ids, each below the vocabulary size.
    Tokens(Vec<u32>),
}

/// A checked `/v1/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCompletion {
    /// The prompt.
    pub prompt: ValidPrompt,
    /// Its parameters.
    pub params: ValidParams,
}

/// One chat message with its text joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidMessage {
    /// `system`, `user`, `assistant`, `tool` (`developer` is passed on as `system`).
    pub role: String,
    /// The text.
    pub content: String,
}

/// A checked `/v1/chat/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidChat {
    /// The conversation, non-empty.
    pub messages: Vec<ValidMessage>,
    /// Its parameters.
    pub params: ValidParams,
}

/// Parses a request body into `T`, naming the path of a field of the wrong type.
///
/// `#[serde(flatten)]` hides a field's name from the error path, so the options both
/// requests flatten in are read on their own first: a wrong type there is named too.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    from_value::<GenerationOptions>(&value)?;
    from_value(&value)
}

fn from_value<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::InvalidBody(inner.to_string())
        } else {
            ApiError::InvalidBody(format!("at `{path}`: {inner}"))
        }
    })
}

/// Checks a `/v1/completions` request.
pub fn completion(req: CompletionRequest, served: &str) -> Result<ValidCompletion, ApiError> {
    check_model(req.model.as_deref(), served)?;
    check_n(req.best_of, "best_of")?;
    if req.suffix.is_some() {
        return Err(unsupported("suffix", "is not supported"));
    }
    let prompt = completion_prompt(req.prompt)?;
    let logprobs = match req.logprobs {
        Some(k) => Some(top_count(k, "logprobs")?),
        None => None,
    };
    let max_tokens = req
        .max_tokens
        .map_or(COMPLETIONS_DEFAULT_MAX_TOKENS, |m| m as usize);
    let echo = req.echo.unwrap_or(false);
    let params = ValidParams::new(Some(max_tokens), logprobs, echo, req.options)?;
    Ok(ValidCompletion { prompt, params })
}

/// Checks a `/v1/chat/completions` request.
pub fn chat(req: ChatCompletionRequest, served: &str) -> Result<ValidChat, ApiError> {
    check_model(req.model.as_deref(), served)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(unsupported("tools", "(tool calling) is not supported yet"));
    }
    if let Some(format) = &req.response_format
        && format.kind != "text"
    {
        return Err(unsupported(
            "response_format",
            &format!(
                "of type `{}` is not supported yet; only `text` is",
                format.kind
            ),
        ));
    }
    let messages = messages(req.messages)?;
    let top = req
        .top_logprobs
        .map(|k| top_count(k, "top_logprobs"))
        .transpose()?;
    let logprobs = match (req.logprobs.unwrap_or(false), top) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, Some(_)) => {
            return Err(invalid("top_logprobs", "requires `logprobs: true`".into()));
        }
        (false, None) => None,
    };
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    let params = ValidParams::new(max_tokens.map(|m| m as usize), logprobs, false, req.options)?;
    Ok(ValidChat { messages, params })
}

/// Checks that the prompt and the tokens to generate fit the context and the KV
/// pool, and returns how many tokens may be generated.
pub fn check_context(prompt_len: usize, max_tokens: Option<usize>) -> Result<usize, ApiError> {
    if prompt_len == 0 {
        return Err(invalid("prompt", "must not be empty".into()));
    }
    let context = plan::CONTEXT_LENGTH.min(plan::KV_BLOCKS * plan::KV_BLOCK_SIZE);
    let max_tokens = max_tokens.unwrap_or_else(|| context.saturating_sub(prompt_len));
    if prompt_len + max_tokens > context {
        return Err(ApiError::ContextLength {
            prompt: prompt_len,
            max_tokens,
            context,
        });
    }
    Ok(max_tokens)
}

impl ValidParams {
    /// Checks the options both endpoints share, given the endpoint's own `max_tokens`,
    /// `logprobs` and `echo`.
    fn new(
        max_tokens: Option<usize>,
        logprobs: Option<usize>,
        echo: bool,
        options: GenerationOptions,
    ) -> Result<Self, ApiError> {
        check_n(options.n, "n")?;
        check_no_logit_bias(options.logit_bias.as_ref())?;
        Ok(Self {
            max_tokens,
            logprobs,
            echo,
            stream: options.stream.unwrap_or(false),
            include_usage: options
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            sampling: sampling(options, logprobs)?,
        })
    }
}

/// Checks the sampling fields with OpenAI's ranges and messages, then hands them to
/// the sampler's own validation.
fn sampling(
    f: GenerationOptions,
    logprobs: Option<usize>,
) -> Result<ValidSamplingParams, ApiError> {
    let in_range = |param, value: Option<f32>, default, lo: f32, hi: f32| {
        let v = value.unwrap_or(default);
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(param, format!("must be in [{lo}, {hi}], got {v}")))
        }
    };
    let top_p = in_range("top_p", f.top_p, 1.0, 0.0, 1.0)?;
    if top_p == 0.0 {
        return Err(invalid("top_p", "must be greater than 0".into()));
    }
    let top_k = match f.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        k => {
            return Err(invalid(
                "top_k",
                format!("must be -1, 0 or positive, got {k}"),
            ));
        }
    };
    let repetition_penalty = f.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        let msg = format!("must be greater than 0, got {repetition_penalty}");
        return Err(invalid("repetition_penalty", msg));
    }
    let params = SamplingParams {
        temperature: in_range("temperature", f.temperature, 1.0, 0.0, 2.0)?,
        top_p,
        top_k,
        min_p: in_range("min_p", f.min_p, 0.0, 0.0, 1.0)?,
        seed: f.seed,
        presence_penalty: in_range("presence_penalty", f.presence_penalty, 0.0, -2.0, 2.0)?,
        frequency_penalty: in_range("frequency_penalty", f.frequency_penalty, 0.0, -2.0, 2.0)?,
        repetition_penalty,
        logprobs: logprobs.is_some(),
        top_logprobs: logprobs.unwrap_or(0),
        stop: stop(f.stop)?,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        ..SamplingParams::default()
    };
    params.validate().map_err(|e| match e {
        SamplingError::InvalidParam { name, rule } => invalid(name, format!("must be {rule}")),
        other => ApiError::InvalidBody(other.to_string()),
    })
}

fn completion_prompt(prompt: Prompt) -> Result<ValidPrompt, ApiError> {
    let prompt = match prompt {
        Prompt::Text(text) => ValidPrompt::Text(text),
        Prompt::Tokens(ids) => ValidPrompt::Tokens(ids),
        Prompt::TextBatch(mut texts) if texts.len() == 1 => ValidPrompt::Text(texts.remove(0)),
        Prompt::TokensBatch(mut ids) if ids.len() == 1 => ValidPrompt::Tokens(ids.remove(0)),
        Prompt::TextBatch(_) | Prompt::TokensBatch(_) => {
            let msg = "with several prompts (a batch) is not supported; send one prompt per \
                       request (they are batched on the server)";
            return Err(unsupported("prompt", msg));
        }
    };
    match &prompt {
        ValidPrompt::Text(text) if text.is_empty() => {
            Err(invalid("prompt", "must not be empty".into()))
        }
        ValidPrompt::Tokens(ids) if ids.is_empty() => {
            Err(invalid("prompt", "must not be empty".into()))
        }
        ValidPrompt::Tokens(ids) => match ids.iter().find(|&&id| id as usize >= plan::VOCAB_SIZE) {
            Some(id) => Err(invalid(
                "prompt",
                format!(
                    "token id {id} is not below the vocabulary size {}",
                    plan::VOCAB_SIZE
                ),
            )),
            None => Ok(prompt),
        },
        ValidPrompt::Text(_) => Ok(prompt),
    }
}

fn messages(messages: Vec<ChatMessage>) -> Result<Vec<ValidMessage>, ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "must not be empty".into()));
    }
    messages
        .into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "developer" => "system".to_string(),
                "system" | "user" | "assistant" | "tool" => m.role,
                other => {
                    let msg = format!(
                        "role `{other}` is not one of system, developer, user, assistant, tool"
                    );
                    return Err(invalid("messages", msg));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(text)) => text,
                Some(MessageContent::Parts(parts)) => join_text_parts(parts)?,
            };
            Ok(ValidMessage { role, content })
        })
        .collect()
}

fn join_text_parts(parts: Vec<ContentPart>) -> Result<String, ApiError> {
    let mut text = String::new();
    for part in parts {
        match (part.kind.as_str(), part.text) {
            ("text", Some(t)) => text.push_str(&t),
            ("text", None) => return Err(invalid("messages", "a text part has no `text`".into())),
            (other, _) => {
                let msg = format!("content parts of type `{other}` are not supported; only text");
                return Err(unsupported("messages", &msg));
            }
        }
    }
    Ok(text)
}

fn stop(stop: Option<Stop>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    if list.len() > MAX_STOP_SEQUENCES {
        let msg = format!("at most {MAX_STOP_SEQUENCES} sequences, got {}", list.len());
        return Err(invalid("stop", msg));
    }
    if list.iter().any(String::is_empty) {
        return Err(invalid("stop", "sequences must not be empty".into()));
    }
    Ok(list)
}

fn top_count(k: u32, param: &'static str) -> Result<usize, ApiError> {
    let k = k as usize;
    if k > MAX_TOP_LOGPROBS {
        return Err(invalid(
            param,
            format!("must be at most {MAX_TOP_LOGPROBS}, got {k}"),
        ));
    }
    Ok(k)
}

fn check_model(requested: Option<&str>, served: &str) -> Result<(), ApiError> {
    match requested {
        Some(name) if name != served => Err(ApiError::UnknownModel {
            requested: name.to_string(),
            served: served.to_string(),
        }),
        _ => Ok(()),
    }
}

fn check_n(n: Option<u32>, param: &'static str) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(unsupported(
            param,
            &format!("= {n} is not supported; only 1 choice per request (send several requests)"),
        )),
    }
}

fn check_no_logit_bias(
    bias: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<(), ApiError> {
    match bias {
        Some(map) if !map.is_empty() => Err(unsupported("logit_bias", "is not supported yet")),
        _ => Ok(()),
    }
}

fn invalid(param: &'static str, message: String) -> ApiError {
    ApiError::InvalidParam { param, message }
}

fn unsupported(param: &'static str, message: &str) -> ApiError {
    ApiError::Unsupported {
        param,
        message: message.to_string(),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
