//! The model cache: `<cache_root>/models/<sha256>/<file name>`.
//!
//! A file only ever appears under its final name by an atomic rename after its digest was
//! checked, so a final name always holds verified bytes (until someone edits the cache by
//! hand, which is why a cache hit is hashed again). Work in progress lives under names
//! ending in `.tmp`: the next run ignores them, and removes those old enough that no live
//! fetch can still own them.

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::model::ModelError;

/// Every temporary file or folder in the cache ends with this.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";
/// A temporary older than this belongs to a run that died; a live fetch of even a large
/// model finishes well within it.
const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Read buffer for hashing; large reads keep hashing near memory speed.
const HASH_BUFFER_BYTES: usize = 1 << 20;
/// A sha256 digest is 32 bytes, written as 64 hex digits.
const DIGEST_HEX_LEN: usize = 64;

/// The folder holding every cached model, one sub-folder per digest.
pub(crate) fn models_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("models")
}

/// `value` as a lowercase sha256 hex digest, or an error if it is not one.
pub(crate) fn parse_digest(value: &str) -> Result<String, ModelError> {
    if value.len() == DIGEST_HEX_LEN && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(ModelError::InvalidDigest {
            value: value.to_owned(),
        })
    }
}

/// Fail with `DigestMismatch` unless `actual == expected`; `what` names the bytes hashed.
pub(crate) fn check_digest(
    what: impl Into<String>,
    expected: &str,
    actual: String,
) -> Result<(), ModelError> {
    if actual == expected {
        Ok(())
    } else {
        Err(ModelError::DigestMismatch {
            what: what.into(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// The sha256 of the file at `path`, streamed.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let file = File::open(path).map_err(ModelError::io("cannot open", path))?;
    let mut hashing = HashingWriter::new(io::sink(), ProgressBar::hidden());
    io::copy(
        &mut BufReader::with_capacity(HASH_BUFFER_BYTES, file),
        &mut hashing,
    )
    .map_err(ModelError::io("cannot read", path))?;
    Ok(hashing.finish().1)
}

/// A writer that hashes what passes through it and counts it on a progress bar.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    progress: ProgressBar,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W, progress: ProgressBar) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            progress,
        }
    }

    /// The inner writer and the hex digest of everything written.
    pub(crate) fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A new temporary file in `dir` for `basename`, removed on drop unless persisted.
pub(crate) fn temp_file(dir: &Path, basename: &str) -> Result<tempfile::NamedTempFile, ModelError> {
    tempfile::Builder::new()
        .prefix(&format!(".{basename}."))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(ModelError::io("cannot create a temporary file in", dir))
}

/// A new temporary folder in `dir`, removed with its contents on drop.
pub(crate) fn temp_dir(dir: &Path, purpose: &str) -> Result<tempfile::TempDir, ModelError> {
    tempfile::Builder::new()
        .prefix(&format!(".{purpose}-"))
        .suffix(TEMP_SUFFIX)
        .tempdir_in(dir)
        .map_err(ModelError::io("cannot create a temporary folder in", dir))
}

/// Best-effort removal of stale temporaries in `models` and its digest folders: a failure
/// here only leaves garbage that lookups already ignore, so it is not an error.
pub(crate) fn clean_stale_temps(models: &Path) {
    let now = SystemTime::now();
    let Ok(entries) = fs::read_dir(models) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if is_stale_temp(&path, now) {
            remove_any(&path);
        } else if path.is_dir() {
            let Ok(inner) = fs::read_dir(&path) else {
                continue;
            };
            for inner in inner
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_stale_temp(p, now))
            {
                remove_any(&inner);
            }
        }
    }
}

fn is_stale_temp(path: &Path, now: SystemTime) -> bool {
    let is_temp = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(TEMP_SUFFIX));
    let modified = fs::symlink_metadata(path).and_then(|m| m.modified());
    is_temp && modified.is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age > STALE_TEMP_AGE))
}

fn remove_any(path: &Path) {
    // Ignored on purpose: see `clean_stale_temps`.
    let _ = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_must_be_64_hex_digits() {
        let upper = "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53";
        assert_eq!(
            parse_digest(upper).ok().as_deref(),
            Some(upper.to_ascii_lowercase().as_str())
        );
        assert!(parse_digest(&upper[1..]).is_err());
        assert!(parse_digest(&format!("{}g", &upper[1..])).is_err());
    }

    #[test]
    fn hashing_writer_matches_sha256_of_the_bytes() {
        let mut w = HashingWriter::new(Vec::new(), ProgressBar::hidden());
        w.write_all(b"abc").expect("writing to a Vec cannot fail");
        let (bytes, digest) = w.finish();
        assert_eq!(bytes, b"abc");
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
