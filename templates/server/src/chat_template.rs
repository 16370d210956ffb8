//! Chat messages → prompt text, by the model's own Jinja template (`tokenizer.chat_template`).
//!
//! Rendered with `minijinja` configured as Hugging Face `transformers` and llama.cpp
//! configure Jinja for chat templates: `trim_blocks` and `lstrip_blocks` on, Python string
//! methods (`.strip()`, `.startswith()`, …) through `minijinja-contrib`'s pycompat
//! callback, a `raise_exception` function, and the `messages`, `add_generation_prompt`,
//! `bos_token` and `eos_token` variables. The reference for the output is Python's
//! `jinja2`, checked in `tests/tokenizer_llamacpp.rs`.

use ggus::{GGufMetaError, GGufMetaMap, GGufMetaMapExt};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

/// Name under which the template is registered in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// What can go wrong loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The GGUF has no `tokenizer.chat_template`.
    #[error("the model has no chat template (GGUF key tokenizer.chat_template)")]
    Missing,
    /// A metadata key could not be read.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The template does not parse.
    #[error("the chat template does not parse: {0:#}")]
    Syntax(minijinja::Error),
    /// The template failed on these messages (including its own `raise_exception`).
    #[error("the chat template failed on these messages: {0:#}")]
    Render(minijinja::Error),
}

/// One message of a conversation, as OpenAI's chat API sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user`, `assistant` (the template decides what is allowed).
    pub role: String,
    /// What was said.
    pub content: MessageContent,
}

/// A message's content: plain text, or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts; this text-only server accepts text parts.
    Parts(Vec<ContentPart>),
}

/// One typed part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// A piece of text.
    Text {
        /// The text.
        text: String,
    },
}

impl MessageContent {
    /// The content as one string; text parts are joined with newlines, as vLLM does
    /// for templates that expect string content.
    pub fn to_text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Parts(parts) => parts
                .iter()
                .map(|ContentPart::Text { text }| text.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl ChatMessage {
    /// A message with plain-text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: MessageContent::Text(content.into()),
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the template may use.
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        // transformers and llama-cpp-python both compile chat templates with these on.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(ChatTemplateError::Syntax)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(ChatTemplateError::Syntax)?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Reads `tokenizer.chat_template` and the BOS/EOS token texts from GGUF metadata.
    pub fn from_gguf(meta: &impl GGufMetaMap) -> Result<Self, ChatTemplateError> {
        let source = match meta.tokenizer_chat_template() {
            Ok(source) => source,
            Err(GGufMetaError::NotExist) => return Err(ChatTemplateError::Missing),
            Err(e) => return Err(metadata("tokenizer.chat_template", e)),
        };
        let bos = token_text(meta, "tokenizer.ggml.bos_token_id")?;
        let eos = token_text(meta, "tokenizer.ggml.eos_token_id")?;
        Self::new(source, bos, eos)
    }

    /// The prompt for `messages`; with `add_generation_prompt`, it ends with the opening
    /// of an assistant turn, ready for the model to answer.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        // What templates see: `message['role']`, and `message['content']` as a string.
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.to_text() })
            .collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatTemplateError::Render)?;
        template
            .render(context! {
                messages,
                add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(ChatTemplateError::Render)
    }
}

/// `raise_exception(msg)`, which HF templates call to reject a conversation.
fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn metadata(key: &'static str, e: GGufMetaError) -> ChatTemplateError {
    ChatTemplateError::Metadata {
        key,
        reason: format!("{e:?}"),
    }
}

/// The text of the token whose id is stored under `key`; empty if the key is absent.
fn token_text(meta: &impl GGufMetaMap, key: &'static str) -> Result<String, ChatTemplateError> {
    let id = match meta.get_usize(key) {
        Ok(id) => id,
        Err(GGufMetaError::NotExist) => return Ok(String::new()),
        Err(e) => return Err(metadata(key, e)),
    };
    let mut tokens = meta
        .tokenizer_ggml_tokens()
        .map_err(|e| metadata("tokenizer.ggml.tokens", e))?;
    match tokens.nth(id) {
        Some(Ok(text)) => Ok(text.to_owned()),
        Some(Err(e)) => Err(metadata("tokenizer.ggml.tokens", GGufMetaError::Read(e))),
        None => Err(ChatTemplateError::Metadata {
            key,
            reason: format!("token id {id} is outside the vocabulary"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pycompat_string_methods_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m['content'].strip().upper() }}|\
             {{ m['role'].startswith('us') }}{% endfor %}",
            "",
            "",
        )
        .expect("template parses");
        let out = t.render(&[ChatMessage::new("user", "  hi ")], false);
        assert_eq!(
            out.expect("renders"),
            "HI|True",
            "booleans print as in Python"
        );
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('need a system turn') }}{% endif %}",
            "",
            "",
        )
        .expect("template parses");
        let err = t
            .render(&[ChatMessage::new("user", "hi")], false)
            .expect_err("must fail");
        assert!(err.to_string().contains("need a system turn"), "{err}");
    }

    #[test]
    fn trim_and_lstrip_blocks_are_on() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n    {% if true %}\n{{ m['content'] }}\n    {% endif %}\n{% endfor %}",
            "",
            "",
        )
        .expect("template parses");
        let out = t.render(&[ChatMessage::new("user", "x")], false);
        assert_eq!(out.expect("renders"), "x\n");
    }

    #[test]
    fn text_parts_are_joined() {
        let content: MessageContent = serde_json::from_str(
            r#"[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]"#,
        )
        .expect("parts parse");
        assert_eq!(content.to_text(), "a\nb");
        let t = ChatTemplate::new("{{ messages[0]['content'] }}{{ bos_token }}", "<s>", "</s>")
            .expect("template parses");
        let message = ChatMessage {
            role: "user".into(),
            content,
        };
        assert_eq!(t.render(&[message], false).expect("renders"), "a\nb<s>");
    }
}
