//! `cargo vibeserve check [TARGET]`: find the target, validate it, print a summary. Also the
//! TARGET argument and its lookup, which every command that takes a target shares.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::error::ManifestError;
use super::types::{Arrival, Hardware, Manifest, ModelSource};
use crate::workspace::{MANIFEST_FILE, Workspace};

/// The TARGET argument shared by every command that works on a target.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArg {
    /// A Serve.toml, a folder holding one, or the name of a target under the workspace's
    /// `targets/` (default: ./Serve.toml)
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,
}

impl TargetArg {
    /// Find and load the target, resolving TARGET from the current folder.
    pub fn load(&self) -> Result<Manifest, ManifestError> {
        let cwd = std::env::current_dir().map_err(|source| ManifestError::Read {
            path: PathBuf::from("."),
            source,
        })?;
        Manifest::load(&locate(self.target.as_deref(), &cwd)?)
    }
}

/// Arguments of `cargo vibeserve check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Which target to check.
    #[command(flatten)]
    pub target: TargetArg,
}

/// The Serve.toml that TARGET names, seen from `cwd`: a file, a folder holding a Serve.toml,
/// or a target name under the workspace's `targets/`; `None` means `./Serve.toml`.
/// Relative paths are returned relative (so messages show them as the user typed them).
pub fn locate(target: Option<&str>, cwd: &Path) -> Result<PathBuf, ManifestError> {
    let Some(target) = target else {
        let path = PathBuf::from(MANIFEST_FILE);
        return if cwd.join(&path).is_file() {
            Ok(path)
        } else {
            Err(ManifestError::NoManifest {
                dir: PathBuf::from("."),
            })
        };
    };
    let given = PathBuf::from(target);
    let on_disk = cwd.join(&given);
    if on_disk.is_file() {
        return Ok(given);
    }
    if on_disk.is_dir() {
        let path = given.join(MANIFEST_FILE);
        return if cwd.join(&path).is_file() {
            Ok(path)
        } else {
            Err(ManifestError::NoManifest { dir: given })
        };
    }
    let workspace = Workspace::discover(cwd)?;
    let (targets_dir, found) = match &workspace {
        Some(ws) => {
            if let Some(path) = ws.target_manifest(target) {
                return Ok(path
                    .strip_prefix(cwd)
                    .map_or_else(|_| path.clone(), Path::to_path_buf));
            }
            (ws.targets_dir(), ws.targets()?)
        }
        None => (PathBuf::from(crate::workspace::TARGETS_DIR), Vec::new()),
    };
    let targets_dir = targets_dir
        .strip_prefix(cwd)
        .map_or(targets_dir.clone(), Path::to_path_buf);
    Err(ManifestError::TargetNotFound {
        target: target.to_string(),
        targets_dir,
        found,
    })
}

/// Run `cargo vibeserve check`: validate the target and print its summary to stdout.
pub fn check(args: &CheckArgs) -> Result<(), ManifestError> {
    let manifest = args.target.load()?;
    print!("{}", summary(&manifest));
    Ok(())
}

/// `path` relative to the manifest's folder when it is inside it, for display.
fn shown(manifest: &Manifest, path: &Path) -> String {
    path.strip_prefix(&manifest.dir)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `n thing` or `n things`.
fn count(n: u32, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// The rows of the summary, one per table.
fn rows(m: &Manifest) -> Vec<(&'static str, String)> {
    let source = match &m.model.source {
        ModelSource::Path(p) => format!("file {}", shown(m, p)),
        ModelSource::Pip { spec, file } => format!("pip {spec}, file {file}"),
        ModelSource::Dummy { config, seed } => {
            format!("dummy weights shaped by {}, seed {seed}", shown(m, config))
        }
    };
    let hardware = match &m.hardware {
        Hardware::Cpu { threads, isa } => format!("cpu, {}, isa {isa}", count(*threads, "thread")),
        Hardware::Cuda { arch, gpus } => format!("cuda {arch}, {}", count(*gpus, "GPU")),
    };
    let arrival = match m.workload.arrival {
        Arrival::Concurrency(n) => format!("concurrency {n}"),
        Arrival::Poisson { rate, seed } => format!("Poisson {rate} requests/s, seed {seed}"),
    };
    let bench = &m.benchmark;
    let constraints: Vec<String> = bench.constraints.iter().map(ToString::to_string).collect();
    let peer = bench
        .peer
        .map_or("no peer".to_string(), |p| format!("peer {p}"));
    let accuracy = m.accuracy.as_ref().map_or("none".to_string(), |a| {
        format!("{} (golden {})", a.command.join(" "), shown(m, &a.golden))
    });
    let agent = match &m.agent {
        Some(agent) => format!("openai agent, model {}", agent.model),
        None => "builtin agent".to_string(),
    };
    let search = &m.search;
    let mut rows = vec![("model", format!("{} from {source}", m.model.format))];
    rows.extend(m.model.sha256.clone().map(|sha| ("sha256", sha)));
    rows.extend([
        ("hardware", hardware),
        (
            "workload",
            format!("{}, {arrival}", shown(m, &m.workload.requests)),
        ),
        ("objective", bench.objective.to_string()),
        (
            "constraints",
            if constraints.is_empty() {
                "none".into()
            } else {
                constraints.join(", ")
            },
        ),
        (
            "benchmark",
            format!("{}, {peer}", count(bench.repetitions, "repetition")),
        ),
        ("accuracy", accuracy),
        (
            "search",
            format!(
                "{}, {}, {agent}, seed {}",
                search.policy,
                count(search.rounds, "round"),
                search.seed
            ),
        ),
    ]);
    rows
}

/// A few lines saying what the target is, as `check` prints them.
pub fn summary(manifest: &Manifest) -> String {
    let mut out = format!(
        "{} is valid (Serve.toml version {})\n",
        manifest.target.name, manifest.target.version
    );
    for (key, value) in rows(manifest) {
        let _ = writeln!(out, "  {key:<12} {value}");
    }
    out
}
