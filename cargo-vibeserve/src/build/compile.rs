//! Compiling a candidate crate: `cargo build --release --offline` into the shared target
//! directory, then copying the binary out so rounds and targets never overwrite each other.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The name a built server is copied out under (`rounds/N/server`, `best/server`). In the
/// shared target directory each target's binary has its package's name, so that no
/// generated crate overwrites the workspace template's own `release/server`.
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
/// until its binary is copied out: every copy of a target's crate builds the same binary
/// into the same `release/` folder, so two builds at once (two searches, or a search and
/// a test) could otherwise each copy out the other's binary.
const BUILD_LOCK: &str = ".vibeserve-build.lock";
/// The crate folder the last compile in the shared target directory built, beside the lock.
///
/// Cargo names a package's compiled units by its name, version and path *relative to its
/// workspace root*, and a generated crate is its own workspace root: every copy of a
/// target's crate (two searches, a test's copy in a temp folder) shares one fingerprint
/// and one output in the shared target dir. That fingerprint lists the sources of the
/// copy that built it — relative to the target dir when that copy lives inside it, as
/// `target/vibeserve/<target>/server` does — so cargo checks *that* copy's files, and an
/// edit in any other copy is never seen: its build is called fresh and the other copy's
/// binary copied out. When the folder changes, the package's fingerprints are deleted.
const LAST_BUILT: &str = ".vibeserve-last-built";

/// The shared target directory held for one crate's build; released when dropped.
#[derive(Debug)]
pub struct BuildLock {
    _file: std::fs::File,
}

/// Takes the shared target directory's build lock for `crate_dir` (waiting for any other
/// build there) and makes cargo rebuild the crate's own units if another folder built
/// them last. Everything that builds a generated crate in that directory holds it: the
/// rounds' compiles and the agent's `cargo` tool.
pub fn lock_for(crate_dir: &Path, target_dir: &Path) -> Result<BuildLock, CompileError> {
    let lock_path = target_dir.join(BUILD_LOCK);
    let lock_err = |source| CompileError::Lock {
        path: lock_path.clone(),
        source,
    };
    std::fs::create_dir_all(target_dir).map_err(lock_err)?;
    let file = std::fs::File::create(&lock_path).map_err(lock_err)?;
    file.lock().map_err(lock_err)?;
    let last_built = target_dir.join(LAST_BUILT);
    claim_units(crate_dir, target_dir, &last_built).map_err(|source| CompileError::Claim {
        path: last_built,
        source,
    })?;
    Ok(BuildLock { _file: file })
}

/// Builds the crate in `crate_dir` and copies its server binary to `out` (through a
/// temporary name and a rename). Returns `out`.
pub fn compile(crate_dir: &Path, target_dir: &Path, out: &Path) -> Result<PathBuf, CompileError> {
    let _lock = lock_for(crate_dir, target_dir)?; // held until the binary is copied out
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--offline",
            "--quiet",
            // Artifacts as JSON on stdout (the binary's path), diagnostics as text on stderr.
            "--message-format=json-render-diagnostics",
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
    let built = built_binary(&output.stdout).ok_or_else(|| CompileError::NoBinary {
        crate_dir: crate_dir.to_path_buf(),
    })?;
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

/// The executable cargo reported building (the crate has one binary target).
fn built_binary(cargo_stdout: &[u8]) -> Option<PathBuf> {
    cargo_metadata::Message::parse_stream(cargo_stdout)
        .filter_map(Result::ok)
        .find_map(|message| match message {
            cargo_metadata::Message::CompilerArtifact(artifact) => artifact.executable,
            _ => None,
        })
        .map(PathBuf::from)
}

/// Makes cargo rebuild `crate_dir`'s own units when another folder built them last (see
/// [`LAST_BUILT`]): the package's fingerprints go, in every profile of `target_dir`, so
/// cargo has nothing to call fresh. Its dependencies' units are untouched.
fn claim_units(crate_dir: &Path, target_dir: &Path, last_built: &Path) -> std::io::Result<()> {
    let me = std::fs::canonicalize(crate_dir)?;
    let last = std::fs::read(last_built).unwrap_or_default();
    if last == me.as_os_str().as_encoded_bytes() {
        return Ok(());
    }
    let package = package_name(&me)?;
    for profile in std::fs::read_dir(target_dir)? {
        let fingerprints = profile?.path().join(".fingerprint");
        let Ok(units) = std::fs::read_dir(&fingerprints) else {
            continue; // not a profile folder (vibeserve/, tmp/, ...)
        };
        for unit in units {
            let unit = unit?;
            if is_unit_of(&unit.file_name().to_string_lossy(), &package) {
                std::fs::remove_dir_all(unit.path())?;
            }
        }
    }
    std::fs::write(last_built, me.as_os_str().as_encoded_bytes())
}

/// The `[package] name` of the crate in `crate_dir`.
fn package_name(crate_dir: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(crate_dir.join("Cargo.toml"))?;
    let manifest: toml::Table = toml::from_str(&text).map_err(std::io::Error::other)?;
    manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| std::io::Error::other("Cargo.toml has no [package] name"))
}

/// Whether a `.fingerprint` entry is one of `package`'s units: `<package>-<16 hex digits>`
/// (a longer package name that starts with the same words is another package).
fn is_unit_of(entry: &str, package: &str) -> bool {
    entry
        .strip_prefix(package)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
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
    /// Another copy's compiled units of the crate could not be forgotten.
    #[error("cannot mark the crate as the last one built in {}: {source}", path.display())]
    Claim {
        /// The record of the last crate built.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// cargo built no executable.
    #[error("cargo reported no binary built from {}", crate_dir.display())]
    NoBinary {
        /// The crate.
        crate_dir: PathBuf,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write_crate(dir: &Path, says: &str) {
        std::fs::create_dir_all(dir.join("src")).expect("mkdir");
        let manifest = format!(
            "[package]\nname = \"same-name\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\
             [[bin]]\nname = \"{SERVER_BIN}\"\npath = \"src/main.rs\"\n[workspace]\n"
        );
        std::fs::write(dir.join("Cargo.toml"), manifest).expect("write");
        let main = format!("fn main() {{ println!(\"{says}\"); }}\n");
        std::fs::write(dir.join("src/main.rs"), main).expect("write");
    }

    fn says(bin: &Path) -> String {
        // While another test's forked child still holds the binary's write handle (before
        // its exec closes it), running it fails with ETXTBSY: wait that moment out.
        for _ in 0..100 {
            match Command::new(bin).output() {
                Ok(out) => return String::from_utf8_lossy(&out.stdout).trim().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{} does not run: {e}", bin.display()),
            }
        }
        panic!("{} stayed busy", bin.display())
    }

    #[test]
    fn a_copy_edited_before_another_copy_was_built_is_rebuilt() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let (a, b, target) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("t"),
        );
        write_crate(&a, "a");
        write_crate(&b, "b");
        let out = tmp.path().join("out");
        assert_eq!(says(&compile(&a, &target, &out).expect("builds")), "a");
        assert_eq!(says(&compile(&b, &target, &out).expect("builds")), "b");
        // Edit a, then let b build again after the edit: plain cargo would now call a
        // fresh (its sources are older than the unit's last build, b's) and copy out b.
        write_crate(&a, "a, edited");
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::File::options()
            .append(true)
            .open(b.join("src/main.rs"))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .expect("touch");
        assert_eq!(says(&compile(&b, &target, &out).expect("builds")), "b");
        assert_eq!(
            says(&compile(&a, &target, &out).expect("builds")),
            "a, edited"
        );
    }

    #[test]
    fn a_copy_built_after_one_inside_the_target_dir_is_rebuilt() {
        // A crate inside the target dir (as `target/vibeserve/<target>/server` is) leaves
        // a fingerprint whose sources are relative to the target dir, so cargo checks its
        // files, not the other copy's, however new those are.
        let tmp = tempfile::tempdir().expect("a temp dir");
        let target = tmp.path().join("t");
        let (inside, outside) = (target.join("vibeserve/server"), tmp.path().join("b"));
        write_crate(&inside, "inside");
        let out = tmp.path().join("out");
        assert_eq!(
            says(&compile(&inside, &target, &out).expect("builds")),
            "inside"
        );
        write_crate(&outside, "outside");
        assert_eq!(
            says(&compile(&outside, &target, &out).expect("builds")),
            "outside"
        );
    }

    #[test]
    fn only_the_packages_own_units_are_its_fingerprints() {
        assert!(is_unit_of(
            "vibeserve-smollm2-cpu-2f82fefee6f73792",
            "vibeserve-smollm2-cpu"
        ));
        assert!(!is_unit_of(
            "vibeserve-smollm2-cpu-x2-2f82fefee6f73792",
            "vibeserve-smollm2-cpu"
        ));
        assert!(!is_unit_of(
            "vibeserve-smollm2-cpu",
            "vibeserve-smollm2-cpu"
        ));
        assert!(!is_unit_of(
            "serde-2f82fefee6f73792",
            "vibeserve-smollm2-cpu"
        ));
    }
}
