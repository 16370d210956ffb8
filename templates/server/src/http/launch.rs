//! `server serve`: load the model, start the engine thread, serve HTTP until a
//! shutdown signal, then wait for the engine to finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tokio::net::TcpListener;

use super::metrics::Metrics;
use super::{AppState, unix_now};
use crate::chat_template::{ChatTemplate, ChatTemplateError};
use crate::engine;
#[cfg(not(vibeserve_cuda))]
use crate::model::Llama;
use crate::model::ModelError;
use crate::plan;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Arguments of `server serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model id clients pass as `model` (default: the file name without `.gguf`).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Milliseconds an engine step may run before the server declares the engine hung
    /// (requests then get 503, `/health` too).
    #[arg(long, default_value_t = plan::STEP_DEADLINE_MS)]
    pub step_deadline_ms: u64,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model could not be loaded.
    #[error("loading the model: {0}")]
    Model(#[from] ModelError),
    /// The tokenizer could not be built from the GGUF.
    #[error("loading the tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    /// The chat template could not be read or compiled.
    #[error("loading the chat template: {0}")]
    ChatTemplate(#[from] ChatTemplateError),
    /// The GGUF file could not be read.
    #[error("reading {path}: {reason}")]
    Gguf {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The GPU back end failed to start.
    #[cfg(vibeserve_cuda)]
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),
    /// Binding, serving or starting a thread failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: &ServeArgs) -> Result<(), ServeError> {
    let (tokenizer, chat_template, model) = load(&args.model)?;
    let tokenizer = Arc::new(tokenizer);
    let metrics = Arc::new(Metrics::new());
    let io = |what| move |source| ServeError::Io { what, source };
    let deadline = std::time::Duration::from_millis(args.step_deadline_ms);
    let (engine, engine_thread) =
        engine::start(model, tokenizer.clone(), metrics.clone(), deadline)
            .map_err(io("starting the engine thread"))?;
    let model_id = args.served_model_name.clone().unwrap_or_else(|| {
        let stem = args.model.file_stem().map(|s| s.to_string_lossy());
        stem.map_or_else(|| plan::TARGET.to_string(), |s| s.into_owned())
    });
    let app = Arc::new(AppState {
        model_id,
        started: unix_now(),
        tokenizer,
        chat_template,
        engine,
        metrics,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan::HTTP_THREADS)
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    runtime.block_on(async {
        let listener = TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(io("binding the listen address"))?;
        let addr: SocketAddr = listener.local_addr().map_err(io("reading the address"))?;
        // Tests and scripts read this line to find a port chosen with --port 0.
        println!("listening on http://{addr}");
        super::serve(listener, app)
            .await
            .map_err(io("serving HTTP"))
    })?;
    // Dropping the runtime drops every engine handle (the app state, the grace
    // timer); the engine thread then ends once its remaining work is done.
    drop(runtime);
    if engine_thread.join().is_err() {
        eprintln!("the engine thread panicked while shutting down");
    }
    Ok(())
}

/// The text side and the model back end of a CPU server: all from one GGUF.
#[cfg(not(vibeserve_cuda))]
fn load(
    path: &std::path::Path,
) -> Result<(Tokenizer, ChatTemplate, Box<dyn crate::backend::Backend>), ServeError> {
    let (tokenizer, chat_template) = load_text_side(path)?;
    let model = Llama::load(path, plan::KERNEL_VARIANT, plan::THREADS)?;
    Ok((tokenizer, chat_template, Box::new(model)))
}

/// The text side and the model back end of a CUDA server: a Hugging Face model folder.
#[cfg(vibeserve_cuda)]
fn load(
    path: &std::path::Path,
) -> Result<(Tokenizer, ChatTemplate, Box<dyn crate::backend::Backend>), ServeError> {
    crate::cuda::serve::load(path)
}

/// The tokenizer and chat template, from the GGUF's metadata.
#[cfg(not(vibeserve_cuda))]
fn load_text_side(path: &std::path::Path) -> Result<(Tokenizer, ChatTemplate), ServeError> {
    let gguf_err = |reason: String| ServeError::Gguf {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| gguf_err(e.to_string()))?;
    // SAFETY: read-only map, dropped before this function returns; a file truncated
    // underneath us would fault, the usual mmap caveat for model files.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| gguf_err(e.to_string()))?;
    let gguf = ggus::GGuf::new(&map).map_err(|e| gguf_err(format!("{e:?}")))?;
    Ok((
        Tokenizer::from_gguf(&gguf)?,
        ChatTemplate::from_gguf(&gguf)?,
    ))
}
