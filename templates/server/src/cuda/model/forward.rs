//! The forward pass of one step, as kernels and products enqueued on the stream (once
//! per step, or once per decode graph at capture): embedding, then per layer the
//! normed q/k/v product with RoPE, attention, o_proj with the residual add, the normed
//! gate/up product with SwiGLU, down_proj with the residual add; then the LM head and
//! token selection. Tensor-parallel ranks sum o_proj's and down_proj's partial outputs.

use std::ops::Range;

use super::{Buffers, CudaLlama, attention_splits};
use crate::cuda::CudaError;
use crate::cuda::device::{DevBuf, Gemv, GemvInput, GemvOut, check, gemv_fits, rope_fits};
use crate::cuda::ffi;
use crate::cuda::overlap::parts;
use crate::{plan, plan_cuda};

impl CudaLlama {
    /// Input section `offset` as a device pointer.
    fn input(&self, offset: usize) -> *const i32 {
        (self.buf.input.ptr + 4 * offset as u64) as *const i32
    }

    /// Enqueues a whole forward pass of `n` tokens with `n_logits` logits rows.
    pub(super) fn enqueue(&self, n: usize, n_logits: usize) -> Result<(), CudaError> {
        let (c, b, g) = (&self.local, &self.buf, &self.gpu);
        let st = g.raw_stream();
        // SAFETY (every launcher call in this file): the buffers were sized in `load` for
        // max_tokens ≥ n rows of this config, and the input sections were uploaded by `pack`.
        check("embed", unsafe {
            ffi::vs_embed(
                st,
                self.input(self.layout.tokens),
                n as i32,
                b.ptr_u16(&self.weights.embed),
                b.resid.ptr as *mut f32,
                c.hidden_size as i32,
                self.vocab_start as i32,
                c.vocab_size as i32,
                plan_cuda::CUDA_ELEMWISE_THREADS as i32,
                plan_cuda::CUDA_EARLY_LAUNCH.into(),
            )
        })?;
        self.all_reduce(&g.stream, b.resid.ptr, n * c.hidden_size)?;
        // With overlap, a step of several tokens runs as two halves of rows: one half's
        // all-reduce (side stream) runs while the other half's products compute.
        let parts = parts(n, self.side.is_some());
        for layer in 0..self.weights.layers.len() {
            self.layer(layer, n, &parts)?;
        }
        for part in 0..parts.len() {
            self.join(part)?;
        }
        if n_logits == 0 {
            return Ok(());
        }
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        self.normed_product(
            &self.weights.norm,
            self.input(self.layout.logit_rows),
            0..n_logits,
            Product {
                w: head.ptr,
                y: b.logits.ptr,
                rows: c.vocab_size,
                out: GemvOut::F32,
            },
        )?;
        check("sample", unsafe {
            ffi::vs_sample(
                st,
                b.logits.ptr as *const f32,
                n_logits as i32,
                c.vocab_size as i32,
                self.vocab_start as i32,
                self.input(self.layout.temps).cast::<f32>(),
                self.input(self.layout.seeds).cast::<u64>(),
                b.part_score.ptr as *mut f32,
                b.part_id.ptr as *mut i32,
                plan_cuda::CUDA_SAMPLE_PARTS as i32,
                b.sampled.ptr as *mut i32,
                b.scores.ptr as *mut f32,
                plan_cuda::CUDA_SAMPLE_THREADS as i32,
                plan_cuda::CUDA_EARLY_LAUNCH.into(),
            )
        })
    }

    /// Enqueues layer `layer` for `n` tokens run as `parts` (row ranges).
    fn layer(&self, layer: usize, n: usize, parts: &[Range<usize>]) -> Result<(), CudaError> {
        let (c, b, g) = (&self.local, &self.buf, &self.gpu);
        let w = &self.weights.layers[layer];
        let (d, ff) = (c.hidden_size, c.intermediate_size);
        let heads = c.num_attention_heads * c.head_dim();
        // Bytes of one row of each activation (offsets of a half's rows).
        let (qkv, gu, ffr) = (c.qkv_dim() * 2, 4 * ff, ff * 2);
        for (part, rows) in parts.iter().enumerate() {
            self.join(part)?;
            // RoPE and the K/V write in the qkv GEMV's epilogue when it runs the GEMV
            // with whole rotation pairs a warp, else the rope_kv kernel.
            let rope = self.rope_out(layer, rows);
            let fused = plan_cuda::CUDA_GEMV_FUSE_ROPE && rope_fits() && gemv_fits(rows.len(), d);
            let qkv_product = Product {
                w: w.wqkv.ptr,
                y: b.qkv.at(rows.start * qkv),
                rows: c.qkv_dim(),
                out: if fused {
                    GemvOut::RopeKv(rope)
                } else {
                    GemvOut::Bf16
                },
            };
            self.normed_product(&w.attn_norm, std::ptr::null(), rows.clone(), qkv_product)?;
            if !fused {
                self.rope_kv(&rope, rows)?;
            }
        }
        // Every half's K/V is in the cache before any query attends (a prefill chunk's
        // later rows attend to its earlier ones).
        self.attention(layer, n)?;
        for (part, rows) in parts.iter().enumerate() {
            self.residual_product(w.wo.ptr, &b.attn, heads, (part, parts.len()), rows)?;
        }
        for (part, rows) in parts.iter().enumerate() {
            self.join(part)?;
            let (r, m) = (rows.start, rows.len());
            // SwiGLU in the gate_up GEMV's epilogue when it runs the GEMV, else its own kernel.
            let fused = plan_cuda::CUDA_GEMV_FUSE_SWIGLU && gemv_fits(m, d);
            let gate_up = Product {
                w: w.w_gate_up.ptr,
                y: if fused {
                    b.ff.at(r * ffr)
                } else {
                    b.gate_up.at(r * gu)
                },
                rows: if fused { ff } else { 2 * ff },
                out: if fused {
                    GemvOut::SwiGlu
                } else {
                    GemvOut::Bf16
                },
            };
            self.normed_product(&w.ffn_norm, std::ptr::null(), rows.clone(), gate_up)?;
            if !fused {
                check("swiglu", unsafe {
                    ffi::vs_swiglu(
                        g.raw_stream(),
                        b.gate_up.at(r * gu) as *const u16,
                        b.ff.at(r * ffr) as *mut u16,
                        m as i32,
                        ff as i32,
                        plan_cuda::CUDA_ELEMWISE_THREADS as i32,
                        plan_cuda::CUDA_EARLY_LAUNCH.into(),
                    )
                })?;
            }
            self.residual_product(w.w_down.ptr, &b.ff, ff, (part, parts.len()), rows)?;
        }
        Ok(())
    }

    /// Row-parallel product: `w` (`k` inputs) of rows `rows` of the bf16 activation `x`
    /// added into the same residual rows (rank 0 adds its partial sum to the residual,
    /// the others write theirs alone), then the all-reduce that sums the ranks' rows
    /// (`part` of the step's halves, see [`CudaLlama::sum_rows`]).
    fn residual_product(
        &self,
        w: u64,
        x: &DevBuf,
        k: usize,
        part: (usize, usize),
        rows: &Range<usize>,
    ) -> Result<(), CudaError> {
        let (d, r, m) = (self.local.hidden_size, rows.start, rows.len());
        self.gpu.gemm(
            w,
            x.at(r * k * 2),
            self.buf.resid.at(r * d * 4),
            d,
            m,
            k,
            true,
            self.shard.rank == 0,
        )?;
        self.sum_rows(part.0, part.1, rows)
    }

    /// `p` of the RMSNorm (weight `norm`) of residual rows (`rows` and `rows_of` as in
    /// [`CudaLlama::rmsnorm`]): one GEMV that normalises as it reads when the plan fuses
    /// the norm and the product fits the GEMV, else the norm kernel into `xb`, then the
    /// product (a SwiGLU or RoPE output always goes to the GEMV: its caller checked it
    /// fits).
    fn normed_product(
        &self,
        norm: &DevBuf,
        rows_of: *const i32,
        rows: Range<usize>,
        p: Product,
    ) -> Result<(), CudaError> {
        let (g, d, n) = (&self.gpu, self.config.hidden_size, rows.len());
        let gemv = |x| Gemv {
            w: p.w,
            x,
            y: p.y,
            rows: p.rows,
            n,
            k: d,
            out: p.out,
            accumulate: false,
        };
        if plan_cuda::CUDA_GEMV_FUSE_NORM && gemv_fits(n, d) {
            return g.gemv(&gemv(GemvInput::Normed {
                resid: self.buf.resid.at(rows.start * d * 4),
                rows_of,
                weight: norm.ptr,
                eps: self.config.rms_norm_eps,
            }));
        }
        self.rmsnorm(norm, rows_of, rows.clone())?;
        let xb = self.buf.xb.at(rows.start * d * 2);
        match p.out {
            GemvOut::SwiGlu | GemvOut::RopeKv(_) => g.gemv(&gemv(GemvInput::Bf16(xb))),
            out => g.gemm(
                p.w,
                xb,
                p.y,
                p.rows,
                n,
                d,
                matches!(out, GemvOut::F32),
                false,
            ),
        }
    }

    /// RMSNorm of residual rows into the same rows of `xb`: `rows_of` null, the rows
    /// `rows`; else rows `rows_of[i]` into row i, for i in `rows` (from 0).
    fn rmsnorm(
        &self,
        weight: &DevBuf,
        rows_of: *const i32,
        rows: Range<usize>,
    ) -> Result<(), CudaError> {
        let (b, d) = (&self.buf, self.config.hidden_size);
        check("rmsnorm", unsafe {
            ffi::vs_rmsnorm(
                self.gpu.raw_stream(),
                b.resid.at(rows.start * d * 4) as *const f32,
                rows_of,
                rows.len() as i32,
                weight.ptr as *const u16,
                b.xb.at(rows.start * d * 2) as *mut u16,
                d as i32,
                self.config.rms_norm_eps,
                plan_cuda::CUDA_NORM_THREADS as i32,
                plan_cuda::CUDA_EARLY_LAUNCH.into(),
            )
        })
    }

    /// Where RoPE sends the q/k/v of `rows` in layer `layer`: their positions and cache
    /// slots, the rope table, the layer's caches.
    fn rope_out(&self, layer: usize, rows: &Range<usize>) -> ffi::vs_rope_kv_out {
        let (c, b, l) = (&self.local, &self.buf, &self.layout);
        ffi::vs_rope_kv_out {
            positions: self.input(l.positions + rows.start),
            slots: self.input(l.slots + rows.start),
            cos_sin: b.rope.ptr as *const f32,
            k_cache: b.k_cache.at(layer * self.layer_cache_bytes) as *mut u16,
            v_cache: b.v_cache.at(layer * self.layer_cache_bytes) as *mut u16,
            n_heads: c.num_attention_heads as i32,
            n_kv_heads: c.num_key_value_heads as i32,
            head_dim: c.head_dim() as i32,
            block_size: plan::KV_BLOCK_SIZE as i32,
        }
    }

    /// RoPE of the q and k heads of `rows` and their K/V into the caches `r` names
    /// (the rope_kv kernel, for products the GEMV epilogue does not take).
    fn rope_kv(&self, r: &ffi::vs_rope_kv_out, rows: &Range<usize>) -> Result<(), CudaError> {
        let qkv = self.buf.qkv.at(rows.start * self.local.qkv_dim() * 2);
        // SAFETY: see `enqueue`; the cache holds KV_BLOCKS + 1 blocks and `pack` checked
        // every block id came from a table the scheduler reserved.
        check("rope_kv", unsafe {
            ffi::vs_rope_kv(
                self.gpu.raw_stream(),
                qkv as *mut u16,
                rows.len() as i32,
                r,
                plan_cuda::CUDA_ELEMWISE_THREADS as i32,
                plan_cuda::CUDA_EARLY_LAUNCH.into(),
            )
        })
    }

    /// Attention of layer `layer` for `n` tokens (their K/V already in the cache).
    fn attention(&self, layer: usize, n: usize) -> Result<(), CudaError> {
        let (c, b, st) = (&self.local, &self.buf, self.gpu.raw_stream());
        let kc = b.k_cache.at(layer * self.layer_cache_bytes);
        let vc = b.v_cache.at(layer * self.layer_cache_bytes);
        let (h, kvh, hd, bs) = (
            c.num_attention_heads as i32,
            c.num_key_value_heads as i32,
            c.head_dim() as i32,
            plan::KV_BLOCK_SIZE as i32,
        );
        let l = &self.layout;
        check("attention", unsafe {
            ffi::vs_attention(
                st,
                b.qkv.ptr as *const u16,
                n as i32,
                kc as *const u16,
                vc as *const u16,
                self.input(l.tables),
                self.input(l.stride),
                self.input(l.q_seq),
                self.input(l.q_ctx),
                b.partial.ptr as *mut f32,
                b.attn.ptr as *mut u16,
                h,
                kvh,
                hd,
                bs,
                attention_splits(n, c.num_key_value_heads) as i32,
                plan_cuda::ATTN_MIN_SPLIT_KEYS as i32,
                plan_cuda::ATTN_WARPS as i32,
                plan_cuda::ATTN_KEYS_IN_FLIGHT as i32,
                plan_cuda::CUDA_EARLY_LAUNCH.into(),
            )
        })
    }
}

/// A product that follows an RMSNorm: its weight, output, output rows and kind.
#[derive(Clone, Copy)]
struct Product {
    w: u64,
    y: u64,
    rows: usize,
    out: GemvOut,
}

impl Buffers {
    fn ptr_u16(&self, buf: &DevBuf) -> *const u16 {
        buf.ptr as *const u16
    }
}
