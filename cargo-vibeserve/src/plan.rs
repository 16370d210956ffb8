//! The Plan: one design point of a generated server.
//!
//! A `Plan` resolves every number a generated crate needs — model shape, device,
//! kernel choice, batch and KV-cache sizes, enabled template parts — from the
//! manifest and the model's metadata (round 0), and from skill moves (later rounds).
//! It is written to the crate as `Plan.toml` and baked into `src/plan.rs` as
//! constants, so the compiler specialises the hot loops. Any arithmetic on plan
//! values happens here, never in the templates.

mod cuda;
/// The tensor-parallel split rule, shared with the generated server: the template's own
/// `shard.rs`, so the tool and the server cannot disagree on which splits are valid.
#[path = "../../templates/server/src/shard.rs"]
pub mod shard;

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{Hardware, Isa};
use crate::model::GgufMetadata;

pub use cuda::{
    AllReduce, CUDA_PART, CudaPlan, DEFAULT_CUDA_KV_MEMORY_MIB, DEFAULT_CUDA_SERVING, DUMMY_PART,
    PLAN_CUDA_RS, RopeScalingPlan, default_cuda,
};

/// Version of the `Plan.toml` schema this tool writes and reads.
pub const PLAN_VERSION: u32 = 1;

/// The template part every server has.
pub const CORE_PART: &str = "core";

/// One design point of a generated server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Schema version of this file (see [`PLAN_VERSION`]).
    pub version: u32,
    /// Name of the target (`[target] name` in Serve.toml).
    pub target: String,
    /// Template parts copied into the crate (see `templates/server/template.toml`).
    pub parts: BTreeSet<String>,
    /// The model's shape, read from its metadata; fixed for a target.
    pub model: ModelPlan,
    /// Where and how the server computes.
    pub device: DevicePlan,
    /// Tiling and scheduling of the CPU kernels.
    pub kernels: KernelsPlan,
    /// Continuous-batching limits.
    pub serving: ServingPlan,
    /// The paged KV cache.
    pub kv_cache: KvCachePlan,
    /// The HTTP front end.
    pub http: HttpPlan,
    /// The CUDA kernels; only CUDA targets have them (absent from CPU plans' Plan.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaPlan>,
}

/// The model's shape, as constants for the generated crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPlan {
    /// Architecture, as GGUF's `general.architecture` names it (`llama`).
    pub arch: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Size of one attention head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
    /// RoPE frequency base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Whether the LM head reuses the token embedding.
    pub tied_embeddings: bool,
    /// How RoPE is stretched beyond the trained context; absent when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScalingPlan>,
}

/// Where and how the server computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePlan {
    /// `cpu` or `cuda`.
    pub kind: DeviceKind,
    /// Worker threads of the compute pool.
    pub threads: usize,
    /// CPU kernel implementation of the matrix products.
    pub kernel_variant: KernelVariant,
}

/// The device family a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// x86-64 or other CPUs.
    Cpu,
    /// NVIDIA GPUs through CUDA.
    Cuda,
}

/// CPU kernel implementation of the quantized matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelVariant {
    /// The best the running CPU supports, chosen at start-up.
    Auto,
    /// AVX-512 with VNNI int8 dot products.
    Avx512vnni,
    /// AVX2 with FMA.
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl KernelVariant {
    /// The template's Rust spelling of this variant.
    fn rust_path(self) -> &'static str {
        match self {
            KernelVariant::Auto => "KernelVariant::Auto",
            KernelVariant::Avx512vnni => "KernelVariant::Avx512Vnni",
            KernelVariant::Avx2 => "KernelVariant::Avx2",
            KernelVariant::Portable => "KernelVariant::Portable",
        }
    }
}

/// Tiling and scheduling of the CPU kernels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelsPlan {
    /// Activation rows dotted against each unpacked weight block (the register tile).
    pub act_tile: usize,
    /// Weight rows sharing each loaded activation block in the AVX2 `Q4_1`/`Q8_0`
    /// products (the other side of the register tile; 1: one row at a time).
    #[serde(default = "default_row_tile")]
    pub row_tile: usize,
    /// Activation rows per pass of the AVX2 `Q4_1` product over groups of 8 weight
    /// rows interleaved per register (8 rows' block sums per chain, no horizontal
    /// sums, its own float summation order); 0 keeps the row-tile kernels, which sum
    /// in llama.cpp's order. Absent in plans written before it existed (and left out
    /// when 0, so those plans keep their digests): 0. Round 0 takes 16.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group_act_tile: usize,
    /// Output rows a thread claims at a time in a matrix product.
    pub matmul_row_chunk: usize,
    /// Weight rows ahead of the current one that the kernels prefetch (0: none).
    pub prefetch_rows: usize,
    /// Spin-loop rounds a pool worker waits for the next job before parking.
    pub pool_spin: usize,
}

/// Continuous-batching limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingPlan {
    /// Most sequences decoded together in one batched step.
    pub max_batch_seqs: usize,
    /// Most tokens (prefill chunks plus decodes) processed in one step.
    pub max_batch_tokens: usize,
    /// Prefill is split into chunks of at most this many tokens.
    pub prefill_chunk: usize,
    /// Requests that may wait for admission before new ones get 429.
    pub max_queue: usize,
}

/// The paged KV cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCachePlan {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool: the memory budget.
    pub blocks: usize,
    /// Element type of cached keys and values.
    pub dtype: KvDtype,
    /// Reuse the blocks of a prompt's cached prefix (full blocks published by earlier
    /// sequences, kept while idle until evicted) instead of computing them again.
    /// Absent in plans written before it existed: on, round 0's choice.
    #[serde(default = "default_prefix_cache")]
    pub prefix_cache: bool,
}

/// Round 0 caches prefixes: chat prompts share their template's system prompt, and a
/// repeated prompt (a retry, a benchmark's next pass) costs only its last block.
pub const DEFAULT_PREFIX_CACHE: bool = true;

/// Plans written before `row_tile` existed used the two-row tile.
fn default_row_tile() -> usize {
    DEFAULT_KERNELS.row_tile
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_prefix_cache() -> bool {
    DEFAULT_PREFIX_CACHE
}

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    /// Half precision: half the bytes attention reads.
    F16,
    /// Single precision: no conversions.
    F32,
}

impl KvDtype {
    /// Bytes of one element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }

    /// The template's Rust spelling of this type.
    fn rust_type(self) -> &'static str {
        match self {
            KvDtype::F16 => "half::f16",
            KvDtype::F32 => "f32",
        }
    }
}

/// The HTTP front end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPlan {
    /// Async worker threads serving HTTP (the model computes on its own pool).
    pub threads: usize,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// `Retry-After` seconds sent with 429 and 503.
    pub retry_after_secs: u64,
    /// Seconds between SSE keep-alive comments.
    pub sse_keep_alive_secs: u64,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Milliseconds the idle engine sleeps between checks for shutdown.
    pub engine_idle_tick_ms: u64,
    /// Milliseconds one engine step may run before the watchdog declares the engine
    /// hung (its requests, later ones and `/health` then get 503). A safety limit, not a
    /// performance choice: at its default it is left out of Plan.toml, so plans written
    /// before it existed read the same and keep their digests.
    #[serde(
        default = "default_step_deadline_ms",
        skip_serializing_if = "is_default_step_deadline"
    )]
    pub step_deadline_ms: u64,
}

/// Round 0's step deadline: far above any real step (a 512-token prefill chunk of an
/// 8B model on 2 CPU cores takes about 30 s; a GPU step, milliseconds), so only a hang
/// trips it, and short enough that a client is told within a minute.
pub const DEFAULT_STEP_DEADLINE_MS: u64 = 60_000;

fn default_step_deadline_ms() -> u64 {
    DEFAULT_STEP_DEADLINE_MS
}

fn is_default_step_deadline(ms: &u64) -> bool {
    *ms == DEFAULT_STEP_DEADLINE_MS
}

/// Round 0's continuous-batching limits: what a good generic engine ships.
pub const DEFAULT_SERVING: ServingPlan = ServingPlan {
    max_batch_seqs: 16,
    max_batch_tokens: 512,
    prefill_chunk: 256,
    max_queue: 256,
};

/// Round 0's kernel tiling: measured on a 2-core AVX-512 machine with SmolLM2-135M.
pub const DEFAULT_KERNELS: KernelsPlan = KernelsPlan {
    act_tile: 4,
    row_tile: 2,
    group_act_tile: 16,
    matmul_row_chunk: 32,
    prefetch_rows: 4,
    pool_spin: 20_000,
};

/// Round 0's HTTP settings.
pub const DEFAULT_HTTP: HttpPlan = HttpPlan {
    threads: 2,
    max_body_bytes: 4 * 1024 * 1024,
    retry_after_secs: 1,
    sse_keep_alive_secs: 5,
    shutdown_grace_secs: 30,
    engine_idle_tick_ms: 100,
    step_deadline_ms: DEFAULT_STEP_DEADLINE_MS,
};

/// Round 0's KV-cache element type.
pub const DEFAULT_KV_DTYPE: KvDtype = KvDtype::F16;

/// Round 0's tokens per KV-cache block (vLLM's default).
pub const DEFAULT_KV_BLOCK_SIZE: usize = 16;

/// Round 0's KV-cache memory budget, in MiB.
pub const DEFAULT_KV_MEMORY_MIB: usize = 1024;

impl ModelPlan {
    /// Bytes of keys and values one token occupies across all layers.
    pub fn kv_bytes_per_token(&self, dtype: KvDtype) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * dtype.bytes()
    }
}

/// RMSNorm epsilon when the GGUF doesn't say (llama.cpp's default for Llama).
const DEFAULT_RMS_NORM_EPS: f32 = 1e-5;

impl ModelPlan {
    /// The model's shape from its GGUF metadata.
    pub fn from_gguf(meta: &GgufMetadata) -> Result<ModelPlan, PlanError> {
        if meta.architecture != "llama" {
            return Err(PlanError::UnsupportedArch(meta.architecture.clone()));
        }
        let n = |v: u64| v as usize;
        Ok(ModelPlan {
            arch: meta.architecture.clone(),
            n_layers: n(meta.block_count),
            n_embd: n(meta.embedding_length),
            n_ff: n(meta.feed_forward_length),
            n_heads: n(meta.head_count),
            n_kv_heads: n(meta.head_count_kv),
            head_dim: n(meta.head_dim),
            vocab_size: n(meta.vocab_size),
            context_length: n(meta.context_length),
            rope_theta: meta.rope_freq_base,
            rms_norm_eps: meta.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS),
            tied_embeddings: !meta.tensors.iter().any(|t| t.name == "output.weight"),
            rope_scaling: None,
        })
    }
}

impl KvCachePlan {
    /// The blocks of `block_size` tokens that fit in `memory_mib` for this model.
    pub fn for_budget(
        model: &ModelPlan,
        block_size: usize,
        dtype: KvDtype,
        memory_mib: usize,
    ) -> KvCachePlan {
        let block_bytes = model.kv_bytes_per_token(dtype) * block_size;
        KvCachePlan {
            block_size,
            blocks: (memory_mib << 20) / block_bytes.max(1),
            dtype,
            prefix_cache: DEFAULT_PREFIX_CACHE,
        }
    }
}

impl Plan {
    /// Round 0: the model's shape, the target's device, and generic defaults for the rest.
    pub fn round0(target: &str, model: ModelPlan, device: DevicePlan) -> Plan {
        let kv_cache = KvCachePlan::for_budget(
            &model,
            DEFAULT_KV_BLOCK_SIZE,
            DEFAULT_KV_DTYPE,
            DEFAULT_KV_MEMORY_MIB,
        );
        let parts = BTreeSet::from([CORE_PART.to_string()]);
        Plan {
            version: PLAN_VERSION,
            target: target.to_string(),
            parts,
            model,
            device,
            kernels: DEFAULT_KERNELS,
            serving: DEFAULT_SERVING,
            kv_cache,
            http: DEFAULT_HTTP,
            cuda: None,
        }
    }
}

impl DevicePlan {
    /// The device the manifest's `[hardware]` names, with round 0's kernel choice.
    ///
    /// `isa = "auto"` keeps the kernel choice to start-up (what a generic engine ships);
    /// pinning one is a plan move the loop can try.
    pub fn from_hardware(hardware: &Hardware) -> DevicePlan {
        match hardware {
            Hardware::Cpu { threads, isa } => DevicePlan {
                kind: DeviceKind::Cpu,
                threads: *threads as usize,
                kernel_variant: match isa {
                    Isa::Auto => KernelVariant::Auto,
                    Isa::Avx512vnni => KernelVariant::Avx512vnni,
                    Isa::Avx2 => KernelVariant::Avx2,
                    Isa::Portable => KernelVariant::Portable,
                },
            },
            Hardware::Cuda { .. } => DevicePlan {
                kind: DeviceKind::Cuda,
                threads: 1,
                kernel_variant: KernelVariant::Auto,
            },
        }
    }
}

/// A constant of the generated `src/plan.rs`: its name and Rust value.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanConst {
    /// The constant's name in the template's `src/plan.rs`.
    pub name: &'static str,
    /// The value as Rust source.
    pub value: String,
}

/// Formats an integer as a Rust literal, digits grouped by thousands from 10 000 up
/// (as rustfmt-formatted hand-written code writes them).
pub(crate) fn int_literal(x: u64) -> String {
    let digits = x.to_string();
    if digits.len() <= 4 {
        return digits;
    }
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(d);
    }
    out
}

/// Formats an `f32` as a Rust literal that always has a decimal point.
fn f32_literal(x: f32) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

impl Plan {
    /// The constants this plan gives the generated crate's `src/plan.rs`, in file order.
    pub fn constants(&self) -> Vec<PlanConst> {
        let m = &self.model;
        let c = |name, value: String| PlanConst { name, value };
        vec![
            c("TARGET", format!("{:?}", self.target)),
            c("ARCH", format!("{:?}", m.arch)),
            c("N_LAYERS", int_literal(m.n_layers as u64)),
            c("N_EMBD", int_literal(m.n_embd as u64)),
            c("N_FF", int_literal(m.n_ff as u64)),
            c("N_HEADS", int_literal(m.n_heads as u64)),
            c("N_KV_HEADS", int_literal(m.n_kv_heads as u64)),
            c("HEAD_DIM", int_literal(m.head_dim as u64)),
            c("VOCAB_SIZE", int_literal(m.vocab_size as u64)),
            c("CONTEXT_LENGTH", int_literal(m.context_length as u64)),
            c("ROPE_THETA", f32_literal(m.rope_theta)),
            c("RMS_NORM_EPS", f32_literal(m.rms_norm_eps)),
            c("TIED_EMBEDDINGS", m.tied_embeddings.to_string()),
            c("THREADS", int_literal(self.device.threads as u64)),
            c(
                "KERNEL_VARIANT",
                self.device.kernel_variant.rust_path().to_string(),
            ),
            c("ACT_TILE", int_literal(self.kernels.act_tile as u64)),
            c("ROW_TILE", int_literal(self.kernels.row_tile as u64)),
            c(
                "GROUP_ACT_TILE",
                int_literal(self.kernels.group_act_tile as u64),
            ),
            c(
                "MATMUL_ROW_CHUNK",
                int_literal(self.kernels.matmul_row_chunk as u64),
            ),
            c(
                "PREFETCH_ROWS",
                int_literal(self.kernels.prefetch_rows as u64),
            ),
            c("POOL_SPIN", int_literal(self.kernels.pool_spin as u64)),
            c("KvElem", self.kv_cache.dtype.rust_type().to_string()),
            c(
                "MAX_BATCH_SEQS",
                int_literal(self.serving.max_batch_seqs as u64),
            ),
            c(
                "MAX_BATCH_TOKENS",
                int_literal(self.serving.max_batch_tokens as u64),
            ),
            c(
                "PREFILL_CHUNK",
                int_literal(self.serving.prefill_chunk as u64),
            ),
            c("MAX_QUEUE", int_literal(self.serving.max_queue as u64)),
            c(
                "KV_BLOCK_SIZE",
                int_literal(self.kv_cache.block_size as u64),
            ),
            c("KV_BLOCKS", int_literal(self.kv_cache.blocks as u64)),
            c("PREFIX_CACHE", self.kv_cache.prefix_cache.to_string()),
            c("HTTP_THREADS", int_literal(self.http.threads as u64)),
            c(
                "MAX_BODY_BYTES",
                int_literal(self.http.max_body_bytes as u64),
            ),
            c("RETRY_AFTER_SECS", int_literal(self.http.retry_after_secs)),
            c(
                "SSE_KEEP_ALIVE_SECS",
                int_literal(self.http.sse_keep_alive_secs),
            ),
            c(
                "SHUTDOWN_GRACE_SECS",
                int_literal(self.http.shutdown_grace_secs),
            ),
            c(
                "ENGINE_IDLE_TICK_MS",
                int_literal(self.http.engine_idle_tick_ms),
            ),
            c("STEP_DEADLINE_MS", int_literal(self.http.step_deadline_ms)),
        ]
    }

    /// `Plan.toml`'s text. Deterministic: fields in declaration order, parts sorted.
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of numbers, strings and sets cannot fail.
        toml::to_string(self).expect("a Plan always serialises to TOML")
    }

    /// Parses `Plan.toml` text.
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        let plan: Plan = toml::from_str(text).map_err(|e| PlanError::Parse(Box::new(e)))?;
        if plan.version != PLAN_VERSION {
            return Err(PlanError::Version {
                found: plan.version,
            });
        }
        Ok(plan)
    }

    /// Short digest of the plan (first 16 hex digits of the sha256 of `Plan.toml`).
    pub fn digest(&self) -> PlanDigest {
        let full = hex::encode(Sha256::digest(self.to_toml().as_bytes()));
        PlanDigest(full[..16].to_string())
    }
}

/// Short digest identifying a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDigest(pub String);

impl fmt::Display for PlanDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What went wrong reading a plan.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanError {
    /// `Plan.toml` is not valid.
    #[error("Plan.toml is not a valid plan: {0}")]
    Parse(Box<toml::de::Error>),
    /// The model's architecture has no template.
    #[error(
        "the model's architecture is `{0}`; cargo-vibeserve generates servers for `llama` models"
    )]
    #[diagnostic(help("use a Llama-architecture model (Llama, SmolLM, Mistral-style GGUFs)"))]
    UnsupportedArch(String),
    /// The config.json scales RoPE in a way the CUDA kernels do not implement.
    #[error(
        "the model's config.json scales RoPE with `{0}`; cargo-vibeserve implements `llama3` scaling"
    )]
    #[diagnostic(help("use a Llama 3 config.json, or one without `rope_scaling`"))]
    UnsupportedRopeScaling(String),
    /// The model cannot be split across the plan's tensor-parallel ranks.
    #[error("the model cannot be split across {degree} GPUs: {source}")]
    #[diagnostic(help(
        "choose a tensor-parallel degree that divides the heads and the FFN width (KV heads split or replicated)"
    ))]
    TensorParallel {
        /// `cuda.tensor_parallel`.
        degree: usize,
        /// Which dimension does not split.
        source: shard::ShardError,
    },
    /// `Plan.toml` was written by an incompatible version of the tool.
    #[error(
        "Plan.toml has schema version {found}; this cargo-vibeserve reads version {PLAN_VERSION}"
    )]
    #[diagnostic(help("regenerate the crate with `cargo vibeserve generate`"))]
    Version {
        /// The version found in the file.
        found: u32,
    },
}
