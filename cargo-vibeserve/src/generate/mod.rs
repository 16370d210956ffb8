//! Generation: a `Plan` in, a standalone server crate out.
//!
//! Rendering is pure ([`render`]: plan + template → [`FileSet`]); pinning the lockfile
//! asks cargo, offline ([`lock::pin`]); writing is separate ([`FileSet::write`]), and so
//! is comparing with what is on disk ([`FileSet::diff`]), which `--check` and
//! `build --locked` use.

pub mod command;
pub mod lock;
pub mod render;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::plan::Plan;

pub use render::{package_name, render};
pub use template::Template;

/// The file that marks a folder as a generated crate (and so safe to rewrite).
const MARKER: &str = "Plan.toml";

/// Renders the crate for `plan`, lockfile included.
pub fn generate(plan: &Plan) -> Result<FileSet, GenerateError> {
    // A move may have changed the tensor-parallel degree to one the model cannot take.
    plan.check_tensor_parallel()?;
    let template = Template::embedded()?;
    let mut files = render(plan, &template)?;
    lock::pin(&mut files, &plan.target)?;
    Ok(files)
}

/// The files of a generated crate, by relative path (with `/`), in sorted order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSet(BTreeMap<String, Vec<u8>>);

/// How one file differs between a rendered [`FileSet`] and a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDiff {
    /// Rendered, but not on disk.
    Missing(String),
    /// On disk, but not rendered.
    Extra(String),
    /// On disk with other contents.
    Changed(String),
}

impl fmt::Display for FileDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileDiff::Missing(p) => write!(f, "missing: {p}"),
            FileDiff::Extra(p) => write!(f, "not generated: {p}"),
            FileDiff::Changed(p) => write!(f, "changed: {p}"),
        }
    }
}

impl<P: Into<String>, C: Into<Vec<u8>>> FromIterator<(P, C)> for FileSet {
    fn from_iter<I: IntoIterator<Item = (P, C)>>(files: I) -> FileSet {
        let mut set = FileSet::default();
        for (path, contents) in files {
            set.insert(path, contents.into());
        }
        set
    }
}

impl FileSet {
    /// Adds or replaces a file.
    pub fn insert(&mut self, path: impl Into<String>, contents: Vec<u8>) {
        self.0.insert(path.into(), contents);
    }

    /// The files, by relative path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(p, c)| (p.as_str(), c.as_slice()))
    }

    /// A file's contents.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.0.get(path).map(Vec::as_slice)
    }

    /// The sha256 of each file, by path.
    pub fn digests(&self) -> BTreeMap<&str, String> {
        self.iter()
            .map(|(p, c)| (p, hex::encode(Sha256::digest(c))))
            .collect()
    }

    /// The digest of the whole tree: sha256 over `"<sha256>  <path>\n"` lines in path order.
    pub fn tree_digest(&self) -> String {
        let listing: String = self
            .digests()
            .into_iter()
            .map(|(path, digest)| format!("{digest}  {path}\n"))
            .collect();
        hex::encode(Sha256::digest(listing.as_bytes()))
    }

    /// Writes the files under `dir`, removing files the set doesn't have.
    ///
    /// Refuses a non-empty folder that isn't a generated crate. Each file is written to
    /// a temporary name and renamed, so a killed run leaves whole files.
    pub fn write(&self, dir: &Path) -> Result<(), GenerateError> {
        if dir.exists() && !dir.join(MARKER).exists() && read_tree(dir)?.next().is_some() {
            return Err(GenerateError::NotGenerated(dir.to_path_buf()));
        }
        for path in read_tree(dir)?.collect::<Vec<_>>() {
            if !self.0.contains_key(&path) {
                let full = dir.join(&path);
                std::fs::remove_file(&full).map_err(|e| io(&full, e))?;
            }
        }
        for (path, contents) in self.iter() {
            let full = dir.join(path);
            if std::fs::read(&full).is_ok_and(|old| old == contents) {
                continue;
            }
            write_atomic(&full, contents)?;
        }
        Ok(())
    }

    /// Writes the files under `dir` with no checks (for scratch folders).
    fn write_plain(&self, dir: &Path) -> Result<(), GenerateError> {
        for (path, contents) in self.iter() {
            let full = dir.join(path);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            }
            std::fs::write(&full, contents).map_err(|e| io(&full, e))?;
        }
        Ok(())
    }

    /// How the folder `dir` differs from this set, in path order.
    pub fn diff(&self, dir: &Path) -> Result<Vec<FileDiff>, GenerateError> {
        let mut diffs = Vec::new();
        let on_disk: Vec<String> = read_tree(dir)?.collect();
        for (path, contents) in self.iter() {
            match std::fs::read(dir.join(path)) {
                Ok(old) if old == contents => {}
                Ok(_) => diffs.push(FileDiff::Changed(path.to_string())),
                Err(_) => diffs.push(FileDiff::Missing(path.to_string())),
            }
        }
        for path in on_disk {
            if !self.0.contains_key(&path) {
                diffs.push(FileDiff::Extra(path));
            }
        }
        diffs.sort_by(|a, b| diff_path(a).cmp(diff_path(b)));
        Ok(diffs)
    }
}

fn diff_path(d: &FileDiff) -> &str {
    match d {
        FileDiff::Missing(p) | FileDiff::Extra(p) | FileDiff::Changed(p) => p,
    }
}

/// Relative paths (with `/`) of the files under `dir`; empty if it doesn't exist.
fn read_tree(dir: &Path) -> Result<impl Iterator<Item = String>, GenerateError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&folder, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io(&folder, e))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out.into_iter())
}

/// Writes `contents` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), GenerateError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| io(parent, e))?;
    std::io::Write::write_all(&mut tmp, contents).map_err(|e| io(path, e))?;
    tmp.persist(path).map_err(|e| io(path, e.error))?;
    Ok(())
}

fn io(path: &Path, source: std::io::Error) -> GenerateError {
    GenerateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What went wrong generating a crate.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum GenerateError {
    /// The plan is not one the server can be built for.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// The embedded template is inconsistent.
    #[error("the server template is broken: {0}")]
    #[diagnostic(help("this is a bug in cargo-vibeserve; please report it"))]
    Template(String),
    /// The plan and the template's `src/plan.rs` disagree.
    #[error("the plan does not fit the template's src/plan.rs: {0}")]
    #[diagnostic(help("this is a bug in cargo-vibeserve; please report it"))]
    PlanConst(String),
    /// The plan enables a part the template doesn't have.
    #[error("the plan enables part `{part}`, which the template doesn't have (it has: {})", known.join(", "))]
    UnknownPart {
        /// The unknown part.
        part: String,
        /// The template's parts.
        known: Vec<String>,
    },
    /// rustfmt is missing or failed.
    #[error("rustfmt failed on generated code: {0}")]
    #[diagnostic(help("install it with `rustup component add rustfmt`"))]
    Rustfmt(String),
    /// `cargo metadata` failed while pinning the lockfile.
    #[error("cargo could not pin the generated crate's dependencies:\n{0}")]
    #[diagnostic(help(
        "cargo needs the registry's index for the pinned crates once; check the network, or run `cargo fetch` in the cargo-vibeserve workspace"
    ))]
    Cargo(String),
    /// The output folder holds something that isn't a generated crate.
    #[error("{} is not empty and holds no Plan.toml; refusing to overwrite it", .0.display())]
    #[diagnostic(help("choose an empty folder, or remove this one"))]
    NotGenerated(PathBuf),
    /// Reading or writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
