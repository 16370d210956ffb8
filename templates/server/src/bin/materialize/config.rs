//! The keys of a Llama `config.json` that shape the dummy weights and tokenizer.

use serde::Deserialize;

use crate::MaterializeError;

/// The config's file name in a model folder.
pub const FILE: &str = "config.json";

/// Standard deviation of the weights when `initializer_range` is absent (transformers').
const DEFAULT_INITIALIZER_RANGE: f32 = 0.02;

/// One token id or several (instruct models list several end-of-sequence ids).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids; the first is the canonical one.
    Many(Vec<u32>),
}

/// What config.json says, as read.
#[derive(Debug, Deserialize)]
struct Raw {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    initializer_range: Option<f32>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
}

/// The model's shape, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Model width.
    pub hidden: usize,
    /// MLP inner width.
    pub ffn: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Vocabulary size: rows of the embedding and the LM head.
    pub vocab: usize,
    /// No `lm_head.weight`: the LM head is the embedding.
    pub tied: bool,
    /// Standard deviation of the weight matrices.
    pub std: f32,
    /// Beginning-of-sequence id.
    pub bos: u32,
    /// End-of-sequence id.
    pub eos: u32,
}

impl Config {
    /// Parses config.json text.
    pub fn parse(text: &[u8]) -> Result<Config, MaterializeError> {
        let bad = |m: String| MaterializeError::Config(m);
        let raw: Raw = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
        if raw.model_type != "llama" {
            return Err(bad(format!(
                "model_type {:?} is not \"llama\"",
                raw.model_type
            )));
        }
        let ids = |what: &str, id: Option<u32>| id.ok_or_else(|| bad(format!("no {what}")));
        let eos = raw.eos_token_id.and_then(|ids| match ids {
            TokenIds::One(id) => Some(id),
            TokenIds::Many(ids) => ids.first().copied(),
        });
        let config = Config {
            hidden: raw.hidden_size,
            ffn: raw.intermediate_size,
            layers: raw.num_hidden_layers,
            heads: raw.num_attention_heads,
            kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            vocab: raw.vocab_size,
            tied: raw.tie_word_embeddings,
            std: raw.initializer_range.unwrap_or(DEFAULT_INITIALIZER_RANGE),
            bos: ids("bos_token_id", raw.bos_token_id)?,
            eos: ids("eos_token_id", eos)?,
        };
        if [
            config.hidden,
            config.ffn,
            config.layers,
            config.heads,
            config.head_dim,
        ]
        .contains(&0)
        {
            return Err(bad("a dimension is 0".into()));
        }
        Ok(config)
    }
}
