//! The agent's changes as unified diffs: made from two crate trees, applied to one.
//!
//! A round's patch is the multi-file unified diff (`--- a/path`, `+++ b/path`, with
//! `/dev/null` for created and deleted files) between the crate the Implementer started
//! from and the crate it left. `diffy` makes each file's diff and parses and applies the
//! whole set, so `build --locked` rebuilds an LLM round from the patch alone.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use diffy::patch_set::{FileOperation, ParseOptions, PatchSet};

use crate::generate::FileSet;
use crate::lock::PatchRef;

/// Lines of context around each change: what `git diff` writes.
const CONTEXT_LINES: usize = 3;

/// The multi-file unified diff from `old` to `new`; empty when they are the same.
/// Binary (non-UTF-8) files cannot be patched and are refused.
pub fn make(old: &FileSet, new: &FileSet) -> Result<String, PatchError> {
    let mut paths: Vec<&str> = old.iter().chain(new.iter()).map(|(p, _)| p).collect();
    paths.sort_unstable();
    paths.dedup();
    let mut out = String::new();
    for path in paths {
        let (a, b) = (old.get(path), new.get(path));
        if a == b {
            continue;
        }
        let text = |bytes: Option<&[u8]>| -> Result<String, PatchError> {
            let bytes = bytes.unwrap_or_default();
            String::from_utf8(bytes.to_vec()).map_err(|_| PatchError::Binary(path.to_string()))
        };
        let (before, after) = (text(a)?, text(b)?);
        let original = if a.is_some() {
            format!("a/{path}")
        } else {
            "/dev/null".into()
        };
        let modified = if b.is_some() {
            format!("b/{path}")
        } else {
            "/dev/null".into()
        };
        let patch = diffy::DiffOptions::new()
            .set_context_len(CONTEXT_LINES)
            .set_original_filename(original)
            .set_modified_filename(modified)
            .create_patch(&before, &after);
        out.push_str(&patch.to_string());
    }
    Ok(out)
}

/// `files` with the multi-file unified diff `patch` applied. Paths may carry `a/`, `b/`
/// prefixes (as [`make`] and `git diff` write them) or none.
pub fn apply(files: &FileSet, patch: &str) -> Result<FileSet, PatchError> {
    let mut out: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(p, b)| (p.to_string(), b.to_vec()))
        .collect();
    for file in PatchSet::parse(patch, ParseOptions::unidiff()) {
        let file = file.map_err(|e| PatchError::Parse(e.to_string()))?;
        let text = file
            .patch()
            .as_text()
            .ok_or_else(|| PatchError::Parse("a binary patch".into()))?;
        let (source, target) = match file.operation() {
            FileOperation::Create(p) => (None, Some(strip(p))),
            FileOperation::Delete(p) => (Some(strip(p)), None),
            FileOperation::Modify { original, modified } => {
                (Some(strip(original)), Some(strip(modified)))
            }
            other => {
                return Err(PatchError::Parse(format!(
                    "unsupported operation {other:?}"
                )));
            }
        };
        let base = match &source {
            Some(p) => {
                let bytes = out
                    .get(p.as_str())
                    .ok_or_else(|| PatchError::Missing(p.clone()))?;
                String::from_utf8(bytes.to_vec()).map_err(|_| PatchError::Binary(p.clone()))?
            }
            None => String::new(),
        };
        let applied = diffy::apply(&base, text).map_err(|e| PatchError::Apply {
            path: target.clone().or(source.clone()).unwrap_or_default(),
            message: e.to_string(),
        })?;
        if let Some(p) = &source {
            out.remove(p);
        }
        if let Some(p) = target {
            out.insert(p, applied.into_bytes());
        }
    }
    let mut set = FileSet::default();
    for (path, bytes) in out {
        set.insert(path, bytes);
    }
    Ok(set)
}

/// `files` with the locked patches applied in order: each read from `dir` (the
/// Serve.toml's folder) and checked against its recorded sha256 first.
pub fn apply_locked(
    files: FileSet,
    patches: &[PatchRef],
    dir: &Path,
) -> Result<FileSet, PatchError> {
    let mut files = files;
    for p in patches {
        let text = std::fs::read(dir.join(&p.path))
            .map_err(|e| PatchError::Read(format!("{}: {e}", p.path)))?;
        let found = hex::encode(Sha256::digest(&text));
        if found != p.sha256 {
            return Err(PatchError::Digest {
                path: p.path.clone(),
                locked: p.sha256.clone(),
                found,
            });
        }
        let text = String::from_utf8(text).map_err(|_| PatchError::Binary(p.path.clone()))?;
        files = apply(&files, &text)?;
    }
    Ok(files)
}

/// A patch path without its `a/` or `b/` prefix.
fn strip(path: &str) -> String {
    path.strip_prefix("a/")
        .or_else(|| path.strip_prefix("b/"))
        .unwrap_or(path)
        .to_string()
}

/// Why a patch could not be made or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum PatchError {
    /// A file that is not UTF-8 text.
    #[error("{0} is not UTF-8 text; patches carry text files only")]
    Binary(String),
    /// The text is not a unified diff.
    #[error("not a unified diff: {0}")]
    Parse(String),
    /// The patch changes a file the tree does not have.
    #[error("the patch changes {0}, which does not exist")]
    Missing(String),
    /// A locked patch file cannot be read.
    #[error("cannot read the patch {0}")]
    Read(String),
    /// A locked patch file differs from the one the lock recorded.
    #[error("{path} has sha256 {found}, Serve.lock records {locked}")]
    Digest {
        /// The patch file.
        path: String,
        /// The recorded digest.
        locked: String,
        /// Today's digest.
        found: String,
    },
    /// A hunk does not match the file.
    #[error("the patch does not apply to {path}: {message}")]
    Apply {
        /// The file.
        path: String,
        /// What did not match.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> FileSet {
        files.iter().copied().collect()
    }

    #[test]
    fn a_made_patch_reproduces_the_new_tree_byte_for_byte() {
        let old = set(&[("src/a.rs", "one\ntwo\nthree\n"), ("gone.rs", "x\n")]);
        let new = set(&[
            ("src/a.rs", "one\nTWO\nthree\n"),
            ("src/new.rs", "fn f() {}\n"),
        ]);
        let patch = make(&old, &new).expect("text files");
        assert!(
            patch.contains("--- a/src/a.rs\n+++ b/src/a.rs\n"),
            "{patch}"
        );
        assert!(
            patch.contains("--- /dev/null\n+++ b/src/new.rs\n"),
            "{patch}"
        );
        assert!(patch.contains("--- a/gone.rs\n+++ /dev/null\n"), "{patch}");
        let applied = apply(&old, &patch).expect("applies");
        assert_eq!(applied.tree_digest(), new.tree_digest());
        assert_eq!(make(&new, &new).expect("same"), "");
    }

    #[test]
    fn a_patch_that_does_not_match_is_refused() {
        let old = set(&[("a.rs", "one\ntwo\n")]);
        let patch = make(&old, &set(&[("a.rs", "one\nTWO\n")])).expect("text");
        let other = set(&[("a.rs", "uno\ndos\n")]);
        assert!(matches!(
            apply(&other, &patch),
            Err(PatchError::Apply { .. })
        ));
        assert!(matches!(
            apply(&set(&[]), &patch),
            Err(PatchError::Missing(p)) if p == "a.rs"
        ));
    }
}
