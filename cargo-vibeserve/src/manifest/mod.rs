//! The `manifest` stage: Serve.toml's schema, loading and validation, and the `init` and
//! `check` commands. Every error names the file, line and column and says what is valid.
//!
//! Other stages take a [`Manifest`] (from [`Manifest::load`] or [`TargetArg::load`]) and read
//! its resolved, typed tables.

/// `cargo vibeserve check` and the TARGET argument.
mod check;
/// Manifest errors with source spans.
pub mod error;
/// `cargo vibeserve init`.
mod init;
/// Reading the file: syntax, version, schema.
mod load;
/// Metrics, objectives and constraints.
pub mod metric;
/// The file format as written (the key reference).
pub mod schema;
/// The resolved values other stages consume.
mod types;
/// Semantic validation into resolved values.
mod validate;
/// Validation of `[model]` and `[hardware]`.
mod validate_model;
/// Validation of `[workload]`, `[benchmark]` and `[accuracy]`.
mod validate_run;

pub use check::{CheckArgs, TargetArg, check, locate, summary};
pub use error::{Invalid, ManifestError, Problem, ProblemKind};
pub use init::{InitArgs, init};
pub use load::{SCHEMA_VERSION, SUPPORTED_VERSIONS};
pub use metric::{CmpOp, Constraint, Direction, METRICS, Metric, Objective};
pub use types::{
    Accuracy, Agent, AgentKind, Arrival, Benchmark, Device, Hardware, Isa, MODEL_PLACEHOLDER,
    Manifest, Model, ModelFormat, ModelSource, Peer, Policy, Search, Target, URL_PLACEHOLDER,
    Workload, defaults,
};
