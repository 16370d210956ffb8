//! Hugging Face safetensors (bf16) loaded straight into device memory, with the q/k/v
//! and gate/up projections fused into one matrix each (one product instead of three),
//! each rank of a tensor-parallel group taking only its slice. The q and k rows of each
//! head are interleaved ([`interleave_head_rows`]) so that a RoPE rotation pair is two
//! adjacent rows, as llama.cpp's GGUF converter does.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::CudaError;
use super::config::HfConfig;
use super::device::{DevBuf, Gpu};
use crate::shard::Shard;

/// One transformer block's weights on the device.
pub struct LayerWeights {
    /// `input_layernorm` [d].
    pub attn_norm: DevBuf,
    /// This rank's q, k and v rows stacked: [(heads + 2 kv_heads) · head_dim, d], each q
    /// and k head's rows interleaved ([`interleave_head_rows`]).
    pub wqkv: DevBuf,
    /// This rank's columns of `o_proj`: [d, heads · head_dim].
    pub wo: DevBuf,
    /// `post_attention_layernorm` [d].
    pub ffn_norm: DevBuf,
    /// This rank's gate and up rows stacked: [2 ff, d].
    pub w_gate_up: DevBuf,
    /// This rank's columns of `down_proj`: [d, ff].
    pub w_down: DevBuf,
}

/// Every weight of the model on the device.
pub struct Weights {
    /// This rank's rows of `embed_tokens`: [vocab, d].
    pub embed: DevBuf,
    /// The blocks.
    pub layers: Vec<LayerWeights>,
    /// `model.norm` [d].
    pub norm: DevBuf,
    /// This rank's rows of `lm_head`: [vocab, d], absent when tied to the embedding.
    pub lm_head: Option<DevBuf>,
    /// Bytes of weights on the device.
    pub bytes: usize,
}

/// The memory-mapped safetensors files of a model folder and where each tensor is.
struct Files {
    maps: Vec<Mmap>,
    /// Tensor name → index into `maps`.
    index: HashMap<String, usize>,
}

impl Files {
    fn open(dir: &Path) -> Result<Self, CudaError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| CudaError::Model(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(CudaError::Model(format!(
                "no *.safetensors in {}",
                dir.display()
            )));
        }
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for path in &paths {
            let file = File::open(path)
                .map_err(|e| CudaError::Model(format!("{}: {e}", path.display())))?;
            // SAFETY: the file is only read; a concurrent writer is outside our contract.
            let map = unsafe { Mmap::map(&file) }
                .map_err(|e| CudaError::Model(format!("{}: {e}", path.display())))?;
            let names = SafeTensors::read_metadata(&map)
                .map_err(|e| CudaError::Model(format!("{}: {e}", path.display())))?;
            for name in names.1.tensors().keys() {
                index.insert(name.clone(), maps.len());
            }
            maps.push(map);
        }
        Ok(Self { maps, index })
    }

    /// The bf16 bytes of one tensor, checked against the expected shape.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<&[u8], CudaError> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| CudaError::Model(format!("tensor {name} is missing")))?;
        let st =
            SafeTensors::deserialize(&self.maps[i]).map_err(|e| CudaError::Model(e.to_string()))?;
        let view = st
            .tensor(name)
            .map_err(|e| CudaError::Model(e.to_string()))?;
        if view.dtype() != Dtype::BF16 || view.shape() != shape {
            return Err(CudaError::Model(format!(
                "tensor {name} is {:?} {:?}; expected BF16 {shape:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let data = view.data();
        // Re-borrow from the map so the slice outlives the parsed header.
        let start = data.as_ptr() as usize - self.maps[i].as_ptr() as usize;
        Ok(&self.maps[i][start..start + data.len()])
    }
}

/// One tensor's part that a rank holds: rows `rows` and columns `cols` of a
/// `[n_rows, n_cols]` matrix (a norm vector is `n_cols == 1`).
struct Part {
    name: String,
    n_rows: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    /// Head size whose rows are interleaved ([`interleave_head_rows`]); 0: kept in order.
    interleave: usize,
}

impl Part {
    /// Rows `rows` of every column (column-parallel and vocab-parallel slices).
    fn rows(name: String, n_rows: usize, rows: Range<usize>) -> Self {
        Self {
            name,
            n_rows,
            rows,
            cols: 0..0,
            interleave: 0,
        }
    }

    /// These rows, whole heads of `head_dim` rows, each head's rows interleaved.
    fn interleaved(self, head_dim: usize) -> Self {
        Self {
            interleave: head_dim,
            ..self
        }
    }
}

/// Rows of `head_dim`-row heads (`row_bytes` each) reordered within each head as
/// `[0, hd/2, 1, hd/2 + 1, ...]`: Llama's rotate-half RoPE pairs element i with
/// i + hd/2, and this puts each pair in adjacent rows (the rows one GEMV warp computes,
/// so its epilogue can rotate them). Applied to q and k alike, q · k is unchanged;
/// heads are sharded whole, so every rank's slice is whole heads.
fn interleave_head_rows(rows: &[u8], row_bytes: usize, head_dim: usize) -> Vec<u8> {
    let half = head_dim / 2;
    rows.chunks_exact(row_bytes * head_dim)
        .flat_map(|head| {
            (0..head_dim).flat_map(move |i| {
                let src = (i % 2) * half + i / 2;
                &head[src * row_bytes..(src + 1) * row_bytes]
            })
        })
        .copied()
        .collect()
}

/// Loads tensors, possibly several stacked, into new device buffers.
struct Loader<'a> {
    gpu: &'a Gpu,
    files: Files,
    bytes: usize,
}

impl Loader<'_> {
    /// The parts stacked along their first axis; every tensor is `[n_rows, n_cols]`, and a
    /// part with an empty column range takes all columns.
    fn stacked(&mut self, parts: &[Part], n_cols: usize) -> Result<DevBuf, CudaError> {
        let width = |p: &Part| {
            if p.cols.is_empty() {
                n_cols
            } else {
                p.cols.len()
            }
        };
        let total: usize = parts.iter().map(|p| p.rows.len() * width(p) * 2).sum();
        let buf = DevBuf::new(total)?;
        let mut offset = 0;
        for p in parts {
            let shape: &[usize] = if n_cols == 1 {
                &[p.n_rows]
            } else {
                &[p.n_rows, n_cols]
            };
            let data = self.files.tensor(&p.name, shape)?;
            let row_bytes = n_cols * 2;
            let rows = &data[p.rows.start * row_bytes..p.rows.end * row_bytes];
            if p.interleave > 0 {
                let reordered = interleave_head_rows(rows, row_bytes, p.interleave);
                self.gpu.upload(buf.at(offset), &reordered)?;
                offset += reordered.len();
            } else if p.cols.is_empty() {
                self.gpu.upload(buf.at(offset), rows)?;
                offset += rows.len();
            } else {
                // A row-parallel slice: gather each row's columns on the host first.
                let (c0, c1) = (p.cols.start * 2, p.cols.end * 2);
                let gathered: Vec<u8> = rows
                    .chunks_exact(row_bytes)
                    .flat_map(|r| &r[c0..c1])
                    .copied()
                    .collect();
                self.gpu.upload(buf.at(offset), &gathered)?;
                offset += gathered.len();
            }
            // The source is a mapped file (or a host copy): wait before it goes away.
            self.gpu.sync()?;
        }
        self.bytes += total;
        Ok(buf)
    }

    /// A whole tensor, `[rows, cols]`.
    fn one(&mut self, name: String, rows: usize, cols: usize) -> Result<DevBuf, CudaError> {
        self.stacked(&[Part::rows(name, rows, 0..rows)], cols)
    }

    /// Columns `cols` of every row of a `[rows, n_cols]` tensor.
    fn columns(
        &mut self,
        name: String,
        rows: usize,
        n_cols: usize,
        cols: Range<usize>,
    ) -> Result<DevBuf, CudaError> {
        let part = Part {
            cols,
            ..Part::rows(name, rows, 0..rows)
        };
        self.stacked(&[part], n_cols)
    }
}

impl Weights {
    /// Loads the part of `model*.safetensors` of `dir` that `shard` holds (Megatron
    /// split: q/k/v and gate/up by output rows, o and down by input columns, embedding
    /// and LM head by vocabulary rows; norms whole). `Shard::new(0, 1)` is everything.
    pub fn load(gpu: &Gpu, dir: &Path, c: &HfConfig, shard: Shard) -> Result<Self, CudaError> {
        let mut l = Loader {
            gpu,
            files: Files::open(dir)?,
            bytes: 0,
        };
        let (d, hd, ff) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let (h, kvh) = (c.num_attention_heads, c.num_key_value_heads);
        let heads = |r: Range<usize>| r.start * hd..r.end * hd;
        let (q, kv) = (heads(shard.q_heads(h)), heads(shard.kv_heads(kvh)));
        let (f, vocab) = (shard.ffn(ff), shard.vocab(c.vocab_size));
        let embed = l.stacked(
            &[Part::rows(
                "model.embed_tokens.weight".into(),
                c.vocab_size,
                vocab.clone(),
            )],
            d,
        )?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            layers.push(LayerWeights {
                attn_norm: l.one(p("input_layernorm"), d, 1)?,
                wqkv: l.stacked(
                    &[
                        Part::rows(p("self_attn.q_proj"), h * hd, q.clone()).interleaved(hd),
                        Part::rows(p("self_attn.k_proj"), kvh * hd, kv.clone()).interleaved(hd),
                        Part::rows(p("self_attn.v_proj"), kvh * hd, kv.clone()),
                    ],
                    d,
                )?,
                wo: l.columns(p("self_attn.o_proj"), d, h * hd, q.clone())?,
                ffn_norm: l.one(p("post_attention_layernorm"), d, 1)?,
                w_gate_up: l.stacked(
                    &[
                        Part::rows(p("mlp.gate_proj"), ff, f.clone()),
                        Part::rows(p("mlp.up_proj"), ff, f.clone()),
                    ],
                    d,
                )?,
                w_down: l.columns(p("mlp.down_proj"), d, ff, f.clone())?,
            });
        }
        let norm = l.one("model.norm.weight".into(), d, 1)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(l.stacked(
                &[Part::rows("lm_head.weight".into(), c.vocab_size, vocab)],
                d,
            )?)
        };
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            bytes: l.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_puts_each_rotate_half_pair_in_adjacent_rows_of_its_head() {
        // Two heads of 4 rows, 2 bytes a row: row r holds bytes (r, 100 + r).
        let rows: Vec<u8> = (0..8u8).flat_map(|r| [r, 100 + r]).collect();
        let out = interleave_head_rows(&rows, 2, 4);
        let order: Vec<u8> = out.chunks(2).map(|r| r[0]).collect();
        assert_eq!(order, [0, 2, 1, 3, 4, 6, 5, 7]);
        assert!(out.chunks(2).all(|r| r[1] == 100 + r[0]));
    }
}
