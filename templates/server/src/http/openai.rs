//! OpenAI API request and response types, as the wire format spells them.
//!
//! Requests deserialize leniently (unknown fields are ignored, as llama-server and
//! vLLM do, so clients that send extra options still work); every field we act on is
//! checked in `validate.rs` before a request reaches the queue. Responses serialize
//! exactly as OpenAI's: the official Python client parses them.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Model name; must equal the served model's id when given.
    #[serde(default)]
    pub model: Option<String>,
    /// The prompt: a string, a list of token ids, or a one-element list of either.
    pub prompt: Prompt,
    /// Most tokens to generate (OpenAI's default for completions is 16).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Return the log probabilities of this many most likely tokens at each position.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Return the prompt before the completion (scored, when `logprobs` is set).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Only 1 is supported.
    #[serde(default)]
    pub best_of: Option<u32>,
    /// Not supported; refused when given.
    #[serde(default)]
    pub suffix: Option<String>,
    /// The options chat shares.
    #[serde(flatten)]
    pub options: GenerationOptions,
}

/// The generation options both endpoints take, flattened into each request's body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationOptions {
    /// Sampling temperature in [0, 2]; 0 means greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Extension: keep only the k most likely tokens (0 or -1: no limit).
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Extension: drop tokens less likely than `min_p` times the most likely one.
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Seed of the request's sampling RNG: same seed, same output.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop sequences: generation ends before the first occurrence of any of them.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Number of choices; only 1 is supported.
    #[serde(default)]
    pub n: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`).
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Penalty in [-2, 2] on tokens that already appeared.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Penalty in [-2, 2] proportional to how often a token already appeared.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Extension: multiplicative repetition penalty (1 = none).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// End user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// Extension (llama-server, vLLM): keep generating after the end-of-sequence token.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Not supported; a non-empty map is refused.
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A completions prompt in any of the shapes OpenAI accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One text prompt.
    Text(String),
    /// One prompt given as token ids.
    Tokens(Vec<u32>),
    /// Several text prompts (a batch; only one element is supported).
    TextBatch(Vec<String>),
    /// Several token-id prompts (a batch; only one element is supported).
    TokensBatch(Vec<Vec<u32>>),
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single stop sequence.
    One(String),
    /// Several stop sequences.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the token usage and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// Model name; must equal the served model's id when given.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Deprecated name of `max_completion_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Most tokens to generate (default: up to the context length).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Return the log probability of each generated token.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`, also return this many most likely tokens at each position.
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Output format; only `{"type": "text"}` is supported so far.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Tool definitions; not supported, refused when non-empty.
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// The options completions shares.
    #[serde(flatten)]
    pub options: GenerationOptions,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// One message of a chat.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text, as a string or a list of text parts; absent for tool-call turns.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Optional participant name; accepted and ignored.
    #[serde(default)]
    pub name: Option<String>,
}

/// Message content: a string or a list of typed parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts; only `text` parts are supported.
    Parts(Vec<ContentPart>),
}

/// One typed part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// Part type: `text` (others, e.g. `image_url`, are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl Usage {
    /// Usage of a request with these prompt and completion counts.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

pub use crate::engine::FinishReason;

/// `POST /v1/completions` answer (and, with `object = "text_completion"`, each stream chunk).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    /// Request id, `cmpl-…`.
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix time the request was received, in seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// One choice (`n` is 1); empty in the final usage chunk of a stream.
    pub choices: Vec<CompletionChoice>,
    /// Token counts; in a stream, only in the final usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One completions choice (or its increment, in a stream chunk).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// Generated text (with the prompt before it when `echo` is set).
    pub text: String,
    /// Choice index; always 0.
    pub index: u32,
    /// Token log probabilities when `logprobs` was requested, else null.
    pub logprobs: Option<CompletionLogprobs>,
    /// Why generation stopped; null in stream chunks before the last.
    pub finish_reason: Option<FinishReason>,
}

/// Log probabilities in the legacy completions format: parallel lists, one entry per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Each token's log probability; null for the first prompt token (nothing predicts it).
    pub token_logprobs: Vec<Option<f32>>,
    /// The most likely tokens at each position, text to log probability; null where
    /// `token_logprobs` is null.
    pub top_logprobs: Vec<Option<TopLogprobMap>>,
    /// Each token's character offset in the returned text.
    pub text_offset: Vec<u32>,
}

/// Token text → log probability, serialized as a JSON object in the order given
/// (most likely first). Tokens with the same text keep the first, likelier entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobMap(pub Vec<(String, f32)>);

impl Serialize for TopLogprobMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut map = serializer.serialize_map(None)?;
        for (token, logprob) in &self.0 {
            if seen.insert(token.as_str()) {
                map.serialize_entry(token, logprob)?;
            }
        }
        map.end()
    }
}

/// `POST /v1/chat/completions` answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionResponse {
    /// Request id, `chatcmpl-…`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix time the request was received, in seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// One choice (`n` is 1).
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// One chat choice.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// Choice index; always 0.
    pub index: u32,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// Token log probabilities when `logprobs` was requested, else null.
    pub logprobs: Option<ChatLogprobs>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
}

/// The assistant's answer.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// Chat-format log probabilities.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// One generated token's log probability, with the most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log probability.
    pub logprob: f32,
    /// Its UTF-8 bytes (a token may hold part of a character).
    pub bytes: Vec<u8>,
    /// The `top_logprobs` most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// One alternative token at a position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    /// Request id, the same in every chunk.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix time the request was received, in seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// The increment; empty in the final usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Token counts, only in the final usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice's increment in a chat stream chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    /// Choice index; always 0.
    pub index: u32,
    /// The new part of the message.
    pub delta: ChatDelta,
    /// Log probabilities of the tokens in this chunk, when requested.
    pub logprobs: Option<ChatLogprobs>,
    /// Why generation stopped; null before the last chunk.
    pub finish_reason: Option<FinishReason>,
}

/// The new part of the assistant's message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models` answer.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The one served model.
    pub data: Vec<ModelCard>,
}

/// One model of `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// The id clients pass as `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix time the server started, in seconds.
    pub created: u64,
    /// Always `vibeserve`.
    pub owned_by: &'static str,
    /// Extension (vLLM): the context length in tokens.
    pub max_model_len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_accepts_every_openai_shape() {
        let parse = |s: &str| serde_json::from_str::<Prompt>(s).expect("valid prompt");
        assert!(matches!(parse(r#""hi""#), Prompt::Text(t) if t == "hi"));
        assert!(matches!(parse("[1, 2]"), Prompt::Tokens(t) if t == [1, 2]));
        assert!(matches!(parse(r#"["a", "b"]"#), Prompt::TextBatch(t) if t.len() == 2));
        assert!(matches!(parse("[[1], [2, 3]]"), Prompt::TokensBatch(t) if t.len() == 2));
        assert!(serde_json::from_str::<Prompt>("3").is_err());
        assert!(serde_json::from_str::<Prompt>("[-1]").is_err());
    }

    #[test]
    fn top_logprob_map_keeps_order_and_first_duplicate() {
        let map = TopLogprobMap(vec![
            ("b".into(), -0.1),
            ("a".into(), -1.0),
            ("b".into(), -3.0),
        ]);
        let json = serde_json::to_string(&map).expect("serializes");
        assert_eq!(json, r#"{"b":-0.1,"a":-1.0}"#);
    }

    #[test]
    fn stream_chunk_omits_absent_usage_and_role() {
        let chunk = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: None,
                    content: Some("x".into()),
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        let json = serde_json::to_value(&chunk).expect("serializes");
        assert_eq!(
            json["choices"][0]["delta"],
            serde_json::json!({"content": "x"})
        );
        assert!(json["choices"][0]["finish_reason"].is_null());
        assert!(json.get("usage").is_none());
    }
}
