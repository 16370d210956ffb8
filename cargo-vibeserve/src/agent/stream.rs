//! A streamed chat completion put back together: the content deltas joined, the tool
//! calls assembled from their deltas (the id and name come first, the arguments in
//! pieces, each keyed by its index), the finish reason, and the usage chunk that
//! `stream_options.include_usage` asks for. Where an endpoint sends no usage, the
//! tokens are estimated from the text at [`BYTES_PER_TOKEN`], so budgets still bind.

use std::collections::BTreeMap;

use async_openai::types::chat::CreateChatCompletionStreamResponse;

/// Bytes of text per token for the estimate when an endpoint reports no usage (English
/// and code with BPE vocabularies: about 4).
pub const BYTES_PER_TOKEN: u64 = 4;

/// One assembled tool call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// Its id, which the tool result names.
    pub id: String,
    /// The function called.
    pub name: String,
    /// The arguments as the model wrote them (JSON text, not yet checked).
    pub arguments: String,
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Whether the endpoint reported them (false: estimated from the text).
    pub reported: bool,
}

/// A whole answer, from its chunks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// The text, if any was sent.
    pub content: Option<String>,
    /// The tool calls, in index order.
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped (`stop`, `length`, `tool_calls`, …), if said.
    pub finish_reason: Option<String>,
    /// The usage chunk's counts, if one came.
    reported: Option<(u64, u64)>,
    /// Chunks received.
    pub chunks: usize,
}

/// Assembles chunks into a [`Message`].
#[derive(Debug, Default)]
pub struct Assembler {
    message: Message,
    calls: BTreeMap<u32, ToolCall>,
}

impl Assembler {
    /// Adds one chunk (only the first choice is read: requests ask for one).
    pub fn push(&mut self, chunk: CreateChatCompletionStreamResponse) {
        self.message.chunks += 1;
        if let Some(u) = chunk.usage {
            self.message.reported =
                Some((u64::from(u.prompt_tokens), u64::from(u.completion_tokens)));
        }
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else {
            return;
        };
        if let Some(text) = choice.delta.content {
            self.message
                .content
                .get_or_insert_with(String::new)
                .push_str(&text);
        }
        for delta in choice.delta.tool_calls.unwrap_or_default() {
            let call = self.calls.entry(delta.index).or_default();
            if let Some(id) = delta.id.filter(|i| !i.is_empty()) {
                call.id = id;
            }
            if let Some(f) = delta.function {
                if let Some(name) = f.name {
                    call.name.push_str(&name);
                }
                if let Some(args) = f.arguments {
                    call.arguments.push_str(&args);
                }
            }
        }
        if let Some(reason) = choice.finish_reason {
            let text = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(String::from));
            self.message.finish_reason = text;
        }
    }

    /// The message so far. A call that came without an id gets one from its index.
    pub fn finish(mut self) -> Message {
        self.message.tool_calls = self
            .calls
            .into_iter()
            .map(|(index, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{index}");
                }
                call
            })
            .collect();
        self.message
    }
}

impl Message {
    /// The answer's tokens: as reported, else estimated (the prompt from `prompt_bytes`).
    pub fn tokens(&self, prompt_bytes: usize) -> Tokens {
        if let Some((prompt, completion)) = self.reported {
            return Tokens {
                prompt,
                completion,
                reported: true,
            };
        }
        let written = self.content.as_ref().map_or(0, String::len)
            + self
                .tool_calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len())
                .sum::<usize>();
        Tokens {
            prompt: (prompt_bytes as u64).div_ceil(BYTES_PER_TOKEN),
            completion: (written as u64).div_ceil(BYTES_PER_TOKEN),
            reported: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(delta: serde_json::Value, finish: Option<&str>) -> CreateChatCompletionStreamResponse {
        serde_json::from_value(json!({
            "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        }))
        .expect("a chunk")
    }

    #[test]
    fn tool_call_deltas_join_by_index_and_usage_comes_from_the_last_chunk() {
        let mut a = Assembler::default();
        a.push(chunk(
            json!({"role": "assistant", "content": "Let me "}),
            None,
        ));
        a.push(chunk(json!({"content": "look."}), None));
        a.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                   "function": {"name": "read_file", "arguments": "{\"pa"}}]}),
            None,
        ));
        a.push(chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                   "function": {"name": "list_files", "arguments": ""}}]}),
            None,
        ));
        a.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "th\": \"a.rs\"}"}},
                                  {"index": 1, "function": {"arguments": "{}"}}]}),
            Some("tool_calls"),
        ));
        a.push(
            serde_json::from_value(json!({
                "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": 120, "completion_tokens": 17, "total_tokens": 137}
            }))
            .expect("a usage chunk"),
        );
        let m = a.finish();
        assert_eq!(m.content.as_deref(), Some("Let me look."));
        assert_eq!(
            m.tool_calls,
            vec![
                ToolCall {
                    id: "call_a".into(),
                    name: "read_file".into(),
                    arguments: "{\"path\": \"a.rs\"}".into()
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "list_files".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(m.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            m.tokens(10_000),
            Tokens {
                prompt: 120,
                completion: 17,
                reported: true
            }
        );
    }

    #[test]
    fn without_a_usage_chunk_tokens_are_estimated_from_the_text() {
        let mut a = Assembler::default();
        a.push(chunk(json!({"content": "12345678"}), Some("stop")));
        let m = a.finish();
        assert_eq!(
            m.tokens(41),
            Tokens {
                prompt: 11,
                completion: 2,
                reported: false
            }
        );
    }
}
