//! The Llama forward pass (SmolLM2 and kin), over a whole batch at once.
//!
//! Reads top to bottom like llama2.c's `forward`: embed; per layer
//! norm → q/k/v → RoPE → write KV → attention → o-proj → residual → norm →
//! gate/up → SiLU·mul → down → residual; final norm → logits. Every matrix
//! product covers all the step's tokens, so each weight is read once per step.
//! Shapes in comments use `n` = tokens in the batch, `D` = `N_EMBD`,
//! `KV` = `N_KV_HEADS · HEAD_DIM`, `F` = `N_FF`, `L` = tokens needing logits.

use crate::batch::Batch;
use crate::kernels::ops::{add, rmsnorm, rope, rope_table, silu_mul};
use crate::kernels::{Acts, KernelError, KernelVariant, Kernels, MatJob, MatRef};
use crate::kv_cache::BlockPool;
use crate::plan::{
    ARCH, CONTEXT_LENGTH, HEAD_DIM, MAX_BATCH_TOKENS, N_EMBD, N_FF, N_HEADS, N_KV_HEADS, N_LAYERS,
    RMS_NORM_EPS, ROPE_THETA, VOCAB_SIZE,
};
use crate::weights::{DType, GgufFile, Weight, WeightsError};
use std::path::Path;

/// Width of the keys (and values) of one token.
const KV: usize = N_KV_HEADS * HEAD_DIM;
/// Types a linear layer may be stored in.
const LINEAR: &[DType] = &[
    DType::Q4_0,
    DType::Q4_1,
    DType::Q8_0,
    DType::F16,
    DType::BF16,
    DType::F32,
];
/// Types a norm weight may be stored in.
const NORM: &[DType] = &[DType::F32];

/// A failure to load or run the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The weights could not be loaded.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A kernel refused its operands, or the CPU lacks the planned variant.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Self-attention weights of one block.
pub struct Attention {
    attn_q: Weight,
    attn_k: Weight,
    attn_v: Weight,
    attn_output: Weight,
}

/// Feed-forward (SwiGLU) weights of one block.
pub struct Mlp {
    ffn_gate: Weight,
    ffn_up: Weight,
    ffn_down: Weight,
}

/// One transformer block.
pub struct Block {
    attn_norm: Weight,
    attn: Attention,
    ffn_norm: Weight,
    mlp: Mlp,
}

/// The whole model, with its kernels and preallocated working memory.
pub struct Llama {
    token_embd: Weight,
    blocks: Vec<Block>,
    output_norm: Weight,
    /// The LM head: `output.weight`, or `token_embd.weight` when tied.
    output: Weight,
    /// End-of-sequence token id from the file's tokenizer metadata.
    eos: Option<u32>,
    kernels: Kernels,
    s: Scratch,
}

/// Buffers for one step of up to `MAX_BATCH_TOKENS` tokens (no allocation per step).
struct Scratch {
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    acts: Acts,
    rope: Vec<(f32, f32)>,
}

impl Scratch {
    fn new() -> Self {
        let n = MAX_BATCH_TOKENS;
        Self {
            x: vec![0.0; n * N_EMBD],
            xb: vec![0.0; n * N_EMBD],
            q: vec![0.0; n * N_EMBD],
            k: vec![0.0; n * KV],
            v: vec![0.0; n * KV],
            att: vec![0.0; n * N_EMBD],
            gate: vec![0.0; n * N_FF],
            up: vec![0.0; n * N_FF],
            acts: Acts::new(n, N_FF.max(N_EMBD)),
            rope: vec![(0.0, 0.0); n * HEAD_DIM / 2],
        }
    }
}

impl Attention {
    fn load(f: &GgufFile, p: &str) -> Result<Self, WeightsError> {
        Ok(Self {
            attn_q: f.matrix(&format!("{p}.attn_q.weight"), LINEAR, N_EMBD, N_EMBD)?,
            attn_k: f.matrix(&format!("{p}.attn_k.weight"), LINEAR, KV, N_EMBD)?,
            attn_v: f.matrix(&format!("{p}.attn_v.weight"), LINEAR, KV, N_EMBD)?,
            attn_output: f.matrix(&format!("{p}.attn_output.weight"), LINEAR, N_EMBD, N_EMBD)?,
        })
    }

    /// `s.xb` (normed input) → `s.xb` (attention output projected), writing K/V of `layer`.
    fn forward(
        &self,
        k: &Kernels,
        layer: usize,
        b: &Batch<'_>,
        pool: &mut BlockPool,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let n = b.len();
        let (wq, wk, wv, wo) = (
            self.attn_q.mat(),
            self.attn_k.mat(),
            self.attn_v.mat(),
            self.attn_output.mat(),
        );
        s.acts
            .quantize(&s.xb[..n * N_EMBD], N_EMBD, wq.act_format())?; // (n, D) → 8-bit blocks
        k.matmul(
            &s.acts,
            &mut [
                MatJob {
                    w: &wq,
                    out: &mut s.q[..n * N_EMBD],
                }, // q = xb·Wqᵀ (n, D)
                MatJob {
                    w: &wk,
                    out: &mut s.k[..n * KV],
                }, // k = xb·Wkᵀ (n, KV)
                MatJob {
                    w: &wv,
                    out: &mut s.v[..n * KV],
                }, // v = xb·Wvᵀ (n, KV)
            ],
        )?;
        for t in 0..n {
            let cs = &s.rope[t * HEAD_DIM / 2..(t + 1) * HEAD_DIM / 2];
            rope(&mut s.q[t * N_EMBD..(t + 1) * N_EMBD], HEAD_DIM, cs); // (N_HEADS, HEAD_DIM)
            rope(&mut s.k[t * KV..(t + 1) * KV], HEAD_DIM, cs); // (N_KV_HEADS, HEAD_DIM)
            let (kt, vt) = (&s.k[t * KV..(t + 1) * KV], &s.v[t * KV..(t + 1) * KV]);
            pool.write(b.table(t), b.positions()[t], layer, kt, vt); // cache[pos] = k, v
        }
        k.attention(pool, layer, b, &s.q[..n * N_EMBD], &mut s.att[..n * N_EMBD])?; // (n, D)
        s.acts
            .quantize(&s.att[..n * N_EMBD], N_EMBD, wo.act_format())?;
        k.matmul(
            &s.acts,
            &mut [MatJob {
                w: &wo,
                out: &mut s.xb[..n * N_EMBD],
            }],
        )?; // att·Woᵀ (n, D)
        Ok(())
    }
}

impl Mlp {
    fn load(f: &GgufFile, p: &str) -> Result<Self, WeightsError> {
        Ok(Self {
            ffn_gate: f.matrix(&format!("{p}.ffn_gate.weight"), LINEAR, N_FF, N_EMBD)?,
            ffn_up: f.matrix(&format!("{p}.ffn_up.weight"), LINEAR, N_FF, N_EMBD)?,
            ffn_down: f.matrix(&format!("{p}.ffn_down.weight"), LINEAR, N_EMBD, N_FF)?,
        })
    }

    /// `s.xb` (normed input) → `s.xb` (SwiGLU output).
    fn forward(&self, k: &Kernels, n: usize, s: &mut Scratch) -> Result<(), ModelError> {
        let (wg, wu, wd) = (self.ffn_gate.mat(), self.ffn_up.mat(), self.ffn_down.mat());
        s.acts
            .quantize(&s.xb[..n * N_EMBD], N_EMBD, wg.act_format())?; // (n, D) → 8-bit blocks
        k.matmul(
            &s.acts,
            &mut [
                MatJob {
                    w: &wg,
                    out: &mut s.gate[..n * N_FF],
                }, // gate = xb·Wgᵀ (n, F)
                MatJob {
                    w: &wu,
                    out: &mut s.up[..n * N_FF],
                }, // up = xb·Wuᵀ (n, F)
            ],
        )?;
        silu_mul(&mut s.gate[..n * N_FF], &s.up[..n * N_FF]); // silu(gate)·up (n, F)
        s.acts
            .quantize(&s.gate[..n * N_FF], N_FF, wd.act_format())?;
        k.matmul(
            &s.acts,
            &mut [MatJob {
                w: &wd,
                out: &mut s.xb[..n * N_EMBD],
            }],
        )?; // ·Wdᵀ (n, D)
        Ok(())
    }
}

impl Block {
    fn load(f: &GgufFile, layer: usize) -> Result<Self, WeightsError> {
        let p = format!("blk.{layer}");
        Ok(Self {
            attn_norm: f.matrix(&format!("{p}.attn_norm.weight"), NORM, 1, N_EMBD)?,
            attn: Attention::load(f, &p)?,
            ffn_norm: f.matrix(&format!("{p}.ffn_norm.weight"), NORM, 1, N_EMBD)?,
            mlp: Mlp::load(f, &p)?,
        })
    }

    /// Pre-norm attention and MLP, each added back to the residual `s.x`.
    fn forward(
        &self,
        k: &Kernels,
        layer: usize,
        b: &Batch<'_>,
        pool: &mut BlockPool,
        s: &mut Scratch,
    ) -> Result<(), ModelError> {
        let nd = b.len() * N_EMBD;
        rmsnorm(
            &mut s.xb[..nd],
            &s.x[..nd],
            self.attn_norm.f32s(),
            RMS_NORM_EPS,
        ); // (n, D)
        self.attn.forward(k, layer, b, pool, s)?; // (n, D)
        add(&mut s.x[..nd], &s.xb[..nd]); // x += attention (n, D)
        rmsnorm(
            &mut s.xb[..nd],
            &s.x[..nd],
            self.ffn_norm.f32s(),
            RMS_NORM_EPS,
        ); // (n, D)
        self.mlp.forward(k, b.len(), s)?; // (n, D)
        add(&mut s.x[..nd], &s.xb[..nd]); // x += mlp (n, D)
        Ok(())
    }
}

impl Llama {
    /// Maps the GGUF at `path`, checks it against the plan and starts the
    /// kernels (`variant` resolved on this CPU, `threads` in the pool).
    pub fn load(path: &Path, variant: KernelVariant, threads: usize) -> Result<Self, ModelError> {
        let f = GgufFile::open(path)?;
        check_metadata(&f)?;
        let token_embd = f.matrix("token_embd.weight", LINEAR, VOCAB_SIZE, N_EMBD)?;
        let output = match f.matrix("output.weight", LINEAR, VOCAB_SIZE, N_EMBD) {
            Err(WeightsError::Missing { .. }) => token_embd.clone(), // tied embeddings
            other => other?,
        };
        Ok(Self {
            blocks: (0..N_LAYERS)
                .map(|l| Block::load(&f, l))
                .collect::<Result<_, _>>()?,
            output_norm: f.matrix("output_norm.weight", NORM, 1, N_EMBD)?,
            token_embd,
            output,
            eos: f
                .meta_u64("tokenizer.ggml.eos_token_id")
                .and_then(|v| u32::try_from(v).ok()),
            kernels: Kernels::new(variant, threads)?,
            s: Scratch::new(),
        })
    }

    /// The kernels in use.
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The end-of-sequence token id, if the file names one.
    pub fn eos_token(&self) -> Option<u32> {
        self.eos
    }

    /// Every matrix a decode step reads, by tensor name (the LM head last).
    pub fn matrices(&self) -> Vec<(String, MatRef<'_>)> {
        let mut mats = Vec::new();
        for (l, b) in self.blocks.iter().enumerate() {
            let (a, m) = (&b.attn, &b.mlp);
            for (name, w) in [
                ("attn_q", &a.attn_q),
                ("attn_k", &a.attn_k),
                ("attn_v", &a.attn_v),
                ("attn_output", &a.attn_output),
                ("ffn_gate", &m.ffn_gate),
                ("ffn_up", &m.ffn_up),
                ("ffn_down", &m.ffn_down),
            ] {
                mats.push((format!("blk.{l}.{name}"), w.mat()));
            }
        }
        mats.push(("output (LM head)".to_owned(), self.output.mat()));
        mats
    }

    /// Runs one step: all of `batch`'s tokens through every layer, K/V into
    /// `pool`, and `logits` resized to `L × VOCAB_SIZE` for the batch's
    /// logit tokens, in order.
    pub fn forward(
        &mut self,
        batch: &Batch<'_>,
        pool: &mut BlockPool,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let (s, k) = (&mut self.s, &self.kernels);
        let emb = self.token_embd.mat();
        for (t, &tok) in batch.tokens().iter().enumerate() {
            emb.dequantize_row(tok as usize, &mut s.x[t * N_EMBD..(t + 1) * N_EMBD]); // x = embd[tok] (n, D)
            let cs = &mut s.rope[t * HEAD_DIM / 2..(t + 1) * HEAD_DIM / 2];
            rope_table(batch.positions()[t], HEAD_DIM, ROPE_THETA, cs); // (n, HEAD_DIM / 2)
        }
        for (layer, block) in self.blocks.iter().enumerate() {
            block.forward(k, layer, batch, pool, s)?; // (n, D)
        }
        let rows = batch.logit_tokens();
        for (i, &t) in rows.iter().enumerate() {
            let (src, dst) = (
                &s.x[t * N_EMBD..(t + 1) * N_EMBD],
                &mut s.xb[i * N_EMBD..(i + 1) * N_EMBD],
            );
            rmsnorm(dst, src, self.output_norm.f32s(), RMS_NORM_EPS); // final norm (L, D)
        }
        let head = self.output.mat();
        logits.resize(rows.len() * VOCAB_SIZE, 0.0);
        if rows.is_empty() {
            return Ok(());
        }
        s.acts
            .quantize(&s.xb[..rows.len() * N_EMBD], N_EMBD, head.act_format())?;
        k.matmul(
            &s.acts,
            &mut [MatJob {
                w: &head,
                out: logits,
            }],
        )?; // logits = xb·Wₒᵤₜᵀ (L, VOCAB)
        Ok(())
    }
}

/// Checks the file's hyper-parameters against the plan this server was built for.
fn check_metadata(f: &GgufFile) -> Result<(), WeightsError> {
    let arch = f.meta_str("general.architecture");
    if arch != Some(ARCH) {
        return Err(WeightsError::Metadata {
            key: "general.architecture".into(),
            expected: ARCH.into(),
            found: arch.unwrap_or("missing").into(),
        });
    }
    let expected: [(&str, f64); 7] = [
        ("block_count", N_LAYERS as f64),
        ("embedding_length", N_EMBD as f64),
        ("feed_forward_length", N_FF as f64),
        ("attention.head_count", N_HEADS as f64),
        ("attention.head_count_kv", N_KV_HEADS as f64),
        ("rope.freq_base", f64::from(ROPE_THETA)),
        ("attention.layer_norm_rms_epsilon", f64::from(RMS_NORM_EPS)),
    ];
    for (key, value) in expected {
        f.expect_meta(&format!("{ARCH}.{key}"), value)?;
    }
    f.expect_meta(&format!("{ARCH}.context_length"), CONTEXT_LENGTH as f64)
}
