//! `dummy` model sources: random weights shaped by a config.json, made from a seed by the
//! generated server's `materialize` binary on the machine that serves them (never by
//! `generate`, never in CI). The tool only names them: their digest and cache folder.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ModelError, cache};

/// Version of the weight and tokenizer generator (`templates/server/src/bin/materialize/`).
/// It is part of a dummy model's digest: a change to what the generator writes for a
/// given config and seed must bump it (and the template's `GENERATOR_VERSION`).
pub const GENERATOR_VERSION: u32 = 1;

/// The domain tag hashed first, so a dummy digest never equals a file's sha256.
const DIGEST_TAG: &[u8] = b"vibeserve-dummy\0";

/// The digest that stands for a dummy model in Serve.lock: sha256 over the tag, the
/// generator version (u32, little-endian), the seed (u64, little-endian) and the
/// config.json bytes.
pub fn dummy_digest(config_json: &[u8], seed: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(DIGEST_TAG);
    hasher.update(GENERATOR_VERSION.to_le_bytes());
    hasher.update(seed.to_le_bytes());
    hasher.update(config_json);
    hex::encode(hasher.finalize())
}

/// The folder a dummy model of `digest` is materialised in:
/// `<cache_root>/models/dummy-<digest>/` (config.json, model.safetensors, tokenizer.json).
pub fn dummy_dir(cache_root: &Path, digest: &str) -> PathBuf {
    cache::models_dir(cache_root).join(format!("dummy-{digest}"))
}

/// The generated crate's binary that writes a dummy model; it is built beside `server`.
pub const MATERIALIZE_BIN: &str = "materialize";

/// Runs `bin --config CONFIG --seed SEED --out DIR` (the generated crate's
/// [`MATERIALIZE_BIN`]), which writes the model into `dir` unless it already holds it.
pub fn materialize(bin: &Path, config: &Path, seed: u64, dir: &Path) -> Result<(), ModelError> {
    let command = format!(
        "{} --config {} --seed {seed} --out {}",
        bin.display(),
        config.display(),
        dir.display()
    );
    let output = std::process::Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["--seed", &seed.to_string(), "--out"])
        .arg(dir)
        .output();
    let reason = match output {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            format!("{}: {}", out.status, stderr.trim())
        }
        Err(e) => format!("cannot run it: {e}"),
    };
    Err(ModelError::Materialize { command, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_config_seed_and_is_stable() {
        let a = dummy_digest(b"{\"hidden_size\": 8}", 0);
        assert_eq!(a, dummy_digest(b"{\"hidden_size\": 8}", 0));
        assert_ne!(a, dummy_digest(b"{\"hidden_size\": 8}", 1));
        assert_ne!(a, dummy_digest(b"{\"hidden_size\": 16}", 0));
        assert_eq!(a.len(), 64);
    }
}
