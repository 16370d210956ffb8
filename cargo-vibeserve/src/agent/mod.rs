//! The LLM back end (`agent = "openai"`): an Implementer that edits the candidate crate
//! through confined tools, a Judge reviewer that can only reject, an Evaluator that turns
//! the figures into hints, and an Orchestrator (`policy = "llm"`) that picks the next
//! task — each a conversation with any OpenAI-compatible endpoint, under the round's
//! budget from `[agent]`, recorded as a transcript with its usage and time.

/// The transport: streamed requests, retries with backoff, redaction of the key.
pub mod client;
/// Unified diffs of the candidate crate: made, parsed and applied with `diffy`.
pub mod patch;
/// The roles' system prompts and the context they are built from.
pub mod prompts;
/// The conversation loop: budgets, tool calls, malformed calls answered with errors.
pub mod roles;
/// Path confinement and confined, time-limited commands (Landlock where available).
pub mod sandbox;
/// Streamed answers assembled: content, tool-call deltas, usage.
pub mod stream;
/// The Implementer's tools.
pub mod tools;
/// Transcripts and per-role usage, written beside the state.
pub mod transcript;

use std::time::{Duration, Instant};

pub use client::{ChatClient, ClientError, Endpoint};
pub use roles::{Budget, End};
pub use tools::Toolbox;
pub use transcript::{Role, Transcript, Usage};

use crate::manifest;
use prompts::Context;

/// A connected back end: the client, the round budgets, and a runtime to drive it.
pub struct Agent {
    runtime: tokio::runtime::Runtime,
    client: ChatClient,
    config: manifest::Agent,
    api_key: String,
}

/// What the Orchestrator picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// A skill id, or `new/<name>`.
    pub skill: String,
    /// What to change.
    pub task: String,
}

impl Agent {
    /// The back end `[agent]` describes, with its URL and key from the environment
    /// variables it names (the key may be unset for local servers).
    pub fn from_env(config: &manifest::Agent) -> Result<Agent, AgentError> {
        let base_url = std::env::var(&config.base_url_env)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AgentError::NoBaseUrl(config.base_url_env.clone()))?;
        let api_key = std::env::var(&config.api_key_env).unwrap_or_default();
        let endpoint = Endpoint {
            base_url,
            api_key,
            model: config.model.clone(),
        };
        Agent::new(config, ChatClient::new(endpoint.clone()), endpoint.api_key)
    }

    /// A back end over `client`.
    pub fn new(
        config: &manifest::Agent,
        client: ChatClient,
        api_key: String,
    ) -> Result<Agent, AgentError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Runtime)?;
        Ok(Agent {
            runtime,
            client,
            config: config.clone(),
            api_key,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &manifest::Agent {
        &self.config
    }

    /// `text` with the key redacted.
    pub fn redact(&self, text: &str) -> String {
        client::redact(text, &self.api_key)
    }

    /// A fresh round budget whose time starts now.
    pub fn budget(&self) -> Budget {
        Budget {
            max_tool_calls: self.config.max_tool_calls,
            max_tokens: self.config.max_tokens,
            deadline: Instant::now() + Duration::from_secs(u64::from(self.config.max_minutes) * 60),
            tool_calls: 0,
            tokens: 0,
        }
    }

    /// An empty transcript for `round`.
    pub fn transcript(&self, round: u32) -> Transcript {
        Transcript {
            round,
            model: self.client.model().to_string(),
            ..Transcript::default()
        }
    }

    /// Writes `transcript` beside the state with the key redacted.
    pub fn write_transcript(
        &self,
        transcript: &Transcript,
        work: &std::path::Path,
    ) -> std::io::Result<std::path::PathBuf> {
        transcript.write(work, &self.api_key)
    }

    /// Runs the Implementer on `task` with `tools` until it finishes or the budget ends.
    pub fn implement(
        &self,
        cx: &Context,
        skill: &str,
        task: &str,
        tools: &Toolbox,
        budget: &mut Budget,
        transcript: &mut Transcript,
    ) -> End {
        let system = prompts::implementer(cx);
        let user = prompts::implementer_task(skill, task);
        self.run(
            Role::Implementer,
            &system,
            &user,
            Some(tools),
            budget,
            transcript,
        )
    }

    /// The Judge reviewer on `diff`: `Some(reason)` when it rejects. An unusable answer,
    /// a failed endpoint or a spent budget rejects nothing (the probes stay the gate).
    pub fn review(&self, cx: &Context, diff: &str, transcript: &mut Transcript) -> Option<String> {
        let mut budget = self.budget();
        let user = format!("The round's diff:\n{}", sandbox::truncate(diff));
        let End::Done(answer) = self.run(
            Role::Reviewer,
            &prompts::reviewer(cx),
            &user,
            None,
            &mut budget,
            transcript,
        ) else {
            return None;
        };
        let v = roles::json_object(&answer)?;
        (v["verdict"].as_str() == Some("reject")).then(|| {
            v["reason"]
                .as_str()
                .unwrap_or("no reason given")
                .to_string()
        })
    }

    /// The Evaluator on `figures`: its notes and the skills it suggests.
    pub fn evaluate(
        &self,
        cx: &Context,
        figures: &str,
        transcript: &mut Transcript,
    ) -> Option<(String, Vec<String>)> {
        let mut budget = self.budget();
        let End::Done(answer) = self.run(
            Role::Evaluator,
            &prompts::evaluator(cx),
            figures,
            None,
            &mut budget,
            transcript,
        ) else {
            return None;
        };
        let Some(v) = roles::json_object(&answer) else {
            return Some((answer, Vec::new()));
        };
        let notes = v["notes"].as_str().unwrap_or_default().to_string();
        let suggest = v["suggest"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Some((notes, suggest))
    }

    /// The Orchestrator: the next task given `state` (history, hints, open backlog).
    pub fn orchestrate(
        &self,
        cx: &Context,
        state: &str,
        budget: &mut Budget,
        transcript: &mut Transcript,
    ) -> Option<Pick> {
        let End::Done(answer) = self.run(
            Role::Orchestrator,
            &prompts::orchestrator(cx),
            state,
            None,
            budget,
            transcript,
        ) else {
            return None;
        };
        let v = roles::json_object(&answer)?;
        Some(Pick {
            skill: v["skill"].as_str()?.to_string(),
            task: v["task"].as_str()?.to_string(),
        })
    }

    fn run(
        &self,
        role: Role,
        system: &str,
        user: &str,
        tools: Option<&Toolbox>,
        budget: &mut Budget,
        transcript: &mut Transcript,
    ) -> End {
        let (end, conversation) = self.runtime.block_on(roles::converse(
            &self.client,
            role,
            system,
            user,
            tools,
            budget,
        ));
        eprintln!(
            "  {}: {} calls, {} tokens, {:.1}s — {}",
            role.as_str(),
            conversation.usage.calls,
            conversation.usage.tokens(),
            conversation.usage.seconds,
            first_line(&conversation.outcome)
        );
        transcript.conversations.push(conversation);
        end
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(120).collect()
}

/// What went wrong setting up the back end.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum AgentError {
    /// The base URL's variable is unset.
    #[error("${0} is not set: the agent needs the endpoint's base URL")]
    #[diagnostic(help("export {0}=http://host:port/v1 (any OpenAI-compatible endpoint)"))]
    NoBaseUrl(String),
    /// The async runtime could not start.
    #[error("cannot start the agent's runtime: {0}")]
    Runtime(std::io::Error),
}
