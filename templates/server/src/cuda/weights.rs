//! Hugging Face safetensors (bf16) loaded straight into device memory, with the q/k/v
//! and gate/up projections fused into one matrix each (one product instead of three).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::CudaError;
use super::config::HfConfig;
use super::device::{DevBuf, Gpu};

/// One transformer block's weights on the device.
pub struct LayerWeights {
    /// `input_layernorm` [d].
    pub attn_norm: DevBuf,
    /// q, k and v stacked: [(heads + 2 kv_heads) · head_dim, d].
    pub wqkv: DevBuf,
    /// `o_proj` [d, heads · head_dim].
    pub wo: DevBuf,
    /// `post_attention_layernorm` [d].
    pub ffn_norm: DevBuf,
    /// gate and up stacked: [2 ff, d].
    pub w_gate_up: DevBuf,
    /// `down_proj` [d, ff].
    pub w_down: DevBuf,
}

/// Every weight of the model on the device.
pub struct Weights {
    /// `embed_tokens` [vocab, d].
    pub embed: DevBuf,
    /// The blocks.
    pub layers: Vec<LayerWeights>,
    /// `model.norm` [d].
    pub norm: DevBuf,
    /// `lm_head` [vocab, d], absent when tied to the embedding.
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

/// Loads tensors, possibly several stacked, into new device buffers.
struct Loader<'a> {
    gpu: &'a Gpu,
    files: Files,
    bytes: usize,
}

impl Loader<'_> {
    /// The named tensors stacked along their first axis; each is `[rows_i, cols]`.
    fn stacked(&mut self, parts: &[(String, usize)], cols: usize) -> Result<DevBuf, CudaError> {
        let total: usize = parts.iter().map(|(_, rows)| rows * cols * 2).sum();
        let buf = DevBuf::new(total)?;
        let mut offset = 0;
        for (name, rows) in parts {
            let shape: &[usize] = if cols == 1 { &[*rows] } else { &[*rows, cols] };
            let data = self.files.tensor(name, shape)?;
            self.gpu.upload(buf.at(offset), data)?;
            // The source is a mapped file: wait before the next tensor pages in.
            self.gpu.sync()?;
            offset += data.len();
        }
        self.bytes += total;
        Ok(buf)
    }

    fn one(&mut self, name: String, rows: usize, cols: usize) -> Result<DevBuf, CudaError> {
        self.stacked(&[(name, rows)], cols)
    }
}

impl Weights {
    /// Loads `model*.safetensors` of `dir` for `config`.
    pub fn load(gpu: &Gpu, dir: &Path, c: &HfConfig) -> Result<Self, CudaError> {
        let mut l = Loader {
            gpu,
            files: Files::open(dir)?,
            bytes: 0,
        };
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (q_rows, kv_rows, ff) = (
            c.num_attention_heads * hd,
            c.num_key_value_heads * hd,
            c.intermediate_size,
        );
        let embed = l.one("model.embed_tokens.weight".into(), c.vocab_size, d)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            layers.push(LayerWeights {
                attn_norm: l.one(p("input_layernorm"), d, 1)?,
                wqkv: l.stacked(
                    &[
                        (p("self_attn.q_proj"), q_rows),
                        (p("self_attn.k_proj"), kv_rows),
                        (p("self_attn.v_proj"), kv_rows),
                    ],
                    d,
                )?,
                wo: l.one(p("self_attn.o_proj"), d, q_rows)?,
                ffn_norm: l.one(p("post_attention_layernorm"), d, 1)?,
                w_gate_up: l.stacked(&[(p("mlp.gate_proj"), ff), (p("mlp.up_proj"), ff)], d)?,
                w_down: l.one(p("mlp.down_proj"), d, ff)?,
            });
        }
        let norm = l.one("model.norm.weight".into(), d, 1)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(l.one("lm_head.weight".into(), c.vocab_size, d)?)
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
