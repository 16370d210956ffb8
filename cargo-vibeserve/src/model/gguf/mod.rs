//! The model constants read from a GGUF file's header: what the plan specialises on.
//!
//! We read GGUF with our own small reader (`reader.rs`) instead of the `ggus` crate:
//! ggus 0.5 reads type tags straight into Rust enums (undefined behaviour on a corrupt
//! tag) and slices past the end of a truncated file (a panic), and a model loader must
//! answer both with an error.

mod ggml_type;
mod keys;
mod reader;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::ModelError;
use keys::Keys;

/// llama.cpp's RoPE base when a model does not state `{arch}.rope.freq_base`.
const DEFAULT_ROPE_FREQ_BASE: f32 = 10_000.0;

/// What a GGUF header says about the model: architecture, dimensions, tokenizer, tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GgufMetadata {
    /// GGUF container version (2 or 3).
    pub version: u32,
    /// `general.architecture`, e.g. "llama"; the prefix of the model's own keys.
    pub architecture: String,
    /// `general.name`, if the file names the model.
    pub name: Option<String>,
    /// `general.file_type`: the predominant quantisation, e.g. "MOSTLY_Q4_1".
    pub file_type: Option<String>,
    /// `{arch}.block_count`: the number of transformer layers.
    pub block_count: u64,
    /// `{arch}.context_length`: the context the model was trained for.
    pub context_length: u64,
    /// `{arch}.embedding_length`: the hidden size.
    pub embedding_length: u64,
    /// `{arch}.feed_forward_length`: the MLP's intermediate size.
    pub feed_forward_length: u64,
    /// `{arch}.attention.head_count`: query heads.
    pub head_count: u64,
    /// `{arch}.attention.head_count_kv`: key/value heads (equal to `head_count` when absent).
    pub head_count_kv: u64,
    /// `{arch}.attention.key_length`, else `embedding_length / head_count`.
    pub head_dim: u64,
    /// `{arch}.rope.dimension_count`, else `head_dim`: how many dimensions RoPE rotates.
    pub rope_dimension_count: u64,
    /// `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub vocab_size: u64,
    /// `{arch}.rope.freq_base` (10000 when absent, as in llama.cpp).
    pub rope_freq_base: f32,
    /// `{arch}.rope.scaling.*`, when the model extends its context by scaling RoPE.
    pub rope_scaling: Option<RopeScaling>,
    /// `{arch}.attention.layer_norm_rms_epsilon`, for RMSNorm models.
    pub rms_norm_eps: Option<f32>,
    /// `tokenizer.chat_template`: the Jinja template for chat prompts.
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.*`: which tokenizer and its special tokens.
    pub tokenizer: TokenizerInfo,
    /// `general.alignment` of the tensor data (32 when absent).
    pub alignment: u64,
    /// Absolute file offset where the tensor data section starts.
    pub data_offset: u64,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorInfo>,
}

/// How the model scales RoPE to reach a longer context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `rope.scaling.type`: "linear", "yarn", …
    pub kind: String,
    /// `rope.scaling.factor`.
    pub factor: Option<f32>,
    /// `rope.scaling.original_context_length`.
    pub original_context_length: Option<u64>,
}

/// The tokenizer the file describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// `tokenizer.ggml.model`, e.g. "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: Option<String>,
    /// `tokenizer.ggml.pre`: the pre-tokenizer, e.g. "smollm".
    pub pre: Option<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
}

/// One tensor's place in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// The GGUF tensor name, e.g. "blk.0.attn_q.weight".
    pub name: String,
    /// The ggml type name, e.g. "Q4_1".
    pub ggml_type: String,
    /// Dimensions, innermost (contiguous) first, as GGUF and ggml store them.
    pub shape: Vec<u64>,
    /// Offset of the data from `data_offset`.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl GgufMetadata {
    /// How many tensors use each ggml type, e.g. {"F32": 61, "Q4_1": 210}.
    pub fn tensor_type_counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for tensor in &self.tensors {
            *counts.entry(tensor.ggml_type.as_str()).or_default() += 1;
        }
        counts
    }
}

/// Read the GGUF header of `path` and extract the model's constants.
pub fn read_gguf_metadata(path: &Path) -> Result<GgufMetadata, ModelError> {
    let file = reader::read(path)?;
    let keys = Keys::new(&file.kvs, path);
    let architecture = keys.required_str("general.architecture")?;
    let arch_key = |suffix: &str| format!("{architecture}.{suffix}");

    let embedding_length = keys.required_u64(&arch_key("embedding_length"))?;
    let head_count = keys.required_u64(&arch_key("attention.head_count"))?;
    let head_dim = match keys.optional_u64(&arch_key("attention.key_length"))? {
        Some(dim) => dim,
        None => keys.divide(
            embedding_length,
            &arch_key("attention.head_count"),
            head_count,
        )?,
    };
    let vocab_size = match keys.optional_u64(&arch_key("vocab_size"))? {
        Some(n) => n,
        None => keys.array_len("tokenizer.ggml.tokens", &arch_key("vocab_size"))?,
    };
    Ok(GgufMetadata {
        version: file.version,
        name: keys.optional_str("general.name")?,
        file_type: keys.optional_u64("general.file_type")?.map(file_type_name),
        block_count: keys.required_u64(&arch_key("block_count"))?,
        context_length: keys.required_u64(&arch_key("context_length"))?,
        embedding_length,
        feed_forward_length: keys.required_u64(&arch_key("feed_forward_length"))?,
        head_count,
        head_count_kv: keys
            .optional_u64(&arch_key("attention.head_count_kv"))?
            .unwrap_or(head_count),
        head_dim,
        rope_dimension_count: keys
            .optional_u64(&arch_key("rope.dimension_count"))?
            .unwrap_or(head_dim),
        vocab_size,
        rope_freq_base: keys
            .optional_f32(&arch_key("rope.freq_base"))?
            .unwrap_or(DEFAULT_ROPE_FREQ_BASE),
        rope_scaling: rope_scaling(&keys, &architecture)?,
        rms_norm_eps: keys.optional_f32(&arch_key("attention.layer_norm_rms_epsilon"))?,
        chat_template: keys.optional_str("tokenizer.chat_template")?,
        tokenizer: TokenizerInfo {
            model: keys.optional_str("tokenizer.ggml.model")?,
            pre: keys.optional_str("tokenizer.ggml.pre")?,
            bos_token_id: keys.optional_u32("tokenizer.ggml.bos_token_id")?,
            eos_token_id: keys.optional_u32("tokenizer.ggml.eos_token_id")?,
        },
        alignment: file.alignment,
        data_offset: file.data_offset,
        tensors: file
            .tensors
            .into_iter()
            .map(|t| TensorInfo {
                name: t.name,
                ggml_type: t.ty.name.to_owned(),
                shape: t.shape,
                offset: t.offset,
                n_bytes: t.n_bytes,
            })
            .collect(),
        architecture,
    })
}

fn rope_scaling(keys: &Keys<'_>, arch: &str) -> Result<Option<RopeScaling>, ModelError> {
    let kind = keys.optional_str(&format!("{arch}.rope.scaling.type"))?;
    let Some(kind) = kind.filter(|kind| kind != "none") else {
        return Ok(None);
    };
    Ok(Some(RopeScaling {
        kind,
        factor: keys.optional_f32(&format!("{arch}.rope.scaling.factor"))?,
        original_context_length: keys
            .optional_u64(&format!("{arch}.rope.scaling.original_context_length"))?,
    }))
}

/// Names of llama.cpp's `llama_ftype` values (`include/llama.h`); removed ids are absent.
fn file_type_name(id: u64) -> String {
    let name = match id {
        0 => "ALL_F32",
        1 => "MOSTLY_F16",
        2 => "MOSTLY_Q4_0",
        3 => "MOSTLY_Q4_1",
        7 => "MOSTLY_Q8_0",
        8 => "MOSTLY_Q5_0",
        9 => "MOSTLY_Q5_1",
        10 => "MOSTLY_Q2_K",
        11 => "MOSTLY_Q3_K_S",
        12 => "MOSTLY_Q3_K_M",
        13 => "MOSTLY_Q3_K_L",
        14 => "MOSTLY_Q4_K_S",
        15 => "MOSTLY_Q4_K_M",
        16 => "MOSTLY_Q5_K_S",
        17 => "MOSTLY_Q5_K_M",
        18 => "MOSTLY_Q6_K",
        19 => "MOSTLY_IQ2_XXS",
        20 => "MOSTLY_IQ2_XS",
        21 => "MOSTLY_Q2_K_S",
        22 => "MOSTLY_IQ3_XS",
        23 => "MOSTLY_IQ3_XXS",
        24 => "MOSTLY_IQ1_S",
        25 => "MOSTLY_IQ4_NL",
        26 => "MOSTLY_IQ3_S",
        27 => "MOSTLY_IQ3_M",
        28 => "MOSTLY_IQ2_S",
        29 => "MOSTLY_IQ2_M",
        30 => "MOSTLY_IQ4_XS",
        31 => "MOSTLY_IQ1_M",
        32 => "MOSTLY_BF16",
        36 => "MOSTLY_TQ1_0",
        37 => "MOSTLY_TQ2_0",
        38 => "MOSTLY_MXFP4_MOE",
        _ => return format!("unknown ({id})"),
    };
    name.to_owned()
}

impl fmt::Display for GgufMetadata {
    /// A short human summary: what `cargo vibeserve fetch` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.as_deref().unwrap_or("(unnamed)");
        let file_type = self.file_type.as_deref().unwrap_or("unknown");
        writeln!(
            f,
            "model:        {name} ({}, GGUF v{}, {file_type})",
            self.architecture, self.version
        )?;
        writeln!(f, "layers:       {}", self.block_count)?;
        writeln!(
            f,
            "dims:         hidden {}, ffn {}, head {}",
            self.embedding_length, self.feed_forward_length, self.head_dim
        )?;
        writeln!(
            f,
            "heads:        {} query, {} key/value",
            self.head_count, self.head_count_kv
        )?;
        writeln!(f, "vocab:        {}", self.vocab_size)?;
        writeln!(f, "rope base:    {}", self.rope_freq_base)?;
        writeln!(f, "context:      {}", self.context_length)?;
        let counts = self.tensor_type_counts();
        let by_type: Vec<String> = counts.iter().map(|(ty, n)| format!("{n} {ty}")).collect();
        write!(
            f,
            "tensors:      {} ({})",
            self.tensors.len(),
            by_type.join(", ")
        )
    }
}
