//! The cargo workspace around a folder: its root (where `targets/` lives) and its target
//! directory (where caches and generated crates go), found with `cargo metadata`.

use std::path::{Path, PathBuf};

use cargo_metadata::MetadataCommand;
use miette::Diagnostic;
use thiserror::Error;

/// The folder under the workspace root that holds committed targets.
pub const TARGETS_DIR: &str = "targets";

/// The file name of a target's manifest.
pub const MANIFEST_FILE: &str = "Serve.toml";

/// A cargo workspace, as `cargo metadata` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The workspace root: the folder of the root Cargo.toml.
    pub root: PathBuf,
    /// Cargo's target directory (honours `CARGO_TARGET_DIR` and `build.target-dir`).
    pub target_dir: PathBuf,
}

/// Why the workspace could not be read.
#[derive(Debug, Error, Diagnostic)]
pub enum WorkspaceError {
    /// `cargo metadata` failed (cargo missing, a broken Cargo.toml, …).
    #[error("`cargo metadata` failed in {}", dir.display())]
    #[diagnostic(
        code(vibeserve::workspace::metadata),
        help("run `cargo metadata --no-deps` there to see cargo's own message")
    )]
    Metadata {
        /// The folder it ran in.
        dir: PathBuf,
        /// cargo's error.
        #[source]
        source: cargo_metadata::Error,
    },

    /// A folder could not be listed.
    #[error("cannot list {}", dir.display())]
    #[diagnostic(code(vibeserve::workspace::read_dir))]
    ReadDir {
        /// The folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Workspace {
    /// The cargo workspace that `dir` is in, or `None` when no folder from `dir` up holds a
    /// Cargo.toml.
    pub fn discover(dir: &Path) -> Result<Option<Workspace>, WorkspaceError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !dir.ancestors().any(|d| d.join("Cargo.toml").is_file()) {
            return Ok(None);
        }
        let metadata = MetadataCommand::new()
            .current_dir(&dir)
            .no_deps()
            .exec()
            .map_err(|source| WorkspaceError::Metadata {
                dir: dir.clone(),
                source,
            })?;
        Ok(Some(Workspace {
            root: metadata.workspace_root.into_std_path_buf(),
            target_dir: metadata.target_directory.into_std_path_buf(),
        }))
    }

    /// The folder holding the committed targets, `<root>/targets`.
    pub fn targets_dir(&self) -> PathBuf {
        self.root.join(TARGETS_DIR)
    }

    /// The names of the committed targets (folders of `targets/` with a Serve.toml), sorted.
    pub fn targets(&self) -> Result<Vec<String>, WorkspaceError> {
        let dir = self.targets_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(WorkspaceError::ReadDir { dir, source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| WorkspaceError::ReadDir {
                dir: dir.clone(),
                source,
            })?;
            if entry.path().join(MANIFEST_FILE).is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The Serve.toml of the committed target `name`, if it exists.
    pub fn target_manifest(&self, name: &str) -> Option<PathBuf> {
        let path = self.targets_dir().join(name).join(MANIFEST_FILE);
        path.is_file().then_some(path)
    }
}
