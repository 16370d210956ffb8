//! cargo-vibeserve: turn a `Serve.toml` target into a bespoke LLM inference server.
//!
//! The modules follow the flow, and data moves one way through them:
//! manifest → model → plan → generate → build → judge → bench → evaluate → search → state/lock.

pub mod cli;
