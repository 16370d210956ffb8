//! `cargo vibeserve bench`: the serving benchmark, the project's one measuring instrument.
//!
//! The core takes plain values ([`BenchConfig`]) and returns a [`BenchResult`]; the command
//! front end ([`command`]) turns flags or a target's Serve.toml into those values, starts
//! the servers it compares, and runs them alternately.

pub mod client;
pub mod command;
pub mod compare;
pub mod engine;
pub mod metrics;
pub mod peer;
pub mod report;
pub mod run;
pub mod sse;
pub mod target;
pub mod workload;

pub use command::BenchArgs;
pub use compare::{Comparison, Contender};
pub use metrics::{Metrics, Slo, SloMetric, Stats};
pub use report::BenchResult;
pub use run::{Arrival, BenchConfig, Stop, run, run_blocking};
pub use workload::{LenDist, SyntheticSpec, Workload};

use thiserror::Error;

/// Why a benchmark could not run. (Failed requests are not errors: they are results.)
#[derive(Debug, Error, miette::Diagnostic)]
pub enum BenchError {
    /// The workload could not be loaded.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Workload(#[from] workload::WorkloadError),
    /// A server the harness starts could not be found or started.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Peer(#[from] peer::PeerError),
    /// The target could not be loaded or its model fetched.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Target(#[from] crate::prepare::PrepareError),
    /// The flags do not describe a runnable benchmark.
    #[error("{0}")]
    Usage(String),
    /// The result file or the async runtime failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
