//! cargo-vibeserve: turn a `Serve.toml` target into a bespoke LLM inference server.
//!
//! The modules follow the flow, and data moves one way through them:
//! manifest → model → plan → generate → build → judge → bench → evaluate → search → state/lock.

/// The serving benchmark: load generator, metrics, reports, peers side by side.
pub mod bench;
pub mod cli;
/// Serve.toml: schema, loading, validation, and the `init` and `check` commands.
pub mod manifest;
/// Model sources, the cache, digests and GGUF metadata.
pub mod model;
/// The cargo workspace: its root, `targets/` and target directory.
pub mod workspace;
