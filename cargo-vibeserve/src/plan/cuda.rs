//! The CUDA half of a plan: the fields only CUDA targets have, their round-0 values, the
//! model shape read from a Hugging Face config.json, and the constants of the `cuda`
//! part's `src/plan_cuda.rs`. CPU plans carry none of it, so their crates are unchanged.

use serde::{Deserialize, Serialize};

use super::shard::check_split;
use super::{KvCachePlan, ModelPlan, Plan, PlanConst, PlanError, ServingPlan, int_literal};
use crate::model::HfConfig;

/// The template part of CUDA targets.
pub const CUDA_PART: &str = "cuda";

/// The template part holding the `materialize` binary that writes a dummy model's weights.
pub const DUMMY_PART: &str = "dummy";

/// Where the CUDA constants go in a crate with the `cuda` part.
pub const PLAN_CUDA_RS: &str = "src/plan_cuda.rs";

/// How the device kernels run: what the `cuda` part specialises on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaPlan {
    /// The GPU architecture nvcc compiles for (`hardware.arch`), e.g. `sm_90a`.
    pub arch: String,
    /// Replay decode steps as CUDA graphs (one launch per step instead of ~10 per layer).
    pub graphs: bool,
    /// Decode batch sizes captured as CUDA graphs, ascending: a decode step of `b`
    /// sequences replays the graph of the smallest size ≥ `b` (padding the batch);
    /// above the largest it launches kernels one by one.
    pub graph_batch_sizes: Vec<usize>,
    /// Most parts the context of one query token is split into by the attention kernel
    /// (flash-decoding), so that a small decode batch still fills the GPU's
    /// multiprocessors; a step uses fewer when its tokens alone fill `attn_target_blocks`.
    pub attn_splits: usize,
    /// Warps per attention block (they share the block's keys, row groups apart).
    pub attn_warps: usize,
    /// Attention blocks a step aims for: a step of `n` tokens over `k` KV heads splits
    /// the context into `ceil(attn_target_blocks / (n * k))` parts (at most
    /// `attn_splits`); at 1 part the kernel writes its output directly, with no partial
    /// sums and no merge kernel. Absent in older plans: 528 (four per H100 SM).
    #[serde(default = "default_attn_target_blocks_before")]
    pub attn_target_blocks: usize,
    /// Fewest positions one part of a split context takes (parts past the context stay
    /// empty), so short contexts do not pay a block's fixed costs for a few keys each;
    /// a context of at most this many positions takes one part, which writes the output
    /// itself (the merge kernel then has nothing to do for that token).
    /// Absent in older plans: 32.
    #[serde(default = "default_attn_min_split_keys")]
    pub attn_min_split_keys: usize,
    /// K and V rows each lane of the attention kernel has loading at once (2, 4 or 8):
    /// more hides memory latency, fewer keeps registers (and so resident warps). Absent
    /// in older plans: 4.
    #[serde(default)]
    pub attn_keys_in_flight: KeysInFlight,
    /// Iterations of K/V rows an attention lane has loading at once: 1 loads each
    /// iteration's rows into registers as it starts (a memory round trip an iteration,
    /// with nothing loading during the softmax math); 2 or more copy the next ones into a
    /// ring in shared memory (`cp.async`, stages × keys in flight × 32 bytes a lane)
    /// while the current one computes. Absent in older plans: 1.
    #[serde(default = "default_attn_stages_before")]
    pub attn_stages: usize,
    /// Launch the hand-written kernels other than the GEMV (attention and its merge,
    /// RMSNorm, RoPE, SwiGLU, embedding, token selection, the one-shot all-reduce) with programmatic dependent
    /// launch (Hopper): their blocks start while the kernel before them finishes and
    /// wait for its output there (attention first reads the step's inputs and prefetches
    /// its first K/V rows into L2), hiding a launch gap per kernel. Absent in older
    /// plans: true.
    #[serde(default = "default_early_launch")]
    pub early_launch: bool,
    /// The hand-written kernels other than the GEMV (which has
    /// `gemv_early_trigger_max_tokens`) let the next kernel on the stream launch as soon
    /// as all their blocks have started (`griddepcontrol.launch_dependents`), instead of
    /// when they end: the early-launched kernel's blocks take the multiprocessor slots
    /// this one's tail frees and do their early work (a GEMV streams its first weights)
    /// meanwhile. Matters only with early launch. Absent in older plans: true.
    #[serde(default = "default_early_trigger")]
    pub early_trigger: bool,
    /// Threads per RMSNorm block (one block per row).
    pub norm_threads: usize,
    /// Threads per block of the elementwise kernels (embedding, RoPE, SwiGLU).
    pub elemwise_threads: usize,
    /// Threads per token-selection block (one block scans one part of a vocabulary row).
    pub sample_threads: usize,
    /// Blocks that scan one logits row in token selection, each a slice of the
    /// vocabulary (a 128k vocabulary read by one block is limited to one
    /// multiprocessor's bandwidth); a second kernel picks the best of the parts. Absent
    /// in older plans: 64.
    #[serde(default = "default_sample_parts")]
    pub sample_parts: usize,
    /// Logits each token-selection thread has loading at once (a scan of 128k logits
    /// one load at a time is a chain of dependent loads). Absent in older plans: 8.
    #[serde(default = "default_sample_loads")]
    pub sample_loads: usize,
    /// cuBLAS workspace in bytes, set once so that graph capture never allocates.
    pub cublas_workspace_bytes: usize,
    /// GPUs one copy of the model is split across (Megatron-style tensor parallelism:
    /// heads, FFN columns and vocabulary per rank); round 0 uses every GPU of
    /// `[hardware] gpus`. Absent in plans written before it existed: 1.
    #[serde(default = "default_tensor_parallel")]
    pub tensor_parallel: usize,
    /// How the ranks sum their partial outputs after the o and down projections.
    #[serde(default)]
    pub all_reduce: AllReduce,
    /// Overlap each all-reduce with the next GEMM (split the batch, communicate one half
    /// while the other computes) instead of running them one after the other.
    #[serde(default)]
    pub overlap_comm: bool,
    /// Largest all-reduce (bytes of f32) the one-shot kernel takes; larger ones go to
    /// NCCL. It also sizes the exchange buffers (two slots of it on every rank).
    #[serde(default = "default_one_shot_max_bytes")]
    pub one_shot_max_bytes: usize,
    /// Most thread blocks (and flags per peer) of one one-shot all-reduce.
    #[serde(default = "default_one_shot_max_blocks")]
    pub one_shot_max_blocks: usize,
    /// How long a one-shot all-reduce waits for a peer's signal before it flags an
    /// error (below the communicator's deadline, so a step fails instead of hanging).
    #[serde(default = "default_one_shot_timeout_ms")]
    pub one_shot_timeout_ms: usize,
    /// Microseconds a host thread of a tensor-parallel server polls without sleeping
    /// while it waits for a rank's step to finish on the GPU or for another thread's
    /// message (leader and ranks); after that it sleeps between polls. A sleeping thread
    /// wakes tens of microseconds late, a cost every decode step pays twice or more.
    /// Absent in older plans: 0 (sleep at once, as before).
    #[serde(default)]
    pub host_spin_us: usize,
    /// Products of at most this many tokens (decode at small batch) run the hand-written
    /// bandwidth-bound GEMV kernel instead of cuBLAS; 0: cuBLAS always (at most 8).
    #[serde(default = "default_gemv_max_tokens_before")]
    pub gemv_max_tokens: usize,
    /// GEMV products of at least this many tokens run on the tensor cores (`mma.sync`,
    /// 16-row tiles a warp), fewer on the CUDA cores (`gemv_rows_per_warp` rows a warp).
    /// Absent in older plans: 9 (the CUDA cores always, as before the tensor-core kernel).
    #[serde(default = "default_gemv_mma_min_tokens_before")]
    pub gemv_mma_min_tokens: usize,
    /// Warps per block of the tensor-core GEMV (at most 32).
    #[serde(default = "default_gemv_mma_warps")]
    pub gemv_mma_warps: usize,
    /// Most warps of a tensor-core GEMV block that share one 16-row tile, each taking a
    /// slice of the inputs (as `gemv_k_split_max` on the CUDA cores: a tile is 8 times a
    /// CUDA-core warp's rows, so a product has 8 times fewer tiles to spread).
    #[serde(default = "default_gemv_mma_k_split_max")]
    pub gemv_mma_k_split_max: usize,
    /// Output rows each warp of the GEMV kernel computes (1, 2 or 4).
    #[serde(default = "default_gemv_rows_per_warp")]
    pub gemv_rows_per_warp: usize,
    /// Warps per block of the GEMV kernel.
    #[serde(default = "default_gemv_warps")]
    pub gemv_warps: usize,
    /// 16-byte chunks of each weight row a GEMV lane has loading at once: more hides
    /// memory latency, fewer keeps registers (and so resident warps). Absent in older
    /// plans: 4.
    #[serde(default = "default_gemv_unroll")]
    pub gemv_unroll: usize,
    /// Most warps of a GEMV block that share one row group, each taking a slice of the
    /// inputs (a product of few rows, such as o or down, otherwise has too few warps to
    /// keep HBM busy); their partial sums are added in a fixed order. 1: no split.
    /// Absent in older plans: 4.
    #[serde(default = "default_gemv_k_split_max")]
    pub gemv_k_split_max: usize,
    /// Warps per multiprocessor a GEMV product aims for: one with fewer splits its
    /// inputs (up to `gemv_k_split_max` ways) until it has as many. Absent in older
    /// plans: 24.
    #[serde(default = "default_gemv_warps_per_sm_before")]
    pub gemv_warps_per_sm: usize,
    /// Launch the GEMV with programmatic dependent launch (Hopper): its blocks start and
    /// stream weights while the previous kernel finishes. Absent in older plans: true.
    #[serde(default = "default_early_launch")]
    pub gemv_early_launch: bool,
    /// GEMV products of at most this many tokens let the next kernel launch as soon as
    /// all their blocks have started, as `early_trigger` does for the other kernels; 0:
    /// never. Wider products do not by default: on an H100 the next kernel's waiting
    /// blocks cost batch-8 decode 3-5% while batch 1 gains. Absent in older plans: 1.
    #[serde(default = "default_gemv_early_trigger_max_tokens")]
    pub gemv_early_trigger_max_tokens: usize,
    /// Products that run the GEMV (qkv, gate_up, the LM head) compute the RMSNorm before
    /// them as they read the residual: no norm kernel and no bf16 copy of the normalised
    /// rows. Absent in older plans: true.
    #[serde(default = "default_gemv_fuse")]
    pub gemv_fuse_norm: bool,
    /// A gate_up product that runs the GEMV writes silu(gate) · up in its epilogue: no
    /// SwiGLU kernel and no gate_up buffer round trip. Absent in older plans: true.
    #[serde(default = "default_gemv_fuse")]
    pub gemv_fuse_swiglu: bool,
    /// A qkv product that runs the GEMV applies RoPE and writes K and V into the cache in
    /// its epilogue: no rope_kv kernel. The loader interleaves each q and k head's rows so
    /// a rotation pair is two adjacent rows; a warp holds whole pairs only at an even
    /// `gemv_rows_per_warp`, so at 1 row a warp the server runs the rope_kv kernel instead
    /// (no error: the fusion is a no-op there). Absent in older plans: true.
    #[serde(default = "default_gemv_fuse")]
    pub gemv_fuse_rope: bool,
}

/// Round 0's one-shot cut-over: 512 KiB is a 32-token f32 residual of a 4096-wide model
/// (16 tokens of an 8192-wide one), where NCCL's ring starts to win.
fn default_one_shot_max_bytes() -> usize {
    512 * 1024
}

/// Round 0's one-shot blocks: enough SMs to pull 512 KiB over NVLink, few enough to
/// signal cheaply.
fn default_one_shot_max_blocks() -> usize {
    32
}

/// Round 0's one-shot wait: 10 s, a third of the communicator's 30 s deadline.
fn default_one_shot_timeout_ms() -> usize {
    10_000
}

/// Round 0's host spin: 10 ms, longer than a decode step of an 8B model at batch 32, so
/// a busy server's threads never sleep between steps; an idle one sleeps after 10 ms.
fn default_host_spin_us() -> usize {
    10_000
}

/// What a GEMV (its weights) or attention (the step's inputs, older K/V rows) reads
/// first does not depend on the kernel before it, so starting early hides the launch
/// gap between kernels (many small ones per decode step).
fn default_early_launch() -> bool {
    true
}

/// The kernels other than the GEMV let the next one launch at their start: on an H100
/// that gained at batch 1 and cost nothing at batch 8 (where the GEMV's own trigger
/// cost 3-5%, see `default_gemv_early_trigger_max_tokens`).
fn default_early_trigger() -> bool {
    true
}

/// Batch-1 products let the next kernel launch at their start: on an H100 that took
/// batch-1 decode from 850 to 878 tok/s (1B shape; 175 to 178 for 8B) on top of the
/// other kernels' early trigger, while at 8 tokens a step it cost 3-5%.
fn default_gemv_early_trigger_max_tokens() -> usize {
    1
}

/// A batch-1 decode layer is launch-bound as much as bandwidth-bound (~10 kernels of a
/// few microseconds each): each kernel the GEMV takes in is one launch gap less. On an
/// H100 both fusions took batch-1 decode from 693 to 729 tok/s (Llama-3.2-1B shape) and
/// from 161.5 to 165.3 (8B shape), and moved the logits closer to transformers' f32.
fn default_gemv_fuse() -> bool {
    true
}

/// Round 0's GEMV: decode steps of 1 and 2 sequences (CUDA cores). On an H100 cuBLAS
/// beat the tensor-core GEMV at 4 and 8 sequences by 3-14% (1B 2,826 / 5,534 against
/// 2,684 / 5,377 tok/s, 8B 621 / 1,222 against 572 / 1,071).
fn default_gemv_max_tokens() -> usize {
    2
}

/// Plans written before the field ran every decode step of up to 8 sequences on the GEMV.
fn default_gemv_max_tokens_before() -> usize {
    8
}

/// GEMV steps of 3 tokens and more (4 and 8 in the decode graphs, where
/// `gemv_max_tokens` lets the GEMV take them) run on the tensor cores: on the CUDA cores
/// every weight meets every token in a multiply-add, and on an H100 the tensor cores
/// decoded 20-25% faster at batch 4 and 80-95% at batch 8 (1B and 8B shapes); at batch 2
/// the two tie within 1.5%, at batch 1 the CUDA cores won by 15%.
fn default_gemv_mma_min_tokens() -> usize {
    3
}

/// Sixteen warps a block, so that a tile's inputs can split 16 ways: the 1B shape's
/// o_proj has only 128 tiles for 132 multiprocessors.
fn default_gemv_mma_warps() -> usize {
    16
}

/// Up to a whole block on one tile (see `default_gemv_mma_warps`).
fn default_gemv_mma_k_split_max() -> usize {
    16
}

/// Plans written before the tensor-core kernel ran every GEMV on the CUDA cores.
fn default_gemv_mma_min_tokens_before() -> usize {
    9
}

/// Two rows a warp: two weight streams in flight per lane.
fn default_gemv_rows_per_warp() -> usize {
    2
}

/// Four warps a block: 128-thread blocks, many per multiprocessor.
fn default_gemv_warps() -> usize {
    4
}

/// Four 16-byte chunks a row in flight per lane: 128 bytes a lane at two rows a warp.
fn default_gemv_unroll() -> usize {
    4
}

/// Round 0 splits a row group's inputs over up to 4 warps (a 4-warp block).
fn default_gemv_k_split_max() -> usize {
    4
}

/// Plans written before round 0 moved to 64 aimed for 24 (about what registers allow at
/// ~80 a thread: 65536 per SM / 32 lanes / 80 ≈ 25 warps).
fn default_gemv_warps_per_sm_before() -> usize {
    24
}

/// More than fits at once: the products with few rows (o and down) split their inputs
/// further, and the blocks that do not fit start as others end. On H100s (2026-11-27,
/// alternating runs) 48 against 24 decoded the 1B at batch 1 1.3-2.6% faster (893 / 897
/// against 870 / 885 tok/s, 04:07 UTC) and the 8B 1.0-1.3%; 64 against 48 (with the
/// other round-0 moves of that day, 04:40 UTC) the 1B 0.5% (915.9 / 910.1 / 915.1
/// against 905.9 / 910.7 / 908.5) and the 8B 1.5% (186.2 / 186.1 against 183.2 /
/// 183.6). It cost batch 8 2.6% when the GEMV still took 8 tokens; now it takes at most
/// 2 (`gemv_max_tokens`).
fn default_gemv_warps_per_sm() -> usize {
    64
}

/// A thread per four floats of a 4096-wide row: the 8B's norm reads its row in one load a
/// thread (the norm runs apart from the products from 3 tokens a step, where cuBLAS
/// takes them). On an H100 (04:07 UTC, 2026-11-27, two runs each) 1024 threads against
/// 256 decoded the 8B 0.7-1.3% faster at 32 sequences, the 1B 0.4-0.7%.
fn default_norm_threads() -> usize {
    1024
}

/// Eight logits loading at once per thread of the token-selection kernel.
fn default_sample_loads() -> usize {
    8
}

/// 64 parts of a 128k vocabulary: about 2,000 logits a block, one pass of 256 threads
/// with 8 loads each.
fn default_sample_parts() -> usize {
    64
}

/// Plans written before round 0 moved to 256 aimed for four blocks per multiprocessor of
/// an H100 (132 SMs).
fn default_attn_target_blocks_before() -> usize {
    4 * 132
}

/// Round 0's attention blocks: about two per multiprocessor of an H100, so a step of 32
/// sequences × 8 KV heads (256 blocks) already takes one part and skips the partial sums
/// and the merge, while batch 1 still splits 16 ways. With the two-stage K/V ring
/// (`attn_stages`) a block of one part keeps its loads in flight through long contexts.
/// On an H100 (04:07 UTC, 2026-11-27) one part at 32 sequences against three decoded the
/// 8B 1.3% faster and the 1B 3% (128-token prompts); with the ring, 2048-token prompts
/// too (8B at 32 sequences 3,049 tok/s against round 0's 3,024; without the ring one
/// part fell to 2,884).
fn default_attn_target_blocks() -> usize {
    256
}

/// Two stages: the next iteration's K/V rows load while this one's softmax math runs.
/// On an H100 (04:23 UTC, 2026-11-27, two alternating runs, logits bit-identical to one
/// stage) two stages against one decoded the 8B 1.3% faster at 32 sequences (4,697 /
/// 4,705 against 4,638 / 4,644 tok/s) and 3.5-3.7% at 128, the 1B 1.7-2.6% and 3-3.2%;
/// three were no better (the 8B at 128 sequences 1.5% slower than two).
fn default_attn_stages() -> usize {
    2
}

/// A part of at least 32 keys: one pass of a 4-warp block with 4 rows in flight per lane
/// at head_dim 128.
fn default_attn_min_split_keys() -> usize {
    32
}

/// Plans written before the field loaded K/V rows into registers an iteration at a time.
fn default_attn_stages_before() -> usize {
    1
}

/// K/V rows each attention lane has in flight: 2, 4 or 8 (the kernel is compiled for
/// these); anything else is refused when the plan is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "usize", into = "usize")]
pub struct KeysInFlight(usize);

impl KeysInFlight {
    /// The depths the attention kernel is compiled for.
    pub const SUPPORTED: [usize; 3] = [2, 4, 8];

    /// The number of rows.
    pub fn get(self) -> usize {
        self.0
    }
}

/// Four rows a lane: 8 KiB of K/V loading per 4-warp block at head_dim 128, at about
/// 170 registers a thread for GQA groups of 4.
impl Default for KeysInFlight {
    fn default() -> Self {
        KeysInFlight(4)
    }
}

impl TryFrom<usize> for KeysInFlight {
    type Error = String;

    fn try_from(n: usize) -> Result<Self, String> {
        if Self::SUPPORTED.contains(&n) {
            Ok(KeysInFlight(n))
        } else {
            Err(format!(
                "attn_keys_in_flight must be one of {:?}, not {n}",
                Self::SUPPORTED
            ))
        }
    }
}

impl From<KeysInFlight> for usize {
    fn from(k: KeysInFlight) -> usize {
        k.0
    }
}

/// The all-reduce that sums tensor-parallel partial outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllReduce {
    /// NCCL's all-reduce: ring or tree, right for every message size.
    #[default]
    Nccl,
    /// One kernel that reads every peer's buffer over NVLink and sums in place: lower
    /// latency for the few-KiB messages of batch-1 decode, slower for large ones.
    OneShot,
    /// One kernel that writes this rank's values into every peer's inbox and polls its
    /// own inbox, each value its own arrival flag (Lamport style): one trip over NVLink,
    /// no flags or fences, for the same small messages.
    OneShotPush,
}

impl AllReduce {
    /// The `cuda` part's Rust spelling of this variant.
    fn rust_path(self) -> &'static str {
        match self {
            AllReduce::Nccl => "AllReduce::Nccl",
            AllReduce::OneShot => "AllReduce::OneShot",
            AllReduce::OneShotPush => "AllReduce::OneShotPush",
        }
    }
}

/// Plans written before tensor parallelism ran on one GPU.
fn default_tensor_parallel() -> usize {
    1
}

/// How RoPE is stretched for contexts beyond the trained one (Llama 3.1+'s `llama3`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScalingPlan {
    /// `factor`: how much longer the context is than the original.
    pub factor: f32,
    /// `low_freq_factor`: wavelengths above `original / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f32,
    /// `high_freq_factor`: wavelengths below `original / high_freq_factor` are kept.
    pub high_freq_factor: f32,
    /// `original_max_position_embeddings`: the context the model was first trained for.
    pub original_max_position: usize,
}

/// Round 0's CUDA kernels: graphs for every power-of-two batch up to 128 (vLLM captures
/// a similar ladder), up to 16 attention splits of 4 warps (fewer as the batch grows)
/// with a two-stage K/V ring, 1024-thread RMSNorm and 256-thread elementwise kernels, a
/// 256-thread sampler and cuBLAS's recommended 32 MiB workspace for Hopper; the model
/// split across all `gpus`, not overlapped, its small sums by the push one-shot kernel
/// (vLLM too ships a custom all-reduce for them; ours was the fastest of the three at
/// batch 1 and 32 on 2 and 4 H100s), the rest by NCCL.
pub fn default_cuda(arch: &str, gpus: usize) -> CudaPlan {
    CudaPlan {
        arch: arch.to_string(),
        graphs: true,
        graph_batch_sizes: vec![1, 2, 4, 8, 16, 32, 64, 128],
        attn_splits: 16,
        attn_warps: 4,
        attn_target_blocks: default_attn_target_blocks(),
        attn_min_split_keys: default_attn_min_split_keys(),
        attn_keys_in_flight: KeysInFlight::default(),
        attn_stages: default_attn_stages(),
        early_launch: default_early_launch(),
        early_trigger: default_early_trigger(),
        norm_threads: default_norm_threads(),
        elemwise_threads: 256,
        sample_threads: 256,
        sample_parts: default_sample_parts(),
        sample_loads: default_sample_loads(),
        cublas_workspace_bytes: 32 << 20,
        tensor_parallel: gpus,
        all_reduce: if gpus > 1 {
            AllReduce::OneShotPush
        } else {
            AllReduce::Nccl
        },
        overlap_comm: false,
        one_shot_max_bytes: default_one_shot_max_bytes(),
        one_shot_max_blocks: default_one_shot_max_blocks(),
        one_shot_timeout_ms: default_one_shot_timeout_ms(),
        host_spin_us: default_host_spin_us(),
        gemv_max_tokens: default_gemv_max_tokens(),
        gemv_mma_min_tokens: default_gemv_mma_min_tokens(),
        gemv_mma_warps: default_gemv_mma_warps(),
        gemv_mma_k_split_max: default_gemv_mma_k_split_max(),
        gemv_rows_per_warp: default_gemv_rows_per_warp(),
        gemv_warps: default_gemv_warps(),
        gemv_unroll: default_gemv_unroll(),
        gemv_k_split_max: default_gemv_k_split_max(),
        gemv_warps_per_sm: default_gemv_warps_per_sm(),
        gemv_early_launch: default_early_launch(),
        gemv_early_trigger_max_tokens: default_gemv_early_trigger_max_tokens(),
        gemv_fuse_norm: default_gemv_fuse(),
        gemv_fuse_swiglu: default_gemv_fuse(),
        gemv_fuse_rope: default_gemv_fuse(),
    }
}

/// Round 0's batching on a GPU: vLLM's defaults (256 sequences, 8192 tokens a step),
/// prompts of up to 2048 tokens in one chunk.
pub const DEFAULT_CUDA_SERVING: ServingPlan = ServingPlan {
    max_batch_seqs: 256,
    max_batch_tokens: 8192,
    prefill_chunk: 2048,
    max_queue: 1024,
};

/// Round 0's KV-cache budget on a GPU, in MiB: what an 80 GB card has left beside an
/// 8B model's 16 GB of bf16 weights, with room for activations and graphs.
pub const DEFAULT_CUDA_KV_MEMORY_MIB: usize = 32 * 1024;

/// RoPE scaling type the CUDA kernels implement.
const LLAMA3_ROPE: &str = "llama3";

impl ModelPlan {
    /// The model's shape from a Hugging Face config.json.
    pub fn from_hf_config(config: &HfConfig) -> Result<ModelPlan, PlanError> {
        let rope_scaling = match &config.rope_scaling {
            None => None,
            Some(s) if s.rope_type == LLAMA3_ROPE => Some(RopeScalingPlan {
                factor: s.factor,
                low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: s.high_freq_factor.unwrap_or(1.0),
                original_max_position: s
                    .original_max_position_embeddings
                    .unwrap_or(config.max_position_embeddings)
                    as usize,
            }),
            Some(s) => return Err(PlanError::UnsupportedRopeScaling(s.rope_type.clone())),
        };
        let n = |v: u64| v as usize;
        Ok(ModelPlan {
            arch: config.model_type.clone(),
            n_layers: n(config.num_hidden_layers),
            n_embd: n(config.hidden_size),
            n_ff: n(config.intermediate_size),
            n_heads: n(config.num_attention_heads),
            n_kv_heads: n(config.kv_heads()),
            head_dim: n(config.head_dim()),
            vocab_size: n(config.vocab_size),
            context_length: n(config.max_position_embeddings),
            rope_theta: config.rope_theta(),
            rms_norm_eps: config.rms_norm_eps(),
            tied_embeddings: config.tie_word_embeddings,
            rope_scaling,
        })
    }
}

impl Plan {
    /// This plan made for `gpus` CUDA devices of architecture `arch`: the `cuda` part,
    /// the CUDA kernels' round-0 values, and GPU-sized batching and KV cache. The model
    /// must split across the GPUs ([`check_tensor_parallel`](Plan::check_tensor_parallel)).
    pub fn for_cuda(mut self, arch: &str, gpus: usize) -> Result<Plan, PlanError> {
        self.parts.insert(CUDA_PART.to_string());
        self.cuda = Some(default_cuda(arch, gpus));
        self.check_tensor_parallel()?;
        self.serving = DEFAULT_CUDA_SERVING;
        self.kv_cache = KvCachePlan::for_budget(
            &self.model,
            self.kv_cache.block_size,
            self.kv_cache.dtype,
            DEFAULT_CUDA_KV_MEMORY_MIB,
        );
        Ok(self)
    }

    /// Checks that the model splits across the plan's `cuda.tensor_parallel` ranks, by
    /// the rule the generated server shards with (the template's `shard.rs`).
    pub fn check_tensor_parallel(&self) -> Result<(), PlanError> {
        let Some(cuda) = &self.cuda else {
            return Ok(());
        };
        let m = &self.model;
        check_split(
            cuda.tensor_parallel,
            m.n_heads,
            m.n_kv_heads,
            m.n_ff,
            m.vocab_size,
        )
        .map_err(|source| PlanError::TensorParallel {
            degree: cuda.tensor_parallel,
            source,
        })
    }

    /// The constants of `src/plan_cuda.rs`, in file order; `None` for a plan with no CUDA.
    pub fn cuda_constants(&self) -> Option<Vec<PlanConst>> {
        let cuda = self.cuda.as_ref()?;
        let c = |name, value: String| PlanConst { name, value };
        let int = |x: usize| int_literal(x as u64);
        let sizes: Vec<String> = cuda.graph_batch_sizes.iter().map(|&b| int(b)).collect();
        Some(vec![
            c("CUDA_ARCH", format!("{:?}", cuda.arch)),
            c("CUDA_GRAPHS", cuda.graphs.to_string()),
            c("CUDA_GRAPH_BATCH_SIZES", format!("&[{}]", sizes.join(", "))),
            c("ATTN_SPLITS", int(cuda.attn_splits)),
            c("ATTN_WARPS", int(cuda.attn_warps)),
            c("ATTN_TARGET_BLOCKS", int(cuda.attn_target_blocks)),
            c("ATTN_MIN_SPLIT_KEYS", int(cuda.attn_min_split_keys)),
            c("ATTN_KEYS_IN_FLIGHT", int(cuda.attn_keys_in_flight.get())),
            c("ATTN_STAGES", int(cuda.attn_stages)),
            c("CUDA_EARLY_LAUNCH", cuda.early_launch.to_string()),
            c("CUDA_EARLY_TRIGGER", cuda.early_trigger.to_string()),
            c("CUDA_NORM_THREADS", int(cuda.norm_threads)),
            c("CUDA_ELEMWISE_THREADS", int(cuda.elemwise_threads)),
            c("CUDA_SAMPLE_THREADS", int(cuda.sample_threads)),
            c("CUDA_SAMPLE_PARTS", int(cuda.sample_parts)),
            c("CUDA_SAMPLE_LOADS", int(cuda.sample_loads)),
            c("CUBLAS_WORKSPACE_BYTES", int(cuda.cublas_workspace_bytes)),
            c("TENSOR_PARALLEL", int(cuda.tensor_parallel)),
            c("ALL_REDUCE", cuda.all_reduce.rust_path().to_string()),
            c("OVERLAP_COMM", cuda.overlap_comm.to_string()),
            c("ONE_SHOT_MAX_BYTES", int(cuda.one_shot_max_bytes)),
            c("ONE_SHOT_MAX_BLOCKS", int(cuda.one_shot_max_blocks)),
            c("ONE_SHOT_TIMEOUT_MS", int(cuda.one_shot_timeout_ms)),
            c("HOST_SPIN_US", int(cuda.host_spin_us)),
            c("CUDA_GEMV_MAX_TOKENS", int(cuda.gemv_max_tokens)),
            c("CUDA_GEMV_MMA_MIN_TOKENS", int(cuda.gemv_mma_min_tokens)),
            c("CUDA_GEMV_MMA_WARPS", int(cuda.gemv_mma_warps)),
            c("CUDA_GEMV_MMA_K_SPLIT_MAX", int(cuda.gemv_mma_k_split_max)),
            c("CUDA_GEMV_ROWS_PER_WARP", int(cuda.gemv_rows_per_warp)),
            c("CUDA_GEMV_WARPS", int(cuda.gemv_warps)),
            c("CUDA_GEMV_UNROLL", int(cuda.gemv_unroll)),
            c("CUDA_GEMV_K_SPLIT_MAX", int(cuda.gemv_k_split_max)),
            c("CUDA_GEMV_WARPS_PER_SM", int(cuda.gemv_warps_per_sm)),
            c("CUDA_GEMV_EARLY_LAUNCH", cuda.gemv_early_launch.to_string()),
            c(
                "CUDA_GEMV_EARLY_TRIGGER_MAX_TOKENS",
                int(cuda.gemv_early_trigger_max_tokens),
            ),
            c("CUDA_GEMV_FUSE_NORM", cuda.gemv_fuse_norm.to_string()),
            c("CUDA_GEMV_FUSE_SWIGLU", cuda.gemv_fuse_swiglu.to_string()),
            c("CUDA_GEMV_FUSE_ROPE", cuda.gemv_fuse_rope.to_string()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plan::{DeviceKind, DevicePlan, KernelVariant};

    /// Llama-3.2-1B's config.json, trimmed to the keys the plan reads.
    const LLAMA_1B: &str = r#"{"model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": true, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}"#;

    fn parse(text: &str) -> HfConfig {
        HfConfig::parse(text, Path::new("config.json")).unwrap()
    }

    #[test]
    fn a_llama3_config_gives_the_models_shape_and_rope_scaling() {
        let m = ModelPlan::from_hf_config(&parse(LLAMA_1B)).unwrap();
        assert_eq!((m.n_layers, m.n_embd, m.n_ff), (16, 2048, 8192));
        assert_eq!((m.n_heads, m.n_kv_heads, m.head_dim), (32, 8, 64));
        assert_eq!(
            (m.vocab_size, m.rope_theta, m.rms_norm_eps),
            (128_256, 500_000.0, 1e-5)
        );
        assert!(m.tied_embeddings);
        let rope = m.rope_scaling.unwrap();
        assert_eq!(
            (
                rope.factor,
                rope.high_freq_factor,
                rope.original_max_position
            ),
            (32.0, 4.0, 8192)
        );
    }

    #[test]
    fn rope_scaling_other_than_llama3_is_refused() {
        let yarn = LLAMA_1B.replace("\"llama3\"", "\"yarn\"");
        let err = ModelPlan::from_hf_config(&parse(&yarn)).unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
    }

    #[test]
    fn a_cuda_plan_renders_every_cuda_constant_and_a_cpu_plan_none() {
        let model = ModelPlan::from_hf_config(&parse(LLAMA_1B)).unwrap();
        let device = DevicePlan {
            kind: DeviceKind::Cuda,
            threads: 1,
            kernel_variant: KernelVariant::Auto,
        };
        let cpu = Plan::round0("t", model, device);
        assert!(cpu.cuda_constants().is_none());
        let cuda = cpu.for_cuda("sm_90a", 2).unwrap();
        let consts = cuda.cuda_constants().unwrap();
        let get = |n: &str| consts.iter().find(|c| c.name == n).unwrap().value.clone();
        assert_eq!(get("CUDA_ARCH"), "\"sm_90a\"");
        assert_eq!(
            get("CUDA_GRAPH_BATCH_SIZES"),
            "&[1, 2, 4, 8, 16, 32, 64, 128]"
        );
        assert_eq!(get("CUBLAS_WORKSPACE_BYTES"), "33_554_432");
        assert_eq!(get("TENSOR_PARALLEL"), "2");
        assert_eq!(get("ALL_REDUCE"), "AllReduce::OneShotPush");
        assert_eq!(get("OVERLAP_COMM"), "false");
        assert_eq!(get("ONE_SHOT_MAX_BYTES"), "524_288");
        assert_eq!(get("CUDA_GEMV_FUSE_NORM"), "true");
        assert_eq!(get("CUDA_GEMV_FUSE_SWIGLU"), "true");
        assert_eq!(get("CUDA_GEMV_FUSE_ROPE"), "true");
        assert!(cuda.parts.contains(CUDA_PART));
        // 32 GiB of f16 KV at 32 KiB a token (16 layers x 8 heads x 64 x 2 x 2 bytes).
        assert_eq!(cuda.kv_cache.blocks * cuda.kv_cache.block_size, 1 << 20);
    }

    #[test]
    fn a_split_the_model_cannot_take_is_refused() {
        let model = ModelPlan::from_hf_config(&parse(LLAMA_1B)).unwrap();
        let device = DevicePlan {
            kind: DeviceKind::Cuda,
            threads: 1,
            kernel_variant: KernelVariant::Auto,
        };
        let err = Plan::round0("t", model, device)
            .for_cuda("sm_90a", 3)
            .unwrap_err();
        assert!(err.to_string().contains("32 attention heads"), "{err}");
    }

    #[test]
    fn gemv_fusions_switched_off_in_a_plan_render_as_false() {
        let mut value = toml::Value::try_from(default_cuda("sm_90a", 1)).unwrap();
        let table = value.as_table_mut().unwrap();
        table.insert("gemv_fuse_norm".into(), toml::Value::Boolean(false));
        table.insert("gemv_fuse_swiglu".into(), toml::Value::Boolean(false));
        table.insert("gemv_fuse_rope".into(), toml::Value::Boolean(false));
        let cuda: CudaPlan = value.try_into().unwrap();
        let model = ModelPlan::from_hf_config(&parse(LLAMA_1B)).unwrap();
        let device = DevicePlan {
            kind: DeviceKind::Cuda,
            threads: 1,
            kernel_variant: KernelVariant::Auto,
        };
        let mut plan = Plan::round0("t", model, device)
            .for_cuda("sm_90a", 1)
            .unwrap();
        plan.cuda = Some(cuda);
        let consts = plan.cuda_constants().unwrap();
        let get = |n: &str| consts.iter().find(|c| c.name == n).unwrap().value.clone();
        assert_eq!(get("CUDA_GEMV_FUSE_NORM"), "false");
        assert_eq!(get("CUDA_GEMV_FUSE_SWIGLU"), "false");
        assert_eq!(get("CUDA_GEMV_FUSE_ROPE"), "false");
        assert_eq!(get("CUDA_GEMV_EARLY_LAUNCH"), "true");
    }

    #[test]
    fn plans_written_before_tensor_parallelism_read_as_one_gpu() {
        let mut value = toml::Value::try_from(default_cuda("sm_90a", 4)).unwrap();
        let table = value.as_table_mut().unwrap();
        for key in [
            "tensor_parallel",
            "all_reduce",
            "overlap_comm",
            "one_shot_max_bytes",
            "one_shot_max_blocks",
            "one_shot_timeout_ms",
            "host_spin_us",
            "gemv_max_tokens",
            "gemv_rows_per_warp",
            "gemv_warps",
            "gemv_unroll",
            "gemv_k_split_max",
            "gemv_warps_per_sm",
            "sample_loads",
            "sample_parts",
            "gemv_early_launch",
            "gemv_early_trigger_max_tokens",
            "attn_target_blocks",
            "attn_min_split_keys",
            "attn_keys_in_flight",
            "attn_stages",
            "early_launch",
            "early_trigger",
            "gemv_fuse_norm",
            "gemv_fuse_swiglu",
            "gemv_fuse_rope",
        ] {
            table.remove(key);
        }
        table.remove("gemv_mma_min_tokens");
        let old: CudaPlan = value.try_into().unwrap();
        // Before the tensor-core GEMV every product of up to 8 tokens ran on CUDA cores.
        assert_eq!(old.gemv_max_tokens, 8);
        assert_eq!(old.gemv_mma_min_tokens, 9);
        // Before the K/V ring and round 0's 2026-11-27 moves.
        assert_eq!(old.attn_stages, 1);
        assert_eq!(old.attn_target_blocks, 528);
        assert_eq!(old.gemv_warps_per_sm, 24);
        // Before the host threads of a tensor-parallel server spun while they waited.
        assert_eq!(old.host_spin_us, 0);
        let old = CudaPlan {
            host_spin_us: default_host_spin_us(),
            attn_stages: default_attn_stages(),
            attn_target_blocks: default_attn_target_blocks(),
            gemv_warps_per_sm: default_gemv_warps_per_sm(),
            gemv_max_tokens: default_gemv_max_tokens(),
            gemv_mma_min_tokens: default_gemv_mma_min_tokens(),
            ..old
        };
        assert_eq!(old, default_cuda("sm_90a", 1));
    }

    #[test]
    fn attention_constants_render_and_a_depth_the_kernel_lacks_is_refused() {
        let model = ModelPlan::from_hf_config(&parse(LLAMA_1B)).unwrap();
        let device = DevicePlan {
            kind: DeviceKind::Cuda,
            threads: 1,
            kernel_variant: KernelVariant::Auto,
        };
        let plan = Plan::round0("t", model, device)
            .for_cuda("sm_90a", 1)
            .unwrap();
        let consts = plan.cuda_constants().unwrap();
        let get = |n: &str| consts.iter().find(|c| c.name == n).unwrap().value.clone();
        assert_eq!(get("ATTN_TARGET_BLOCKS"), "256");
        assert_eq!(get("ATTN_STAGES"), "2");
        assert_eq!(get("ATTN_MIN_SPLIT_KEYS"), "32");
        assert_eq!(get("ATTN_KEYS_IN_FLIGHT"), "4");
        let text = plan.to_toml();
        assert!(text.contains("attn_keys_in_flight = 4"), "{text}");
        let deeper = text.replace("attn_keys_in_flight = 4", "attn_keys_in_flight = 8");
        let parsed = Plan::from_toml(&deeper).unwrap();
        assert_eq!(parsed.cuda.unwrap().attn_keys_in_flight.get(), 8);
        let odd = text.replace("attn_keys_in_flight = 4", "attn_keys_in_flight = 3");
        let err = Plan::from_toml(&odd).unwrap_err();
        assert!(err.to_string().contains("attn_keys_in_flight"), "{err}");
    }
}
