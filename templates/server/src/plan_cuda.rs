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
/// Parts the context is split into by the attention kernel (flash-decoding), so a
/// batch-1 decode still fills the GPU's multiprocessors.
pub const ATTN_SPLITS: usize = 16;
/// Warps per attention block (each walks every `ATTN_WARPS`-th key of its split).
pub const ATTN_WARPS: usize = 4;
/// Threads per RMSNorm block (one block per row).
pub const CUDA_NORM_THREADS: usize = 256;
/// Threads per block of the elementwise kernels (embedding, RoPE, SwiGLU).
pub const CUDA_ELEMWISE_THREADS: usize = 256;
/// Threads per token-selection block (one block scans one vocabulary row).
pub const CUDA_SAMPLE_THREADS: usize = 1024;
/// cuBLAS workspace, set once so that graph capture never allocates.
pub const CUBLAS_WORKSPACE_BYTES: usize = 33_554_432;
/// GPUs the model is split over (tensor parallelism; 1: one GPU).
pub const TENSOR_PARALLEL: usize = 1;
/// The all-reduce after the row-parallel products: `"nccl"` (NCCL's) or `"one-shot"`
/// (a custom one over peer memory for the small messages of batch-1 decode).
pub const ALL_REDUCE: &str = "nccl";
/// Overlap the all-reduce of one product with the next product's GEMM.
pub const OVERLAP_COMM: bool = false;
