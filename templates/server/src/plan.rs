//! The design point this server is specialised for.
//!
//! In the template this file holds the round-0 plan of the default target
//! (`targets/smollm2-cpu`), so the template builds and tests on its own.
//! `cargo vibeserve generate` rewrites it from the target's `Plan.toml`;
//! every other file of the crate reads its numbers from here.

use crate::kernels::KernelVariant;

/// Name of the target this server was generated for.
pub const TARGET: &str = "smollm2-cpu";

// --- Model shape (from the GGUF metadata) ---
/// Model architecture, as GGUF's `general.architecture` names it.
pub const ARCH: &str = "llama";
/// Transformer blocks.
pub const N_LAYERS: usize = 30;
/// Hidden size.
pub const N_EMBD: usize = 576;
/// Feed-forward inner size.
pub const N_FF: usize = 1536;
/// Query heads.
pub const N_HEADS: usize = 9;
/// Key/value heads (grouped-query attention when fewer than `N_HEADS`).
pub const N_KV_HEADS: usize = 3;
/// Size of one attention head.
pub const HEAD_DIM: usize = 64;
/// Vocabulary size.
pub const VOCAB_SIZE: usize = 49_152;
/// Longest sequence (prompt + completion) the model was trained for.
pub const CONTEXT_LENGTH: usize = 8192;
/// RoPE frequency base.
pub const ROPE_THETA: f32 = 100000.0;
/// RMSNorm epsilon.
pub const RMS_NORM_EPS: f32 = 1e-5;
/// The LM head reuses the token embedding (the GGUF has no `output.weight`).
pub const TIED_EMBEDDINGS: bool = true;

// --- Device and kernels ---
/// Worker threads of the compute pool.
pub const THREADS: usize = 2;
/// Which CPU kernel implementation the matrix products use.
pub const KERNEL_VARIANT: KernelVariant = KernelVariant::Auto;
/// Activation rows dotted against each unpacked weight block in the SIMD
/// kernels (a register tile: 4 accumulators of 8 or 16 lanes each).
pub const ACT_TILE: usize = 4;
/// Weight rows sharing each loaded activation block in the AVX2 `Q4_1` and
/// `Q8_0` products: two rows × `ACT_TILE` accumulators fit AVX2's 16 `ymm`
/// registers with the unpacked weights; 1 is the plain one-row loop.
pub const ROW_TILE: usize = 2;
/// Activation rows per pass of the AVX2 `Q4_1` product over groups of 8 weight
/// rows interleaved per register (8 rows' block sums per `maddubs` chain, no
/// horizontal sums; its own float summation order); 0 keeps the row-tile
/// kernels, which sum in llama.cpp's order.
pub const GROUP_ACT_TILE: usize = 16;
/// Output rows per task a thread claims in a matrix product: small enough
/// to balance 2 threads on the 192-row k/v matrices, large enough that the
/// atomic claim is noise next to the work.
pub const MATMUL_ROW_CHUNK: usize = 32;
/// Weight rows ahead of the current one that the AVX2 kernels prefetch
/// (0: rely on the hardware prefetcher alone).
pub const PREFETCH_ROWS: usize = 4;
/// Spin-loop rounds a pool worker waits for the next job before parking
/// (about a millisecond: covers the gaps inside a step, not between requests);
/// the caller waiting on workers spins as long before it yields its core.
pub const POOL_SPIN: usize = 20_000;
/// Element type of the KV cache (`half::f16` halves the bytes attention reads;
/// `f32` skips the conversions).
pub type KvElem = half::f16;

// --- Serving ---
/// Most sequences decoded together in one batched step.
pub const MAX_BATCH_SEQS: usize = 16;
/// Most tokens (prefill chunks plus decodes) processed in one engine step.
pub const MAX_BATCH_TOKENS: usize = 512;
/// Prefill is split into chunks of at most this many tokens per step.
pub const PREFILL_CHUNK: usize = 256;
/// Requests that may wait for admission before new ones get 429.
pub const MAX_QUEUE: usize = 256;
/// Tokens per KV-cache block.
pub const KV_BLOCK_SIZE: usize = 16;
/// KV-cache blocks in the pool (the memory budget).
pub const KV_BLOCKS: usize = 2912;
/// Reuse the KV blocks of a prompt's cached prefix (full blocks published by earlier
/// sequences, kept while idle until evicted) instead of computing them again.
pub const PREFIX_CACHE: bool = true;

// --- HTTP ---
/// Async worker threads serving HTTP (the model's compute runs on its own pool).
pub const HTTP_THREADS: usize = 2;
/// Largest request body accepted (413 above it); a full-context prompt as JSON token
/// ids is about 60 KB, so this leaves room for long chat histories.
pub const MAX_BODY_BYTES: usize = 4_194_304;
/// `Retry-After` seconds sent with 429 (queue full) and 503 (shutting down).
pub const RETRY_AFTER_SECS: u64 = 1;
/// Seconds between SSE keep-alive comments while a stream waits; writing them is
/// also how a vanished client is noticed, and its sequence freed, while it queues.
pub const SSE_KEEP_ALIVE_SECS: u64 = 5;
/// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C before the engine
/// ends them (streams then end with an error event and `data: [DONE]`).
pub const SHUTDOWN_GRACE_SECS: u64 = 30;
/// How long the idle engine thread sleeps waiting for a request before checking for
/// shutdown, in milliseconds.
pub const ENGINE_IDLE_TICK_MS: u64 = 100;
/// Milliseconds one engine step may run before the watchdog declares the engine hung
/// and fails its requests with 503.
pub const STEP_DEADLINE_MS: u64 = 60_000;
