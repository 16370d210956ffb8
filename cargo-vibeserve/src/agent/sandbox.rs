//! The agent's workspace: every path it names is resolved inside the candidate crate or
//! refused, and the commands it may run (cargo on that crate) run with a time limit,
//! truncated output, no API key in their environment, and, where the kernel has
//! Landlock, no write access outside the workspace and the build directory.

use std::os::unix::process::CommandExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    path_beneath_rules,
};

/// Most bytes of a command's output the model sees: the start and, mostly, the end
/// (where cargo puts its errors).
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;
/// Of [`MAX_OUTPUT_BYTES`], how many come from the start of the output.
const HEAD_BYTES: usize = 4 * 1024;
/// How often a running command is polled for exit.
const POLL: Duration = Duration::from_millis(50);
/// The Landlock ABI the rules are written for; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V3;

/// The candidate crate the agent works in.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

/// A path the agent may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRefused {
    /// An absolute path.
    #[error("`{0}` is absolute; paths are relative to the crate root")]
    Absolute(String),
    /// A `..` component.
    #[error("`{0}` leaves the crate (`..` is not allowed)")]
    Parent(String),
    /// A symlink on the way that points outside the crate.
    #[error("`{0}` goes through a symlink that leaves the crate")]
    Symlink(String),
    /// A path the agent may read but not change.
    #[error("`{0}` is read-only for the agent")]
    ReadOnly(String),
    /// An empty path.
    #[error("an empty path")]
    Empty,
}

/// Files the agent may read but never change: the crate's record of its plan.
pub const READ_ONLY: [&str; 1] = ["Plan.toml"];

impl Workspace {
    /// The workspace rooted at `root` (which must exist).
    pub fn new(root: &Path) -> std::io::Result<Workspace> {
        Ok(Workspace {
            root: root.canonicalize()?,
        })
    }

    /// The crate's folder, canonical.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` resolved inside the workspace, for reading.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, PathRefused> {
        let path = Path::new(rel);
        if rel.is_empty() {
            return Err(PathRefused::Empty);
        }
        if path.is_absolute() || path.has_root() {
            return Err(PathRefused::Absolute(rel.into()));
        }
        let mut full = self.root.clone();
        for part in path.components() {
            match part {
                Component::Normal(name) => full.push(name),
                Component::CurDir => {}
                _ => return Err(PathRefused::Parent(rel.into())),
            }
            // Every existing step is checked, so a symlink in the middle is caught too.
            if full
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                let inside = full.canonicalize().is_ok_and(|c| c.starts_with(&self.root));
                if !inside {
                    return Err(PathRefused::Symlink(rel.into()));
                }
            }
        }
        Ok(full)
    }

    /// `rel` resolved inside the workspace, for writing: also refuses read-only files.
    pub fn resolve_writable(&self, rel: &str) -> Result<PathBuf, PathRefused> {
        let full = self.resolve(rel)?;
        let normal = full.strip_prefix(&self.root).unwrap_or(&full);
        if READ_ONLY.iter().any(|r| normal == Path::new(r)) {
            return Err(PathRefused::ReadOnly(rel.into()));
        }
        Ok(full)
    }

    /// The path relative to the root, with `/`, of a file inside the workspace.
    pub fn relative(&self, full: &Path) -> String {
        full.strip_prefix(&self.root)
            .unwrap_or(full)
            .to_string_lossy()
            .replace('\\', "/")
    }
}

/// How a command ended, as the model is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when killed (time limit) or ended by a signal.
    pub code: Option<i32>,
    /// Whether it ran past its time limit and was killed.
    pub timed_out: bool,
    /// stdout then stderr, truncated to [`MAX_OUTPUT_BYTES`].
    pub output: String,
    /// Whether Landlock confined it.
    pub landlocked: bool,
}

/// What a confined command may write, and what it must not inherit.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// Folders it may write under (the workspace, the build directory).
    pub writable: Vec<PathBuf>,
    /// Environment variables removed from its environment (the API key's).
    pub hidden_env: Vec<String>,
    /// Its time limit.
    pub timeout: Duration,
}

/// Runs `cmd` in its own process group under `confinement`, killing the group at the
/// time limit.
pub fn run(mut cmd: Command, confinement: &Confinement) -> std::io::Result<CommandOutput> {
    for name in &confinement.hidden_env {
        cmd.env_remove(name);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let landlocked = confine(&mut cmd, &confinement.writable);
    let mut child = cmd.spawn()?;
    let readers = [
        child
            .stdout
            .take()
            .map(|s| std::thread::spawn(move || drain(s))),
        child
            .stderr
            .take()
            .map(|s| std::thread::spawn(move || drain(s))),
    ];
    let start = Instant::now();
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (Some(status), false);
        }
        if start.elapsed() >= confinement.timeout {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(POLL);
    };
    let mut text = Vec::new();
    for reader in readers.into_iter().flatten() {
        text.extend(reader.join().unwrap_or_default());
    }
    Ok(CommandOutput {
        code: status.and_then(|s| s.code()),
        timed_out,
        output: truncate(&String::from_utf8_lossy(&text)),
        landlocked,
    })
}

fn drain(mut from: impl std::io::Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = from.read_to_end(&mut buf);
    buf
}

/// Kills the process group `pgid` (cargo's rustc and build-script children with it).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Installs Landlock rules for the child: read and execute everywhere, write only under
/// `writable` and `/dev` (for `/dev/null`). Returns whether the kernel enforces them.
fn confine(cmd: &mut Command, writable: &[PathBuf]) -> bool {
    let Ok(ruleset) = landlock_rules(writable) else {
        return false;
    };
    let mut ruleset: Option<RulesetCreated> = Some(ruleset);
    // SAFETY: the closure runs in the forked child before exec; restrict_self only
    // calls prctl and landlock_restrict_self on its success path, which are safe there.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(r) = ruleset.take() {
                r.restrict_self().map_err(std::io::Error::other)?;
            }
            Ok(())
        });
    }
    landlock_supported()
}

fn landlock_rules(writable: &[PathBuf]) -> Result<RulesetCreated, landlock::RulesetError> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let mut dirs: Vec<&Path> = writable.iter().map(PathBuf::as_path).collect();
    dirs.push(Path::new("/dev"));
    Ruleset::default()
        .handle_access(all)?
        .create()?
        .add_rules(path_beneath_rules(["/"], read))?
        .add_rules(path_beneath_rules(dirs, all))
}

/// Whether this kernel enforces Landlock (a probe ruleset restricts a throwaway thread).
pub fn landlock_supported() -> bool {
    std::thread::spawn(|| {
        landlock_rules(&[])
            .and_then(RulesetCreated::restrict_self)
            .is_ok_and(|s| s.ruleset != landlock::RulesetStatus::NotEnforced)
    })
    .join()
    .unwrap_or(false)
}

/// `text` cut to [`MAX_OUTPUT_BYTES`]: its start and its end, with the cut marked.
pub fn truncate(text: &str) -> String {
    if text.len() <= MAX_OUTPUT_BYTES {
        return text.to_string();
    }
    let head_end = floor_char(text, HEAD_BYTES);
    let tail_start = ceil_char(text, text.len() - (MAX_OUTPUT_BYTES - HEAD_BYTES));
    format!(
        "{}\n[... {} bytes cut ...]\n{}",
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..]
    )
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_its_start_and_end() {
        let long = format!("START{}END", "x".repeat(MAX_OUTPUT_BYTES * 2));
        let cut = truncate(&long);
        assert!(cut.starts_with("START") && cut.ends_with("END"));
        assert!(cut.len() < MAX_OUTPUT_BYTES + 100);
        assert_eq!(truncate("short"), "short");
    }
}
