//! Serve.lock: what `build --locked` needs to rebuild the best server with no search.
//!
//! Written beside Serve.toml after each accepted round, atomically, and committed. It
//! holds the tool version, the digests of the embedded template and of the model, the
//! round-0 plan's digest, every accepted round in order (its skill, its move as concrete
//! plan changes or as a patch file with its digest, its verdict and metrics), and the
//! digest of the final crate's tree. [`replay`] rebuilds the final plan from round 0.
//! Maps are `BTreeMap`s and rounds are in round order, so the text is deterministic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::generate::{FileSet, GenerateError, Template, write_atomic};
use crate::plan::Plan;
use crate::search::Verdict;
use crate::skills::{Change, ChangeError, change};
use crate::state::AttemptRecord;

/// Version of the Serve.lock schema this tool writes and reads.
pub const LOCK_VERSION: u32 = 1;

/// The lockfile's name, beside Serve.toml.
pub const LOCK_FILE: &str = "Serve.lock";

/// The header comment of every Serve.lock.
const HEADER: &str = "# Written by cargo-vibeserve after each accepted round; commit it beside Serve.toml.\n\
                      # `cargo vibeserve build --locked` rebuilds the server from it. Do not edit.\n\n";

/// A whole Serve.lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Schema version (see [`LOCK_VERSION`]).
    pub version: u32,
    /// The cargo-vibeserve version that wrote it.
    pub tool: String,
    /// The target's name.
    pub target: String,
    /// sha256 over the embedded template's files (see [`template_digest`]).
    pub template: String,
    /// sha256 of the model file.
    pub model: String,
    /// Digest of the round-0 plan the rounds are replayed on.
    pub round0_plan: String,
    /// The accepted rounds, in round order.
    #[serde(default)]
    pub rounds: Vec<LockedRound>,
    /// The final crate's tree digest (`FileSet::tree_digest`).
    pub tree: String,
    /// sha256 of each file of the final crate, by path: lets `build --locked` on a clean
    /// clone (with no state repository) name the first file that drifted.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// One accepted round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedRound {
    /// The round number.
    pub round: u32,
    /// The skill that was applied.
    pub skill: String,
    /// The move as a reader sees it.
    #[serde(rename = "move")]
    pub label: String,
    /// Its verdict (always `accepted` for a locked round).
    pub verdict: Verdict,
    /// The plan changes, in order (built-in Implementer); empty for a patch round.
    #[serde(default)]
    pub changes: Vec<Change>,
    /// The patch an LLM Implementer wrote, for a patch round.
    pub patch: Option<PatchRef>,
    /// The metrics measured for it, by name.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

impl LockedRound {
    /// The locked round of an accepted attempt made by the built-in Implementer; `None`
    /// for any other verdict and for round 0.
    pub fn from_record(record: &AttemptRecord) -> Option<LockedRound> {
        if record.verdict != Verdict::Accepted {
            return None;
        }
        Some(LockedRound {
            round: record.round,
            skill: record.skill.clone()?,
            label: record.label.clone().unwrap_or_default(),
            verdict: record.verdict,
            changes: record.changes.clone(),
            patch: None,
            metrics: record.metrics.clone(),
        })
    }
}

/// A patch file recorded in the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRef {
    /// The patch's path, relative to the Serve.toml's folder.
    pub path: String,
    /// Its sha256, hex.
    pub sha256: String,
}

/// The lockfile beside the Serve.toml at `manifest`.
pub fn lock_path(manifest: &Path) -> PathBuf {
    manifest.with_file_name(LOCK_FILE)
}

/// sha256 over `"<sha256>  <path>\n"` lines of every embedded template file in path order,
/// then the workspace Cargo.lock that pins the generated crates' dependencies.
pub fn template_digest() -> Result<String, GenerateError> {
    let template = Template::embedded()?;
    let mut listing = String::new();
    for (path, bytes) in &template.files {
        listing.push_str(&format!("{}  {path}\n", hex::encode(Sha256::digest(bytes))));
    }
    let lock = crate::generate::template::WORKSPACE_LOCK;
    listing.push_str(&format!(
        "{}  Cargo.lock\n",
        hex::encode(Sha256::digest(lock))
    ));
    Ok(hex::encode(Sha256::digest(listing.as_bytes())))
}

impl Lock {
    /// A lock with no rounds yet: this tool and its template, the model's digest, and
    /// round 0's plan and crate.
    pub fn new(
        model_sha256: &str,
        round0: &Plan,
        round0_files: &FileSet,
    ) -> Result<Lock, GenerateError> {
        Ok(Lock {
            version: LOCK_VERSION,
            tool: env!("CARGO_PKG_VERSION").to_string(),
            target: round0.target.clone(),
            template: template_digest()?,
            model: model_sha256.to_string(),
            round0_plan: round0.digest().to_string(),
            rounds: Vec::new(),
            tree: round0_files.tree_digest(),
            files: file_digests(round0_files),
        })
    }

    /// Records an accepted round and the digests of its crate.
    pub fn accept(&mut self, round: LockedRound, files: &FileSet) {
        self.rounds.push(round);
        self.tree = files.tree_digest();
        self.files = file_digests(files);
    }

    /// Serve.lock's text. Deterministic.
    pub fn to_toml(&self) -> String {
        // Plain structs of strings, numbers and BTreeMaps always serialise.
        let body = toml::to_string(self).expect("a Lock always serialises to TOML");
        format!("{HEADER}{body}")
    }

    /// Parses Serve.lock's text.
    pub fn from_toml(text: &str) -> Result<Lock, LockError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let found = toml::from_str::<Versioned>(text)
            .map_err(|e| LockError::Parse(e.message().to_string()))?
            .version;
        if found != LOCK_VERSION {
            return Err(LockError::Version { found });
        }
        toml::from_str(text).map_err(|e| LockError::Parse(e.to_string()))
    }

    /// Reads the lockfile at `path`.
    pub fn read(path: &Path) -> Result<Lock, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Lock::from_toml(&text).map_err(|e| e.at(path))
    }

    /// Writes the lockfile to `path` through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        write_atomic(path, self.to_toml().as_bytes()).map_err(LockError::Write)
    }
}

/// Each file's sha256 by path, as Serve.lock records them.
pub fn file_digests(files: &FileSet) -> BTreeMap<String, String> {
    files
        .digests()
        .into_iter()
        .map(|(path, digest)| (path.to_string(), digest))
        .collect()
}

/// The final plan and the patches to apply on top of its crate, in round order.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The plan after every recorded change.
    pub plan: Plan,
    /// The patch rounds' patches, in round order.
    pub patches: Vec<PatchRef>,
}

/// Rebuilds the final plan: `round0` (which must have the lock's round-0 digest) with
/// every locked round's changes applied in order.
pub fn replay(lock: &Lock, round0: &Plan) -> Result<Replay, LockError> {
    let digest = round0.digest().to_string();
    if digest != lock.round0_plan {
        return Err(LockError::Round0Drift {
            locked: lock.round0_plan.clone(),
            found: digest,
        });
    }
    let mut plan = round0.clone();
    let mut patches = Vec::new();
    for round in &lock.rounds {
        plan = change::apply_all(&plan, &round.changes).map_err(|source| LockError::Replay {
            round: round.round,
            source,
        })?;
        patches.extend(round.patch.clone());
    }
    Ok(Replay { plan, patches })
}

/// What went wrong reading, writing or replaying Serve.lock.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LockError {
    /// The text is not a valid Serve.lock.
    #[error("Serve.lock is not valid: {0}")]
    #[diagnostic(help(
        "Serve.lock is written by `cargo vibeserve build`; rebuild it with `--relock`"
    ))]
    Parse(String),
    /// The same, with the file named.
    #[error("{} is not valid: {message}", path.display())]
    #[diagnostic(help(
        "Serve.lock is written by `cargo vibeserve build`; rebuild it with `--relock`"
    ))]
    ParseAt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Written by an incompatible version of the tool.
    #[error(
        "Serve.lock has schema version {found}; this cargo-vibeserve reads version {LOCK_VERSION}"
    )]
    #[diagnostic(help("rebuild it with `cargo vibeserve build --relock`"))]
    Version {
        /// The version found.
        found: u32,
    },
    /// The round-0 plan differs from the one the lock was made on.
    #[error("the round-0 plan changed since Serve.lock was written (locked {locked}, now {found})")]
    #[diagnostic(help(
        "the model, Serve.toml or the tool's defaults changed; rerun with `--relock`"
    ))]
    Round0Drift {
        /// The digest in the lock.
        locked: String,
        /// The digest of today's round-0 plan.
        found: String,
    },
    /// A locked change no longer applies to the plan.
    #[error("round {round} of Serve.lock no longer applies: {source}")]
    #[diagnostic(help("the plan's fields changed; rerun with `--relock`"))]
    Replay {
        /// The round.
        round: u32,
        /// Why.
        source: ChangeError,
    },
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Write(GenerateError),
}

impl LockError {
    /// Names the file in a parse error.
    fn at(self, path: &Path) -> LockError {
        match self {
            LockError::Parse(message) => LockError::ParseAt {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        }
    }
}
