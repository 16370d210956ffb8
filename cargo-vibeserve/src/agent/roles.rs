//! The roles' conversations: one loop that sends the messages (streamed), counts usage
//! against the round's budget, runs the tool calls the model makes (answering a malformed one with an
//! error message) and stops on `finish`, on a plain answer, or on an exhausted budget.

use std::time::Instant;

use async_openai::types::chat::CreateChatCompletionRequest;
use serde_json::{Value, json};

use super::client::{ChatClient, ClientError};
use super::tools::{ToolResult, Toolbox, specs};
use super::transcript::{Conversation, Role, Usage};

/// Most tokens one answer may take (less when the round's token budget has less left):
/// a runaway answer cannot spend the whole round at once.
pub const MAX_ANSWER_TOKENS: u32 = 16_384;

/// What a round may spend on the agent, from `[agent]`.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Most tool calls in the round.
    pub max_tool_calls: u32,
    /// Most tokens (prompt + completion) in the round.
    pub max_tokens: u64,
    /// When the current phase's time runs out.
    pub deadline: Instant,
    /// Tool calls made so far.
    pub tool_calls: u32,
    /// Tokens used so far.
    pub tokens: u64,
}

/// How a conversation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The model finished: its summary or answer.
    Done(String),
    /// A budget ran out: which, and how far it got.
    Exhausted(String),
    /// The endpoint could not be used.
    Failed(ClientError),
}

/// Runs one role's conversation: `system` and `user` first, then request/answer turns,
/// running tool calls on `tools` when given, until the model stops or the budget ends.
pub async fn converse(
    client: &ChatClient,
    role: Role,
    system: &str,
    user: &str,
    tools: Option<&Toolbox>,
    budget: &mut Budget,
) -> (End, Conversation) {
    let started = Instant::now();
    let mut conv = Conversation {
        role,
        messages: vec![
            json!({"role": "system", "content": system}),
            json!({"role": "user", "content": user}),
        ],
        usage: Usage::default(),
        outcome: String::new(),
    };
    let end = turns(client, tools, budget, &mut conv).await;
    conv.usage.seconds = started.elapsed().as_secs_f64();
    conv.outcome = match &end {
        End::Done(text) => text.clone(),
        End::Exhausted(why) => format!("budget exhausted: {why}"),
        End::Failed(e) => format!("endpoint failed: {e}"),
    };
    (end, conv)
}

async fn turns(
    client: &ChatClient,
    tools: Option<&Toolbox>,
    budget: &mut Budget,
    conv: &mut Conversation,
) -> End {
    loop {
        if budget.tokens >= budget.max_tokens {
            return End::Exhausted(format!(
                "{} of {} tokens used",
                budget.tokens, budget.max_tokens
            ));
        }
        let left = budget.max_tokens - budget.tokens;
        let cap = u32::try_from(left)
            .unwrap_or(u32::MAX)
            .min(MAX_ANSWER_TOKENS);
        let request = match request(client.model(), &conv.messages, tools.is_some(), cap) {
            Ok(r) => r,
            Err(e) => return End::Failed(ClientError::Fatal(e)),
        };
        let answer = match client.chat(&request, Some(budget.deadline)).await {
            Ok(a) => a,
            Err(ClientError::Deadline { last }) => {
                return End::Exhausted(format!(
                    "time ran out{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(" ({last})")
                    }
                ));
            }
            Err(e) => {
                if let ClientError::GaveUp { attempts, .. } = &e {
                    conv.usage.retries += attempts - 1; // the table counts them too
                }
                return End::Failed(e);
            }
        };
        conv.usage.calls += 1;
        conv.usage.retries += answer.retries;
        let prompt_bytes = serde_json::to_string(&conv.messages).map_or(0, |t| t.len());
        let message = answer.message;
        let tokens = message.tokens(prompt_bytes);
        conv.usage.prompt_tokens += tokens.prompt;
        conv.usage.completion_tokens += tokens.completion;
        conv.usage.estimated += u32::from(!tokens.reported);
        budget.tokens += tokens.prompt + tokens.completion;
        let calls = message.tool_calls;
        let wire: Vec<Value> = calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        conv.messages.push(json!({
            "role": "assistant",
            "content": message.content,
            "tool_calls": if wire.is_empty() { Value::Null } else { Value::Array(wire) },
        }));
        let (Some(tools), false) = (tools, calls.is_empty()) else {
            return End::Done(message.content.unwrap_or_default());
        };
        for call in calls {
            if budget.tool_calls >= budget.max_tool_calls {
                return End::Exhausted(format!("{} tool calls made", budget.tool_calls));
            }
            budget.tool_calls += 1;
            conv.usage.tool_calls += 1;
            let result = tools.call(&call.name, &call.arguments);
            conv.messages.push(json!({"role": "tool", "tool_call_id": call.id, "content": client.redact(&result.text())}));
            if let ToolResult::Finished(summary) = result {
                return End::Done(summary);
            }
        }
    }
}

/// The chat request: the model, the messages, and the tools when the role has them.
fn request(
    model: &str,
    messages: &[Value],
    with_tools: bool,
    max_answer_tokens: u32,
) -> Result<CreateChatCompletionRequest, String> {
    let mut body = json!({"model": model, "messages": messages,
                          "max_completion_tokens": max_answer_tokens,
                          "stream": true, "stream_options": {"include_usage": true}});
    if with_tools {
        body["tools"] = Value::Array(specs());
    }
    // Drop the nulls the assistant messages carry for absent fields.
    strip_nulls(&mut body);
    serde_json::from_value(body).map_err(|e| format!("cannot build the chat request: {e}"))
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The first `{…}` JSON object in `text` (models wrap answers in prose or code fences).
pub fn json_object(text: &str) -> Option<Value> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    serde_json::from_str(text.get(start..=end)?).ok()
}
