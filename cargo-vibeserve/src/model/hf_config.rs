//! A Hugging Face `config.json` for Llama-architecture models: the shape of a
//! safetensors model, and of the random weights of a `dummy` source.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;

/// RoPE base when the config does not state `rope_theta` (transformers' Llama default).
const DEFAULT_ROPE_THETA: f32 = 10_000.0;
/// RMSNorm epsilon when the config does not state `rms_norm_eps` (transformers' default).
const DEFAULT_RMS_NORM_EPS: f32 = 1e-6;
/// Standard deviation of the initial weights when `initializer_range` is absent.
const DEFAULT_INITIALIZER_RANGE: f32 = 0.02;

/// The keys of a Llama `config.json` the plan and the dummy weights use. Other keys
/// (there are many, and they vary by transformers version) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfConfig {
    /// `model_type`: `"llama"` for the models we serve.
    pub model_type: String,
    /// `hidden_size`: the model width.
    pub hidden_size: u64,
    /// `intermediate_size`: the MLP's inner width.
    pub intermediate_size: u64,
    /// `num_hidden_layers`: transformer blocks.
    pub num_hidden_layers: u64,
    /// `num_attention_heads`: query heads.
    pub num_attention_heads: u64,
    /// `num_key_value_heads`: key/value heads (equal to the query heads when absent).
    #[serde(default)]
    pub num_key_value_heads: Option<u64>,
    /// `head_dim` (`hidden_size / num_attention_heads` when absent).
    #[serde(default)]
    pub head_dim: Option<u64>,
    /// `vocab_size`: rows of the embedding and of the LM head.
    pub vocab_size: u64,
    /// `max_position_embeddings`: the longest context the model takes.
    pub max_position_embeddings: u64,
    /// `rope_theta`: the RoPE base.
    #[serde(default)]
    pub rope_theta: Option<f32>,
    /// `rope_scaling`: how RoPE is stretched for long contexts (Llama 3.1+: `"llama3"`).
    #[serde(default)]
    pub rope_scaling: Option<HfRopeScaling>,
    /// `rms_norm_eps`.
    #[serde(default)]
    pub rms_norm_eps: Option<f32>,
    /// `tie_word_embeddings`: the LM head reuses the embedding (no `lm_head.weight`).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `initializer_range`: the standard deviation of freshly initialised weights.
    #[serde(default)]
    pub initializer_range: Option<f32>,
    /// `bos_token_id`.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`: one id, or a list (instruct models stop on several).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

/// `rope_scaling` of a config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfRopeScaling {
    /// `rope_type` (older configs: `type`), e.g. `"llama3"`.
    #[serde(alias = "type")]
    pub rope_type: String,
    /// `factor`: how much longer the context is than the original.
    pub factor: f32,
    /// `low_freq_factor` (llama3).
    #[serde(default)]
    pub low_freq_factor: Option<f32>,
    /// `high_freq_factor` (llama3).
    #[serde(default)]
    pub high_freq_factor: Option<f32>,
    /// `original_max_position_embeddings` (llama3).
    #[serde(default)]
    pub original_max_position_embeddings: Option<u64>,
}

/// One token id or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids; the first is the canonical one.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The canonical id: the only one, or the first of several.
    pub fn first(&self) -> Option<u32> {
        match self {
            TokenIds::One(id) => Some(*id),
            TokenIds::Many(ids) => ids.first().copied(),
        }
    }
}

impl HfConfig {
    /// Parses config.json text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<HfConfig, ModelError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: HfConfig =
            serde_path_to_error::deserialize(de).map_err(|e| ModelError::HfConfig {
                path: path.to_path_buf(),
                message: format!("at `{}`: {}", e.path(), e.inner()),
            })?;
        config.check(path)?;
        Ok(config)
    }

    /// Reads and parses the config.json at `path`.
    pub fn read(path: &Path) -> Result<HfConfig, ModelError> {
        let text = std::fs::read_to_string(path).map_err(ModelError::io("cannot read", path))?;
        HfConfig::parse(&text, path)
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> u64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> u64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base.
    pub fn rope_theta(&self) -> f32 {
        self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// The RMSNorm epsilon.
    pub fn rms_norm_eps(&self) -> f32 {
        self.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS)
    }

    /// The standard deviation of initial (and dummy) weights.
    pub fn initializer_range(&self) -> f32 {
        self.initializer_range.unwrap_or(DEFAULT_INITIALIZER_RANGE)
    }

    /// The shapes a Llama model of this config is made of must divide evenly.
    fn check(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |message: String| {
            Err(ModelError::HfConfig {
                path: path.to_path_buf(),
                message,
            })
        };
        if self.model_type != "llama" {
            return bad(format!(
                "`model_type` is \"{}\"; cargo-vibeserve serves \"llama\" models",
                self.model_type
            ));
        }
        let dims = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return bad(format!("`{name}` is 0"));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(format!(
                "{} attention heads do not group evenly over {} key/value heads",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        Ok(())
    }
}
