//! Compiling a candidate crate: `cargo build --release --offline` into the shared target
//! directory, then copying the binary out so rounds and targets never overwrite each other.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The generated crate's binary name.
pub const SERVER_BIN: &str = "server";
/// Lines of a failed build's output kept in the error.
const LOG_TAIL_LINES: usize = 30;

/// The cargo target directory generated crates build in: `CARGO_TARGET_DIR` if set, else
/// the workspace's (the parent of `<target dir>/vibeserve`), so that every round and the
/// workspace share compiled dependencies.
pub fn target_dir(vibeserve_dir: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => vibeserve_dir
            .parent()
            .map_or_else(|| vibeserve_dir.join("target"), Path::to_path_buf),
    }
}

/// The lock file every compile holds in the shared target directory, from `cargo build`
/// until its binary is copied out: every generated crate builds a binary named `server`
/// into the same `release/` folder, so two builds at once (two searches, or a search and
/// a test) could otherwise each copy out the other's binary.
const BUILD_LOCK: &str = ".vibeserve-build.lock";

/// Builds the crate in `crate_dir` and copies its server binary to `out` (through a
/// temporary name and a rename). Returns `out`.
pub fn compile(crate_dir: &Path, target_dir: &Path, out: &Path) -> Result<PathBuf, CompileError> {
    let lock_path = target_dir.join(BUILD_LOCK);
    let lock_err = |source| CompileError::Lock {
        path: lock_path.clone(),
        source,
    };
    std::fs::create_dir_all(target_dir).map_err(lock_err)?;
    let lock = std::fs::File::create(&lock_path).map_err(lock_err)?;
    lock.lock().map_err(lock_err)?; // released when `lock` drops, after the copy
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--offline",
            "--quiet",
            "--manifest-path",
        ])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .map_err(|source| CompileError::Spawn { source })?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = text.lines().collect();
        return Err(CompileError::Failed {
            crate_dir: crate_dir.to_path_buf(),
            log_tail: lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"),
        });
    }
    let built = target_dir.join("release").join(SERVER_BIN);
    let io = |source| CompileError::Copy {
        path: out.to_path_buf(),
        source,
    };
    let dir = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{SERVER_BIN}.tmp"));
    std::fs::copy(&built, &tmp).map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)?;
    Ok(out.to_path_buf())
}

/// Why a candidate did not compile.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CompileError {
    /// cargo could not be run.
    #[error("cannot run cargo")]
    Spawn {
        /// The underlying error.
        source: std::io::Error,
    },
    /// The build failed.
    #[error("{} does not build:\n{log_tail}", crate_dir.display())]
    Failed {
        /// The crate.
        crate_dir: PathBuf,
        /// The end of cargo's output.
        log_tail: String,
    },
    /// The shared target directory's build lock could not be taken.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The binary could not be copied out.
    #[error("cannot copy the server binary to {}: {source}", path.display())]
    Copy {
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
