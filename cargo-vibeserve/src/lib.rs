//! cargo-vibeserve: turn a `Serve.toml` target into a bespoke LLM inference server.
//!
//! The modules follow the flow, and data moves one way through them:
//! manifest → model → plan → generate → build → judge → bench → evaluate → search → state/lock.

/// The LLM back end: Implementer, Judge reviewer, Evaluator and Orchestrator roles.
pub mod agent;
/// The serving benchmark: load generator, metrics, reports, peers side by side.
pub mod bench;
/// `cargo vibeserve build`: the round loop, `--locked` and `--relock`, compiling a candidate.
pub mod build;
/// The command line: clap types and the dispatch match.
pub mod cli;
/// The Performance Evaluator: candidate against incumbent, interleaved, noise-aware.
pub mod evaluate;
/// Generation: a Plan in, a standalone server crate out.
pub mod generate;
/// The Accuracy Judge: the target's check plus anti-cheating probes.
pub mod judge;
/// Serve.lock: the accepted rounds, digests and replay of the final plan.
pub mod lock;
/// `cargo vibeserve log`: the rounds as a table and an SVG chart.
pub mod log;
/// Serve.toml: schema, loading, validation, and the `init` and `check` commands.
pub mod manifest;
/// Model sources, the cache, digests and GGUF metadata.
pub mod model;
/// The Plan: one design point of a generated server.
pub mod plan;
/// Manifest, workspace and model together: what every command that needs a model runs first.
pub mod prepare;
/// The outer loop: tasks, history, hints and the `backlog` and `evolutionary` policies.
pub mod search;
/// The skills library: SKILL.md front matter, applicability and moves.
pub mod skills;
/// The search's state: one git commit per attempt, and the `best` ref.
pub mod state;
/// The cargo workspace: its root, `targets/` and target directory.
pub mod workspace;
