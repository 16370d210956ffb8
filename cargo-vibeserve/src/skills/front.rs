//! A skill's front matter: the TOML between the `+++` lines at the top of its SKILL.md.
//! These doc comments are the reference for every key.

use serde::{Deserialize, Serialize};

/// The front matter of one SKILL.md.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontMatter {
    /// The skill's name: its folder's name (`prefill-chunk`).
    pub name: String,
    /// Its layer: its parent folder's name.
    pub layer: Layer,
    /// One line: what the skill changes and why it can help.
    pub summary: String,
    /// The backlog's prior: higher is tried earlier (0–100). Default 50.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// The stages of a request this skill speeds up; the planner moves it forward when the
    /// Evaluator reports one of them dominant. Default none.
    #[serde(default)]
    pub addresses: Vec<Stage>,
    /// When the skill applies; every condition given must hold. Default: always.
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// The machine-applicable changes, each with the values worth trying. A skill with no
    /// moves is knowledge for an LLM Implementer only.
    #[serde(default)]
    pub moves: Vec<MoveSpec>,
}

fn default_priority() -> u32 {
    50
}

/// The layers of the skills library: the folders under `skills/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The model's own structure: weights, attention shape, vocabulary.
    Model,
    /// The engine's scheduling and memory: batching, chunking, the KV cache, the queue.
    Serving,
    /// The machine: kernels, instruction sets, threads.
    Hardware,
    /// The traffic: arrival pattern, prompt and completion lengths.
    Workload,
}

impl Layer {
    /// The layer's folder name.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Model => "model",
            Layer::Serving => "serving",
            Layer::Hardware => "hardware",
            Layer::Workload => "workload",
        }
    }
}

/// A stage of serving a request, as the Evaluator's hints name the dominant one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Computing the prompt's keys and values (compute-bound).
    Prefill,
    /// Generating one token per step (memory-bandwidth-bound at small batch).
    Decode,
    /// Waiting for admission: batch slots or KV blocks are full.
    Queueing,
}

impl Stage {
    /// The stage's name as hints and front matter spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prefill => "prefill",
            Stage::Decode => "decode",
            Stage::Queueing => "queueing",
        }
    }
}

/// `applies_to`: conditions on the target. A condition left out always holds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliesTo {
    /// Device kinds: `"cpu"`, `"cuda"`.
    pub device: Option<Vec<String>>,
    /// Model architectures, as GGUF names them: `"llama"`.
    pub arch: Option<Vec<String>>,
    /// CPU instruction sets the plan is made for: `"avx512vnni"`, `"avx2"`, `"portable"`.
    pub isa: Option<Vec<String>>,
    /// The model's weight formats, as ggml names them: `"Q4_0"`, `"Q4_1"`, `"Q8_0"`, `"F16"`.
    pub quant: Option<Vec<String>>,
    /// How requests arrive: `"concurrency"` (a closed loop) or `"rate"` (Poisson, open loop).
    pub arrival: Option<Vec<String>>,
    /// Least requests the workload keeps in flight (closed-loop concurrency).
    pub min_concurrency: Option<u32>,
    /// Most requests the workload keeps in flight.
    pub max_concurrency: Option<u32>,
    /// Least compute threads the target gives the server.
    pub min_threads: Option<u32>,
    /// Least GPUs the target gives the server (`[hardware] gpus`).
    pub min_gpus: Option<u32>,
}

/// One move as written: a field with `values` or `factors`, or a `part`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveSpec {
    /// The Plan field the move sets, by dotted path: `"serving.prefill_chunk"`.
    pub field: Option<String>,
    /// With `field`: the values worth trying, each a valid value of the field.
    pub values: Option<Vec<toml::Value>>,
    /// With `field` (an integer): multiply the current value by each of these.
    pub factors: Option<Vec<f64>>,
    /// With `field` and `values`: an integer field scaled by old/new so that the product of
    /// the two stays the same (block size × blocks = the KV memory budget).
    pub conserve: Option<String>,
    /// Instead of `field`: a template part to enable (see `templates/server/template.toml`).
    pub part: Option<String>,
}
