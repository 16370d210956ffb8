//! The weights: every tensor of a Hugging Face Llama checkpoint, bf16, drawn from a
//! normal distribution of the config's `initializer_range` (norm weights are 1, as
//! transformers initialises them), written as one `model.safetensors`.
//!
//! Tensor `name` draws from ChaCha8 stream `fnv1a(name)` of the seed, two 32-bit words
//! per pair of elements (Box–Muller). ChaCha can seek, so each thread starts its chunk
//! at the chunk's word position: the bytes do not depend on the thread count.

use std::borrow::Cow;
use std::path::Path;

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, View};

use crate::MaterializeError;
use crate::config::Config;

/// The weights' file name in a model folder.
pub const FILE: &str = "model.safetensors";

/// Elements a thread draws at a time (even, so a chunk never splits a Box–Muller pair).
const CHUNK: usize = 1 << 20;

/// How a tensor is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Every element 1.0 (RMSNorm weights).
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal(f32),
}

/// One tensor of the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Its Hugging Face name, e.g. `model.layers.0.mlp.up_proj.weight`.
    pub name: String,
    /// Its shape, row-major (`[out, in]` for a projection).
    pub shape: Vec<usize>,
    /// How it is filled.
    pub fill: Fill,
}

/// Every tensor of a Llama checkpoint of config `c`, in checkpoint order.
pub fn llama_tensors(c: &Config) -> Vec<Tensor> {
    let normal = |name: String, shape: Vec<usize>| Tensor {
        name,
        shape,
        fill: Fill::Normal(c.std),
    };
    let ones = |name: String| Tensor {
        name,
        shape: vec![c.hidden],
        fill: Fill::Ones,
    };
    let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let mut out = vec![normal(
        "model.embed_tokens.weight".into(),
        vec![c.vocab, c.hidden],
    )];
    for i in 0..c.layers {
        let p = format!("model.layers.{i}");
        out.extend([
            ones(format!("{p}.input_layernorm.weight")),
            normal(format!("{p}.self_attn.q_proj.weight"), vec![q, c.hidden]),
            normal(format!("{p}.self_attn.k_proj.weight"), vec![kv, c.hidden]),
            normal(format!("{p}.self_attn.v_proj.weight"), vec![kv, c.hidden]),
            normal(format!("{p}.self_attn.o_proj.weight"), vec![c.hidden, q]),
            ones(format!("{p}.post_attention_layernorm.weight")),
            normal(format!("{p}.mlp.gate_proj.weight"), vec![c.ffn, c.hidden]),
            normal(format!("{p}.mlp.up_proj.weight"), vec![c.ffn, c.hidden]),
            normal(format!("{p}.mlp.down_proj.weight"), vec![c.hidden, c.ffn]),
        ]);
    }
    out.push(ones("model.norm.weight".into()));
    if !c.tied {
        out.push(normal("lm_head.weight".into(), vec![c.vocab, c.hidden]));
    }
    out
}

/// A tensor whose bytes are drawn when the safetensors writer asks for them, so only
/// one tensor is in memory at a time (the largest, an 8B model's embedding, is 1 GiB).
struct Lazy<'a> {
    tensor: &'a Tensor,
    seed: u64,
    threads: usize,
}

impl View for Lazy<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::BF16
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(draw(self.tensor, self.seed, self.threads))
    }

    fn data_len(&self) -> usize {
        self.tensor.shape.iter().product::<usize>() * 2
    }
}

/// Writes the checkpoint of config `c` and `seed` to `path`.
pub fn write(c: &Config, seed: u64, threads: usize, path: &Path) -> Result<(), MaterializeError> {
    let tensors = llama_tensors(c);
    let views = tensors.iter().map(|t| {
        let view = Lazy {
            tensor: t,
            seed,
            threads: threads.max(1),
        };
        (t.name.clone(), view)
    });
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| MaterializeError::Safetensors(e.to_string()))
}

/// The tensor's bf16 bytes (little-endian), drawn on `threads` threads.
pub fn draw(tensor: &Tensor, seed: u64, threads: usize) -> Vec<u8> {
    let n: usize = tensor.shape.iter().product();
    let mut bytes = vec![0u8; n * 2];
    let std = match tensor.fill {
        Fill::Ones => {
            let one = bf16::ONE.to_le_bytes();
            bytes
                .chunks_exact_mut(2)
                .for_each(|b| b.copy_from_slice(&one));
            return bytes;
        }
        Fill::Normal(std) => std,
    };
    let stream = fnv1a(&tensor.name);
    let mut shares: Vec<Vec<(usize, &mut [u8])>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, chunk) in bytes.chunks_mut(CHUNK * 2).enumerate() {
        shares[i % threads].push((i * CHUNK, chunk));
    }
    std::thread::scope(|s| {
        for share in shares {
            s.spawn(move || {
                for (first, chunk) in share {
                    fill_normal(chunk, seed, stream, first, std);
                }
            });
        }
    });
    bytes
}

/// Fills `out` (bf16 bytes of elements `first..`) with normals of deviation `std` from
/// stream `stream` of `seed`; element pair `p` uses words `2p` and `2p + 1`.
fn fill_normal(out: &mut [u8], seed: u64, stream: u64, first: usize, std: f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng.set_word_pos(first as u128);
    for pair in out.chunks_mut(4) {
        // u1 in (0, 1] keeps the logarithm finite; 24 bits is all an f32 holds.
        let u1 = ((rng.next_u32() >> 8) + 1) as f32 / (1u32 << 24) as f32;
        let u2 = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        let r = std * (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
        let z = [r * cos, r * sin];
        for (dst, v) in pair.chunks_exact_mut(2).zip(z) {
            dst.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
        }
    }
}

/// 64-bit FNV-1a of a tensor name: its stream, independent of the tensor's position.
fn fnv1a(name: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}
