//! Causal grouped-query attention over the paged KV cache.
//!
//! One task per (token, KV head), claimed from an atomic counter by the
//! pool's threads; a task serves the KV head's whole group of query heads, so
//! each cached key and value is converted from the cache's precision once. A token at position `p` attends to positions `0..=p` of
//! its own sequence; the step's own K/V were written to the cache before
//! this runs, so every key comes from the cache and the causal mask is just
//! the loop bound. Query head `h` reads KV head `h / (N_HEADS / N_KV_HEADS)`.

use super::ops::{axpy, dot, softmax};
use super::{KernelError, Kernels};
use crate::batch::Batch;
use crate::kv_cache::{BlockPool, HEAD_RUN, K, KvElement, V};
use crate::plan::{CONTEXT_LENGTH, HEAD_DIM, KV_BLOCK_SIZE, KvElem, N_HEADS, N_KV_HEADS};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Query heads per KV head.
const GROUP: usize = N_HEADS / N_KV_HEADS;
/// Width of one token's queries (and of the attention output).
const Q_WIDTH: usize = N_HEADS * HEAD_DIM;

/// Per-thread working memory: scores over the context and one block of K or V in f32.
pub(super) struct Scratch {
    /// `GROUP` rows of `CONTEXT_LENGTH` scores.
    scores: Vec<f32>,
    run: Vec<f32>,
    /// The group's queries at the cache's precision.
    q16: [f32; GROUP * HEAD_DIM],
}

impl Scratch {
    /// Buffers for the longest context.
    pub(super) fn new() -> Mutex<Self> {
        Mutex::new(Self {
            scores: vec![0.0; GROUP * CONTEXT_LENGTH],
            run: vec![0.0; HEAD_RUN],
            q16: [0.0; GROUP * HEAD_DIM],
        })
    }
}

/// The attention output, written by tasks at disjoint `GROUP · HEAD_DIM` slices.
struct HeadOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: every task writes only its own (token, head) slice.
unsafe impl Sync for HeadOut {}

impl HeadOut {
    /// The `GROUP · HEAD_DIM` outputs starting at `at`.
    ///
    /// # Safety
    /// No other live reference may cover `at..at + GROUP · HEAD_DIM`.
    #[allow(clippy::mut_from_ref)] // disjointness is the caller's contract
    unsafe fn group(&self, at: usize) -> &mut [f32] {
        assert!(
            at + GROUP * HEAD_DIM <= self.len,
            "attention output out of bounds"
        );
        // SAFETY: in bounds (checked above); exclusive per the contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), GROUP * HEAD_DIM) }
    }
}

impl Kernels {
    /// `out[t][h] = Σ_s softmax_s(q[t][h] · k_s / √HEAD_DIM) · v_s` for each
    /// token `t` of `batch` over its sequence's cached positions `0..=pos`,
    /// for `layer`. `q` and `out` are `batch.len() × N_HEADS·HEAD_DIM`.
    pub fn attention(
        &self,
        pool: &BlockPool,
        layer: usize,
        batch: &Batch<'_>,
        q: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let _timed = super::Timed::new(&self.attention_ns);
        let n = batch.len();
        if q.len() != n * Q_WIDTH || out.len() != n * Q_WIDTH {
            return Err(KernelError::Shape {
                what: "attention",
                expected: format!("{n} × {Q_WIDTH} queries and outputs"),
                found: format!("{} queries, {} outputs", q.len(), out.len()),
            });
        }
        let dst = HeadOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        };
        let next = AtomicUsize::new(0);
        self.pool.run(&|thread| {
            let mut scratch = self.scratch[thread]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            loop {
                let task = next.fetch_add(1, Ordering::Relaxed);
                if task >= n * N_KV_HEADS {
                    break;
                }
                let (t, g) = (task / N_KV_HEADS, task % N_KV_HEADS);
                // Query heads g·GROUP .. (g+1)·GROUP are contiguous.
                let at = t * Q_WIDTH + g * GROUP * HEAD_DIM;
                // SAFETY: task (t, g) is claimed by exactly one thread, so
                // this slice has no other writer.
                let o = unsafe { dst.group(at) };
                let ctx = Ctx {
                    pool,
                    layer,
                    blocks: batch.table(t).blocks(),
                    n_ctx: batch.positions()[t] + 1,
                };
                attend_group(&ctx, g, &q[at..at + GROUP * HEAD_DIM], o, &mut scratch);
            }
        });
        Ok(())
    }
}

/// Where one token's keys and values are.
struct Ctx<'a> {
    pool: &'a BlockPool,
    layer: usize,
    blocks: &'a [u32],
    /// Positions attended to: `0..n_ctx`.
    n_ctx: usize,
}

impl Ctx<'_> {
    /// Calls `f(first_position, rows_f32)` for each block's K (or V) rows, in order.
    fn for_each_block(
        &self,
        which: usize,
        kv_head: usize,
        run: &mut [f32],
        mut f: impl FnMut(usize, &[f32]),
    ) {
        for (i, &block) in self.blocks.iter().enumerate() {
            let first = i * KV_BLOCK_SIZE;
            if first >= self.n_ctx {
                break;
            }
            let rows = KV_BLOCK_SIZE.min(self.n_ctx - first);
            let src: &[KvElem] =
                &self.pool.head(block, self.layer, which, kv_head)[..rows * HEAD_DIM];
            let dst = &mut run[..rows * HEAD_DIM];
            KvElem::to_f32s(src, dst);
            f(first, dst);
        }
    }
}

/// Attention of one token's `GROUP` query heads that share KV head `kv_head`.
fn attend_group(ctx: &Ctx<'_>, kv_head: usize, q: &[f32], out: &mut [f32], scratch: &mut Scratch) {
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let n = ctx.n_ctx;
    let Scratch { scores, run, q16 } = scratch;
    // Operands meet K and V at the cache's precision, as in llama.cpp's f16
    // attention (its accuracy goldens are our reference).
    to_kv_precision(q, q16);
    // scores[g][s] = q_g · k_s / √d                              (GROUP, n_ctx)
    ctx.for_each_block(K, kv_head, run, |first, keys| {
        for (j, k) in keys.chunks_exact(HEAD_DIM).enumerate() {
            for (g, qg) in q16.chunks_exact(HEAD_DIM).enumerate() {
                scores[g * CONTEXT_LENGTH + first + j] = dot(qg, k) * scale;
            }
        }
    });
    for g in 0..GROUP {
        let row = &mut scores[g * CONTEXT_LENGTH..g * CONTEXT_LENGTH + n];
        softmax(row);
        round_to_kv_precision(row, &mut run[..]);
    }
    // out_g = Σ_s scores[g][s] · v_s                             (GROUP, HEAD_DIM)
    out.fill(0.0);
    ctx.for_each_block(V, kv_head, run, |first, values| {
        for (j, v) in values.chunks_exact(HEAD_DIM).enumerate() {
            for (g, og) in out.chunks_exact_mut(HEAD_DIM).enumerate() {
                axpy(og, scores[g * CONTEXT_LENGTH + first + j], v);
            }
        }
    });
}

/// `dst = src` rounded to the KV cache's element precision.
fn to_kv_precision(src: &[f32], dst: &mut [f32]) {
    let mut tmp = [KvElem::from_f32(0.0); HEAD_DIM];
    for (s, d) in src.chunks(HEAD_DIM).zip(dst.chunks_mut(HEAD_DIM)) {
        KvElem::from_f32s(s, &mut tmp[..s.len()]);
        KvElem::to_f32s(&tmp[..s.len()], d);
    }
}

/// Rounds `x` in place to the KV cache's element precision (`spare`: scratch of any length).
fn round_to_kv_precision(x: &mut [f32], spare: &mut [f32]) {
    for chunk in x.chunks_mut(spare.len().min(HEAD_RUN)) {
        let tmp = &mut spare[..chunk.len()];
        tmp.copy_from_slice(chunk);
        to_kv_precision(tmp, chunk);
    }
}
