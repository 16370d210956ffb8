//! The CUDA part's design point: launch shapes and kernel choices of the GPU back end.
//!
//! `cargo vibeserve generate` rewrites every constant here from the plan's `cuda`
//! table (only CUDA targets get this file); `build.rs` reads `CUDA_ARCH` from it.

/// GPU architecture the kernels are compiled for (nvcc `-gencode`; `build.rs` reads
/// this line).
pub const CUDA_ARCH: &str = "sm_90a";
/// Replay decode steps as CUDA graphs (one launch per step instead of ~10 per layer).
pub const CUDA_GRAPHS: bool = true;
/// Batch sizes a decode graph is captured for; a decode step pads to the next one.
pub const CUDA_GRAPH_BATCH_SIZES: &[usize] = &[1, 2, 4, 8, 16, 32, 64, 128];
/// Most parts one query token's context is split into by the attention kernel
/// (flash-decoding), so a small decode batch still fills the GPU's multiprocessors.
pub const ATTN_SPLITS: usize = 16;
/// Warps per attention block (they share the block's keys, row groups apart).
pub const ATTN_WARPS: usize = 4;
/// Attention blocks a step aims for: `n` tokens over `k` KV heads take
/// `ceil(ATTN_TARGET_BLOCKS / (n * k))` parts (at most `ATTN_SPLITS`); one part writes
/// the output directly (no partial sums, no merge kernel).
pub const ATTN_TARGET_BLOCKS: usize = 256;
/// Fewest positions one part of a split context takes (later parts stay empty); a
/// context this short takes one part, written directly (its merge does nothing).
pub const ATTN_MIN_SPLIT_KEYS: usize = 32;
/// K and V rows each attention lane has loading at once (2, 4 or 8).
pub const ATTN_KEYS_IN_FLIGHT: usize = 4;
/// Iterations of K/V rows the attention kernel has loading at once: 1 loads each
/// iteration's rows into registers as it starts; 2-4 copy the next ones into a shared
/// memory ring (cp.async) while the current one computes (compiled in by build.rs).
pub const ATTN_STAGES: usize = 2;
/// Launch the kernels other than the GEMV with programmatic dependent launch: they start
/// while the kernel before them finishes (attention reads the step's inputs and warms
/// L2 with K/V rows meanwhile).
pub const CUDA_EARLY_LAUNCH: bool = true;
/// The hand-written kernels other than the GEMV let the next kernel launch as soon as
/// all their blocks have started (compiled in by build.rs), not when they end: an
/// early-launched kernel's blocks then do their early work (a GEMV's first weight loads)
/// during this one's tail.
pub const CUDA_EARLY_TRIGGER: bool = true;
/// Threads per RMSNorm block (one block per row).
pub const CUDA_NORM_THREADS: usize = 1024;
/// Threads per block of the elementwise kernels (embedding, RoPE, SwiGLU).
pub const CUDA_ELEMWISE_THREADS: usize = 256;
/// Threads per token-selection block.
pub const CUDA_SAMPLE_THREADS: usize = 256;
/// Blocks that scan one logits row in token selection (a slice of the vocabulary each).
pub const CUDA_SAMPLE_PARTS: usize = 64;
/// Logits each token-selection thread has loading at once (compiled in by build.rs).
pub const CUDA_SAMPLE_LOADS: usize = 8;
/// cuBLAS workspace, set once so that graph capture never allocates.
pub const CUBLAS_WORKSPACE_BYTES: usize = 33_554_432;
/// Products of at most this many tokens run the hand-written GEMV (`cuda/gemv.cu`)
/// instead of cuBLAS; 0: cuBLAS always. The kernel takes at most 8.
pub const CUDA_GEMV_MAX_TOKENS: usize = 2;
/// GEMV products of at least this many tokens run on the tensor cores, fewer on the CUDA
/// cores.
pub const CUDA_GEMV_MMA_MIN_TOKENS: usize = 3;
/// Warps per block of the tensor-core GEMV.
pub const CUDA_GEMV_MMA_WARPS: usize = 16;
/// Most warps of a tensor-core GEMV block that split one 16-row tile's inputs.
pub const CUDA_GEMV_MMA_K_SPLIT_MAX: usize = 16;
/// Output rows per warp of the GEMV kernel (1, 2 or 4).
pub const CUDA_GEMV_ROWS_PER_WARP: usize = 2;
/// Warps per block of the GEMV kernel.
pub const CUDA_GEMV_WARPS: usize = 4;
/// 16-byte chunks of each weight row a GEMV lane has loading at once (compiled in by
/// build.rs).
pub const CUDA_GEMV_UNROLL: usize = 4;
/// Most warps of a GEMV block that split one row group's inputs between them.
pub const CUDA_GEMV_K_SPLIT_MAX: usize = 4;
/// A GEMV product with fewer warps than this per multiprocessor splits its inputs
/// (up to `CUDA_GEMV_K_SPLIT_MAX` ways) until it has as many.
pub const CUDA_GEMV_WARPS_PER_SM: usize = 64;
/// Launch the GEMV early (programmatic dependent launch): it streams weights while the
/// previous kernel finishes.
pub const CUDA_GEMV_EARLY_LAUNCH: bool = true;
/// GEMV products of at most this many tokens let the next kernel launch as soon as all
/// their blocks have started, as `CUDA_EARLY_TRIGGER` does for the other kernels
/// (compiled in by build.rs); 0: never.
pub const CUDA_GEMV_EARLY_TRIGGER_MAX_TOKENS: usize = 1;
/// Products that go to the GEMV take the RMSNorm before them in (qkv, gate_up, the LM
/// head): no norm kernel, no bf16 copy of the normalised rows.
pub const CUDA_GEMV_FUSE_NORM: bool = true;
/// A gate_up product that goes to the GEMV writes silu(gate) * up itself: no SwiGLU
/// kernel, no gate_up buffer round trip.
pub const CUDA_GEMV_FUSE_SWIGLU: bool = true;
/// A qkv product that goes to the GEMV applies RoPE and writes K/V into the cache
/// itself: no rope_kv kernel. Taken only at an even `CUDA_GEMV_ROWS_PER_WARP` (a warp
/// must hold whole rotation pairs); at 1 row a warp the rope_kv kernel runs.
pub const CUDA_GEMV_FUSE_ROPE: bool = true;

// --- Tensor parallelism ---
/// GPUs one copy of the model is split across: each rank holds its heads, FFN columns
/// and vocabulary slice (see `shard.rs`) and drives its own GPU.
pub const TENSOR_PARALLEL: usize = 1;
/// How the ranks sum their partial outputs after the o and down projections.
pub const ALL_REDUCE: AllReduce = AllReduce::Nccl;
/// Overlap each all-reduce with the next GEMM instead of running them in turn.
pub const OVERLAP_COMM: bool = false;
/// Largest all-reduce (bytes of f32) the one-shot kernel takes; larger ones go to NCCL.
/// It also sizes the exchange buffers (two slots of it on every rank).
pub const ONE_SHOT_MAX_BYTES: usize = 524_288;
/// Most thread blocks (and flags per peer) of one one-shot all-reduce.
pub const ONE_SHOT_MAX_BLOCKS: usize = 32;
/// How long a one-shot all-reduce waits for a peer before it flags an error (below the
/// communicator's deadline, so a step fails instead of hanging).
pub const ONE_SHOT_TIMEOUT_MS: usize = 10_000;
/// Microseconds a host thread of a tensor-parallel server polls without sleeping while
/// it waits for the GPU or another thread (a sleeping thread wakes tens of microseconds
/// late, every decode step); then it sleeps between polls.
pub const HOST_SPIN_US: usize = 10_000;

/// The all-reduce that sums tensor-parallel partial outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllReduce {
    /// NCCL's all-reduce (ring or tree): right for every message size.
    Nccl,
    /// One kernel that reads every peer's buffer over NVLink and sums in place: lower
    /// latency for the few-KiB messages of batch-1 decode.
    OneShot,
    /// One kernel that writes into every peer's inbox and polls its own, each value its
    /// own arrival flag: one trip over NVLink, no flags or fences.
    OneShotPush,
}
