//! The Hugging Face `config.json` of a Llama model, and the RoPE table it implies.

use std::path::Path;

use serde::Deserialize;

use super::CudaError;
use crate::shard::Shard;

/// The llama3 RoPE frequency scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    /// `"llama3"`; other types are refused.
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Factor the low frequencies are divided by.
    pub factor: f64,
    /// Wavelengths longer than `original / low_freq_factor` are scaled fully.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: f64,
}

/// The fields of a Llama `config.json` the CUDA model reads.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// Model width.
    pub hidden_size: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f64,
    /// Optional llama3 frequency scaling.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// The LM head is the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Head size, when not `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
}

impl HfConfig {
    /// Reads `config.json` from a model folder.
    pub fn load(dir: &Path) -> Result<Self, CudaError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CudaError::Model(format!("{}: {e}", path.display())))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| CudaError::Model(format!("{}: {e}", path.display())))?;
        if let Some(s) = &config.rope_scaling
            && s.rope_type != "llama3"
        {
            return Err(CudaError::Model(format!(
                "rope_scaling type {:?} is not supported (only llama3)",
                s.rope_type
            )));
        }
        Ok(config)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The shapes one tensor-parallel rank computes with: its query and KV heads, FFN
    /// columns and vocabulary rows (the model width and head size are unchanged).
    pub fn shard(&self, shard: Shard) -> Self {
        Self {
            num_attention_heads: shard.q_heads(self.num_attention_heads).len(),
            num_key_value_heads: shard.kv_heads(self.num_key_value_heads).len(),
            intermediate_size: shard.ffn(self.intermediate_size).len(),
            vocab_size: shard.vocab(self.vocab_size).len(),
            head_dim: Some(self.head_dim()),
            ..self.clone()
        }
    }

    /// Width of the fused q|k|v projection's output.
    pub fn qkv_dim(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim()
    }

    /// The inverse frequencies of the rotary embedding, llama3-scaled when configured
    /// (Hugging Face's `_compute_llama3_parameters`).
    pub fn inv_freq(&self) -> Vec<f64> {
        let dim = self.head_dim();
        (0..dim / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf((2 * i) as f64 / dim as f64);
                let Some(s) = &self.rope_scaling else {
                    return f;
                };
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }

    /// (cos, sin) pairs for positions `0..positions`, `head_dim / 2` per position.
    pub fn rope_table(&self, positions: usize) -> Vec<f32> {
        let inv = self.inv_freq();
        let mut table = Vec::with_capacity(positions * inv.len() * 2);
        for p in 0..positions {
            for f in &inv {
                // Hugging Face forms the angle in f32; so do we, then widen for cos/sin.
                let angle = f64::from(p as f32 * *f as f32);
                table.push(angle.cos() as f32);
                table.push(angle.sin() as f32);
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_1b() -> HfConfig {
        serde_json::from_str(
            r#"{"hidden_size":2048,"intermediate_size":8192,"num_attention_heads":32,
            "num_key_value_heads":8,"num_hidden_layers":16,"vocab_size":128256,
            "rms_norm_eps":1e-5,"rope_theta":500000.0,"tie_word_embeddings":true,
            "rope_scaling":{"factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#,
        )
        .expect("valid config")
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let c = llama_1b();
        let inv = c.inv_freq();
        assert_eq!(inv.len(), 32);
        assert_eq!(inv[0], 1.0, "the highest frequency is unscaled");
        let plain = 1.0 / 500000f64.powf(62.0 / 64.0);
        assert!(
            (inv[31] - plain / 32.0).abs() < 1e-15,
            "the lowest is divided by the factor"
        );
        assert!(
            inv.windows(2).all(|w| w[0] > w[1]),
            "frequencies still decrease"
        );
    }

    #[test]
    fn a_rank_of_two_holds_half_the_heads_ffn_and_vocabulary() {
        let c = llama_1b();
        let r = c.shard(Shard::new(1, 2));
        assert_eq!((r.num_attention_heads, r.num_key_value_heads), (16, 4));
        assert_eq!((r.intermediate_size, r.vocab_size), (4096, 64128));
        assert_eq!(
            (r.head_dim(), r.hidden_size),
            (64, 2048),
            "head size and width stay"
        );
        assert_eq!(r.qkv_dim(), (16 + 8) * 64);
    }

    #[test]
    fn rope_table_starts_at_identity() {
        let t = llama_1b().rope_table(2);
        assert_eq!(t.len(), 2 * 32 * 2);
        assert!(t[..64].chunks(2).all(|cs| cs[0] == 1.0 && cs[1] == 0.0));
        assert!((t[64] - 1f32.cos()).abs() < 1e-6);
    }
}
