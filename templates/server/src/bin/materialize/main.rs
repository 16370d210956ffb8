//! `materialize`: writes a dummy model folder — a Hugging Face config.json, random bf16
//! weights of the shapes it describes and a byte-level BPE tokenizer of its vocabulary
//! size — deterministically from the config and a seed, like vLLM's `--load-format
//! dummy`. It runs on the machine that serves the model (which may be unable to
//! download real weights); the tool never ships weights.
//!
//! The folder is written under a temporary name and renamed into place, so a killed run
//! leaves no half-written model; an existing folder made from the same config, seed and
//! generator version is reused as it is.

mod config;
mod tokenizer;
mod weights;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use serde::{Deserialize, Serialize};

use config::Config;

/// Version of what this generator writes for a given config and seed. The tool's model
/// digest covers it (`cargo-vibeserve/src/model/dummy.rs`): bump both together.
pub const GENERATOR_VERSION: u32 = 1;

/// The stamp file that records how a folder was made.
const STAMP: &str = "vibeserve-dummy.json";

/// Write a dummy model folder (config.json, model.safetensors, tokenizer.json).
#[derive(Debug, Parser)]
#[command(name = "materialize", version, about)]
struct Args {
    /// The model's Hugging Face config.json.
    #[arg(long)]
    config: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The folder to write (created; reused if it already holds this model).
    #[arg(long)]
    out: PathBuf,
    /// Threads drawing the weights (default: all the machine has).
    #[arg(long)]
    threads: Option<usize>,
}

/// How a folder was made: it is reused only if all of this matches.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Stamp {
    /// [`GENERATOR_VERSION`] of the generator that wrote it.
    generator_version: u32,
    /// The weights' seed.
    seed: u64,
}

/// What went wrong writing a dummy model.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The config.json describes no Llama model this generator can shape.
    #[error("config.json: {0}")]
    Config(String),
    /// The tokenizer could not be built or saved.
    #[error("tokenizer.json: {0}")]
    Tokenizer(String),
    /// The safetensors file could not be written.
    #[error("model.safetensors: {0}")]
    Safetensors(String),
}

/// Wraps an I/O error with the path involved.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaterializeError + '_ {
    move |source| MaterializeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    match materialize(&args.config, args.seed, &args.out, threads) {
        Ok(()) => {
            println!("{}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the dummy model of `config_path` and `seed` to `out`, unless `out` already
/// holds it.
pub fn materialize(
    config_path: &Path,
    seed: u64,
    out: &Path,
    threads: usize,
) -> Result<(), MaterializeError> {
    let text = std::fs::read(config_path).map_err(io(config_path))?;
    let config = Config::parse(&text)?;
    let stamp = Stamp {
        generator_version: GENERATOR_VERSION,
        seed,
    };
    if holds(out, &text, &stamp) {
        eprintln!("{} already holds this model", out.display());
        return Ok(());
    }
    let name = out
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy());
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = write_folder(&tmp, &text, &config, &stamp, threads);
    if let Err(e) = written {
        // Leave nothing half-written behind; the error is what matters.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out))
}

/// Whether `dir` was made from this config text and stamp.
fn holds(dir: &Path, config_text: &[u8], stamp: &Stamp) -> bool {
    let same_config = std::fs::read(dir.join(config::FILE)).is_ok_and(|t| t == config_text);
    let same_stamp = std::fs::read(dir.join(STAMP))
        .ok()
        .and_then(|t| serde_json::from_slice::<Stamp>(&t).ok())
        .is_some_and(|s| s == *stamp);
    same_config && same_stamp && dir.join(weights::FILE).is_file()
}

/// Writes every file of the folder into `dir`; the stamp goes last.
fn write_folder(
    dir: &Path,
    config_text: &[u8],
    config: &Config,
    stamp: &Stamp,
    threads: usize,
) -> Result<(), MaterializeError> {
    let path = dir.join(config::FILE);
    std::fs::write(&path, config_text).map_err(io(&path))?;
    tokenizer::write(config, &dir.join(tokenizer::FILE))?;
    weights::write(config, stamp.seed, threads, &dir.join(weights::FILE))?;
    let path = dir.join(STAMP);
    let json = serde_json::to_vec(stamp).map_err(|e| MaterializeError::Config(e.to_string()))?;
    std::fs::write(&path, json).map_err(io(&path))
}

#[cfg(test)]
mod tests;
