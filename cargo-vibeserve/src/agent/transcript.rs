//! Each attempt's transcript: every role's messages, tool calls and results, token usage
//! and time, written as JSON beside the state (`<work>/agent/round-<n>.json`) with the
//! commit that recorded the attempt. The key is redacted from the text before it is
//! written; `cargo vibeserve log` sums the per-role figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::redact;

/// The folder of transcripts and patches, beside `state.git`.
pub const AGENT_DIR: &str = "agent";

/// The LLM roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Picks the next task (`policy = "llm"`).
    Orchestrator,
    /// Changes the crate.
    Implementer,
    /// Reads the round's diff for reward hacking; can only reject.
    Reviewer,
    /// Turns the figures into hints.
    Evaluator,
}

impl Role {
    /// The role's name, as transcripts and the log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Orchestrator => "orchestrator",
            Role::Implementer => "implementer",
            Role::Reviewer => "reviewer",
            Role::Evaluator => "evaluator",
        }
    }
}

/// One role's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Chat requests answered.
    pub calls: u32,
    /// Retries they took.
    #[serde(default)]
    pub retries: u32,
    /// Tool calls the model made.
    #[serde(default)]
    pub tool_calls: u32,
    /// Prompt tokens, as the endpoint counted them (or estimated: see `estimated`).
    pub prompt_tokens: u64,
    /// Completion tokens, as the endpoint counted them (or estimated).
    pub completion_tokens: u64,
    /// Wall-clock seconds, tools included.
    pub seconds: f64,
    /// Answers whose tokens the endpoint did not report (streams without a usage
    /// chunk): their tokens are estimated from the text.
    #[serde(default)]
    pub estimated: u32,
}

impl Usage {
    /// Prompt and completion tokens.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Adds `other` to this.
    pub fn add(&mut self, other: &Usage) {
        self.calls += other.calls;
        self.retries += other.retries;
        self.tool_calls += other.tool_calls;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.seconds += other.seconds;
        self.estimated += other.estimated;
    }
}

/// One role's conversation in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// The role.
    pub role: Role,
    /// The messages as sent and received (OpenAI chat format), tool results included.
    pub messages: Vec<Value>,
    /// Its figures.
    pub usage: Usage,
    /// How it ended: the summary, the answer, or why it stopped.
    pub outcome: String,
}

/// One round's transcript.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// The round.
    pub round: u32,
    /// The state commit that recorded the attempt, once recorded.
    #[serde(default)]
    pub commit: Option<String>,
    /// The model name.
    pub model: String,
    /// The attempt's verdict, once known.
    #[serde(default)]
    pub verdict: Option<String>,
    /// Why it was rejected, when a probe, the reviewer or a budget said so.
    #[serde(default)]
    pub reason: Option<String>,
    /// The conversations, in the order they ran.
    pub conversations: Vec<Conversation>,
}

impl Transcript {
    /// Each role's figures summed over the round.
    pub fn per_role(&self) -> BTreeMap<Role, Usage> {
        let mut out: BTreeMap<Role, Usage> = BTreeMap::new();
        for c in &self.conversations {
            out.entry(c.role).or_default().add(&c.usage);
        }
        out
    }

    /// Writes the transcript to `<work>/agent/round-<n>.json` with `key` redacted.
    pub fn write(&self, work: &Path, key: &str) -> std::io::Result<PathBuf> {
        let path = transcript_path(work, self.round);
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::generate::write_atomic(&path, redact(&text, key).as_bytes())
            .map_err(std::io::Error::other)?;
        Ok(path)
    }

    /// Every transcript under `work`, in round order; unreadable files are skipped.
    pub fn read_all(work: &Path) -> Vec<Transcript> {
        let Ok(entries) = std::fs::read_dir(work.join(AGENT_DIR)) else {
            return Vec::new();
        };
        let mut out: Vec<Transcript> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect();
        out.sort_by_key(|t| t.round);
        out
    }
}

/// `<work>/agent/round-<n>.json`.
pub fn transcript_path(work: &Path, round: u32) -> PathBuf {
    work.join(AGENT_DIR).join(format!("round-{round}.json"))
}

/// `<work>/agent/round-<n>.patch`: the round's change as a unified diff.
pub fn patch_path(work: &Path, round: u32) -> PathBuf {
    work.join(AGENT_DIR).join(format!("round-{round}.patch"))
}
