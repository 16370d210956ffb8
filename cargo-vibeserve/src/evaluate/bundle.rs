//! The bundle that carries a batch of round candidates from the machine that builds them
//! to the one that runs them, and the results that come back.
//!
//! `build --stage DIR` writes `DIR/bundle.json` ([`Bundle`]), the binaries it names
//! (stripped, xz-compressed) and a copy of the target's public files; `evaluate DIR`
//! judges and measures every candidate there and writes `DIR/results.json`
//! ([`Results`]); `build --resume DIR` records them. Both files are plain JSON, so a
//! person can read what was tried and what came back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::search::{Hints, Verdict};
use crate::skills::Change;

/// The bundle's manifest, in the bundle's folder.
pub const BUNDLE_FILE: &str = "bundle.json";
/// What `evaluate` writes, in the bundle's folder.
pub const RESULTS_FILE: &str = "results.json";
/// The schema version both files carry; a reader refuses any other.
pub const BUNDLE_VERSION: u32 = 1;
/// The `cargo-vibeserve` binary in the bundle (xz-compressed): unpack it with
/// `xz -dk DIR/cargo-vibeserve.xz` and run `DIR/cargo-vibeserve vibeserve evaluate DIR`.
pub const TOOL_FILE: &str = "cargo-vibeserve.xz";
/// The folder the bundle's binaries are unpacked into.
pub const BIN_DIR: &str = "bin";

/// What `build --stage` made: the target, the incumbent and the candidates to try.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Schema version ([`BUNDLE_VERSION`]).
    pub version: u32,
    /// The target's name.
    pub target: String,
    /// The target's Serve.toml inside the bundle, relative to the bundle's folder.
    pub manifest: String,
    /// The model's digest as Serve.lock records it (checked again by `--resume`).
    pub model_digest: String,
    /// The dummy model generator (`materialize`, xz) when the model is a `dummy` source.
    pub materialize: Option<String>,
    /// Round 0's server (xz): the trusted reference of the memorised-answers probe.
    pub reference: String,
    /// The round every candidate was planned against and is measured against.
    pub incumbent_round: u32,
    /// The incumbent's server (xz).
    pub incumbent: String,
    /// Whether round 0 (the incumbent) has no measurement yet: `evaluate` judges it and
    /// records its figures as the baseline.
    pub baseline: bool,
    /// The candidates, in round order.
    pub candidates: Vec<BundleCandidate>,
}

/// One staged round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleCandidate {
    /// The round number.
    pub round: u32,
    /// The skill tried.
    pub skill: String,
    /// The move, as a reader sees it.
    #[serde(rename = "move")]
    pub label: String,
    /// The concrete changes to the incumbent's plan.
    pub changes: Vec<Change>,
    /// The candidate plan's digest.
    pub plan: String,
    /// The generated crate's tree digest.
    pub tree: String,
    /// The server (xz), or `None` when the crate did not build.
    pub binary: Option<String>,
    /// Why the crate did not build, when it did not.
    pub build_error: Option<String>,
}

/// What `evaluate` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// Schema version ([`BUNDLE_VERSION`]).
    pub version: u32,
    /// The target's name (the bundle's).
    pub target: String,
    /// Where it ran: the GPUs `nvidia-smi` lists, or `cpu`.
    pub device: String,
    /// The objective's metric name.
    pub metric: String,
    /// The sha256 of the bundle.json these results are of ([`bundle_digest`]): a rerun
    /// of `evaluate` reuses an interrupted run's judgements only for the same bundle.
    #[serde(default)]
    pub bundle: Option<String>,
    /// Round 0's verdict and figures, when the bundle asked for a baseline.
    pub baseline: Option<CandidateResult>,
    /// Every candidate's verdict and figures, in round order.
    pub candidates: Vec<CandidateResult>,
    /// The repetitions of a benchmark still under way (or cut short), so that a rerun
    /// goes on from them; absent once the benchmark is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measuring: Option<Measuring>,
}

/// The repetitions a benchmark finished so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measuring {
    /// The servers measured, by round: the incumbent's first, then each candidate's.
    pub rounds: Vec<u32>,
    /// Each server's repetitions so far, in the same order.
    pub measured: Vec<crate::evaluate::Measurement>,
}

/// One candidate's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateResult {
    /// The round number.
    pub round: u32,
    /// The verdict by a local round's rules, against the incumbent alone.
    pub verdict: Verdict,
    /// The objective's median, when measured.
    pub objective: Option<f64>,
    /// The key metrics' medians (and `ratio_vs_best`), when measured.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The objective in each repetition, when measured.
    #[serde(default)]
    pub reps: Vec<f64>,
    /// The Evaluator's hints, when measured.
    pub hints: Option<Hints>,
    /// Why it was rejected, when it was.
    pub reason: Option<String>,
    /// The Judge's probes.
    #[serde(default)]
    pub probes: Vec<ProbeResult>,
}

/// One probe's outcome, as results.json keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeResult {
    /// The probe's name.
    pub probe: String,
    /// Whether it passed.
    pub passed: bool,
    /// What it measured, or why it failed.
    pub detail: String,
}

impl From<&crate::judge::ProbeOutcome> for ProbeResult {
    fn from(o: &crate::judge::ProbeOutcome) -> ProbeResult {
        ProbeResult {
            probe: o.probe.as_str().to_string(),
            passed: o.passed,
            detail: o.detail.clone(),
        }
    }
}

/// Reads `DIR/<name>` as JSON of schema [`BUNDLE_VERSION`].
pub fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, BundleError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io {
        path: path.clone(),
        source,
    })?;
    let version: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| BundleError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let found = version["version"].as_u64().unwrap_or(0);
    if found != u64::from(BUNDLE_VERSION) {
        return Err(BundleError::Version { path, found });
    }
    serde_json::from_str(&text).map_err(|e| BundleError::Parse {
        path,
        message: e.to_string(),
    })
}

/// The sha256 (hex) of `DIR/bundle.json` as it is on disk.
pub fn bundle_digest(dir: &Path) -> Result<String, BundleError> {
    use sha2::Digest;
    let path = dir.join(BUNDLE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| BundleError::Io { path, source })?;
    Ok(hex::encode(sha2::Sha256::digest(bytes)))
}

/// Writes `value` as pretty JSON to `DIR/<name>` (through a temporary file and a rename).
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), BundleError> {
    let path = dir.join(name);
    // Plain structs of strings, numbers and maps always serialise.
    let text = serde_json::to_string_pretty(value).expect("bundle types serialise") + "\n";
    crate::generate::write_atomic(&path, text.as_bytes()).map_err(|e| BundleError::Io {
        path,
        source: std::io::Error::other(e.to_string()),
    })
}

/// Compresses `from` into `to` with `xz` (kept beside nothing else: `from` stays).
pub fn xz_compress(from: &Path, to: &Path) -> Result<(), BundleError> {
    let out = std::fs::File::create(to).map_err(|source| BundleError::Io {
        path: to.to_path_buf(),
        source,
    })?;
    run_tool(
        std::process::Command::new("xz")
            .args(["-T0", "-3", "-c"])
            .arg(from)
            .stdout(out),
        "xz",
    )
}

/// Unpacks the xz file `DIR/<name>` into `DIR/bin/` (once) and returns the binary's path.
pub fn unpack(dir: &Path, name: &str) -> Result<PathBuf, BundleError> {
    let stem = name.strip_suffix(".xz").unwrap_or(name);
    let to = dir.join(BIN_DIR).join(stem);
    if to.is_file() {
        return Ok(to);
    }
    let io = |source| BundleError::Io {
        path: to.clone(),
        source,
    };
    std::fs::create_dir_all(dir.join(BIN_DIR)).map_err(io)?;
    let tmp = to.with_extension("tmp");
    let out = std::fs::File::create(&tmp).map_err(io)?;
    run_tool(
        std::process::Command::new("xz")
            .args(["-dc"])
            .arg(dir.join(name))
            .stdout(out),
        "xz -d",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    std::fs::rename(&tmp, &to).map_err(io)?;
    Ok(to)
}

/// Runs an external tool (`xz`, `strip`), failing with its stderr.
pub fn run_tool(command: &mut std::process::Command, name: &str) -> Result<(), BundleError> {
    let output = command
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| BundleError::Tool {
            tool: name.to_string(),
            message: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(BundleError::Tool {
        tool: name.to_string(),
        message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// What went wrong reading or writing a bundle.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not the JSON it should be.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file of another schema version.
    #[error("{}: schema version {found}, this tool reads {BUNDLE_VERSION}", path.display())]
    #[diagnostic(help("stage, evaluate and resume with the same cargo-vibeserve version"))]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
    },
    /// An external tool failed.
    #[error("`{tool}` failed: {message}")]
    #[diagnostic(help("the bundle's binaries are stripped with `strip` and packed with `xz`"))]
    Tool {
        /// The tool.
        tool: String,
        /// Its stderr, or why it could not run.
        message: String,
    },
    /// The bundle does not fit the state or the target it is resumed into.
    #[error("{0}")]
    #[diagnostic(help(
        "resume a bundle into the state it was staged from, after `evaluate` wrote results.json"
    ))]
    Mismatch(String),
}
