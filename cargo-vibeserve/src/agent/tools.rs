//! The Implementer's tools: list, read, search, write, replace and patch files of the
//! candidate crate; cargo build/check/test on it; read a skill; read the target's public
//! files. Every tool answers with text for the model; a refused or failed call answers
//! with an error text (never a crash), so the model can correct itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::patch;
use super::sandbox::{Confinement, Workspace, run};
use crate::build::compile::lock_for;
use crate::generate::FileSet;
use crate::skills::Library;

/// Most lines `read_file` returns at once.
pub const MAX_READ_LINES: usize = 400;
/// Most matches `search` returns.
pub const MAX_MATCHES: usize = 100;
/// Time limit of one cargo command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Folders the listing and search skip: build output and VCS data.
const SKIPPED_DIRS: [&str; 2] = ["target", ".git"];
/// The cargo subcommands the agent may run on the crate.
pub const CARGO_ALLOWED: [&str; 3] = ["build", "check", "test"];
/// Extra cargo flags the agent may pass; anything else starting with `-` is refused.
const CARGO_FLAGS: [&str; 4] = ["--release", "--lib", "--bins", "--quiet"];

/// Names of the tools, as the model calls them.
pub mod name {
    /// List files.
    pub const LIST: &str = "list_files";
    /// Read a file.
    pub const READ: &str = "read_file";
    /// Regex search.
    pub const SEARCH: &str = "search";
    /// Write a whole file.
    pub const WRITE: &str = "write_file";
    /// Exact-string replacement.
    pub const REPLACE: &str = "replace";
    /// Apply a unified diff.
    pub const APPLY_DIFF: &str = "apply_diff";
    /// cargo build/check/test.
    pub const CARGO: &str = "cargo";
    /// Read a skill's SKILL.md.
    pub const READ_SKILL: &str = "read_skill";
    /// Read Serve.toml or the workload.
    pub const READ_TARGET: &str = "read_target";
    /// Stop with a summary.
    pub const FINISH: &str = "finish";
}

/// What the tools work on.
pub struct Toolbox {
    /// The candidate crate.
    pub workspace: Workspace,
    /// The skills library.
    pub skills: Library,
    /// The target's public files the agent may read, by the name it asks for.
    pub target_files: Vec<(String, PathBuf)>,
    /// The cargo target directory builds go to.
    pub target_dir: PathBuf,
    /// Environment variables hidden from commands (the API key's).
    pub hidden_env: Vec<String>,
    /// Time limit of one command.
    pub command_timeout: Duration,
}

/// How one tool call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolResult {
    /// Text for the model.
    Ok(String),
    /// An error for the model (refused path, bad arguments, failed edit).
    Err(String),
    /// The agent stopped, with its summary.
    Finished(String),
}

impl ToolResult {
    /// The text sent back to the model.
    pub fn text(&self) -> String {
        match self {
            ToolResult::Ok(t) => t.clone(),
            ToolResult::Err(e) => format!("error: {e}"),
            ToolResult::Finished(s) => format!("finished: {s}"),
        }
    }
}

/// The OpenAI `tools` array: each tool's name, description and JSON-schema parameters.
pub fn specs() -> Vec<Value> {
    let string = json!({"type": "string"});
    let tool = |name: &str, description: &str, props: Value, required: &[&str]| {
        json!({"type": "function", "function": {
            "name": name, "description": description,
            "parameters": {"type": "object", "properties": props, "required": required}}})
    };
    vec![
        tool(
            name::LIST,
            "List the crate's files under a folder (default: the crate root).",
            json!({"path": string}),
            &[],
        ),
        tool(
            name::READ,
            "Read a file of the crate, optionally lines start..=end (1-based).",
            json!({"path": string, "start": {"type": "integer"}, "end": {"type": "integer"}}),
            &["path"],
        ),
        tool(
            name::SEARCH,
            "Search the crate's files for a regex; answers path:line: text.",
            json!({"pattern": string, "path": string}),
            &["pattern"],
        ),
        tool(
            name::WRITE,
            "Write a whole file of the crate (created if missing).",
            json!({"path": string, "content": string}),
            &["path", "content"],
        ),
        tool(
            name::REPLACE,
            "Replace the one exact occurrence of `old` in a file with `new`.",
            json!({"path": string, "old": string, "new": string}),
            &["path", "old", "new"],
        ),
        tool(
            name::APPLY_DIFF,
            "Apply a unified diff (--- a/path, +++ b/path) to the crate.",
            json!({"diff": string}),
            &["diff"],
        ),
        tool(
            name::CARGO,
            "Run `cargo build|check|test` on the crate (offline, release by default for build).",
            json!({"subcommand": {"type": "string", "enum": CARGO_ALLOWED}, "args": {"type": "array", "items": string}}),
            &["subcommand"],
        ),
        tool(
            name::READ_SKILL,
            "Read a skill's SKILL.md by id, e.g. serving/prefill-chunk.",
            json!({"id": string}),
            &["id"],
        ),
        tool(
            name::READ_TARGET,
            "Read the target's Serve.toml or workload (read-only).",
            json!({"name": string}),
            &["name"],
        ),
        tool(
            name::FINISH,
            "Stop: the change is done (or abandoned); say what you changed and why.",
            json!({"summary": string}),
            &["summary"],
        ),
    ]
}

#[derive(Deserialize)]
struct PathArg {
    #[serde(default)]
    path: Option<String>,
}
#[derive(Deserialize)]
struct ReadArgs {
    path: String,
    start: Option<usize>,
    end: Option<usize>,
}
#[derive(Deserialize)]
struct SearchArgs {
    pattern: String,
    path: Option<String>,
}
#[derive(Deserialize)]
struct WriteArgs {
    path: String,
    content: String,
}
#[derive(Deserialize)]
struct ReplaceArgs {
    path: String,
    old: String,
    new: String,
}
#[derive(Deserialize)]
struct DiffArgs {
    diff: String,
}
#[derive(Deserialize)]
struct CargoArgs {
    subcommand: String,
    #[serde(default)]
    args: Vec<String>,
}
#[derive(Deserialize)]
struct IdArgs {
    id: String,
}
#[derive(Deserialize)]
struct NameArgs {
    name: String,
}
#[derive(Deserialize)]
struct SummaryArgs {
    summary: String,
}

fn parse<T: serde::de::DeserializeOwned>(arguments: &str) -> Result<T, String> {
    serde_json::from_str(arguments)
        .map_err(|e| format!("the arguments are not valid JSON for this tool: {e}"))
}

impl Toolbox {
    /// Runs the tool `tool` with JSON `arguments`.
    pub fn call(&self, tool: &str, arguments: &str) -> ToolResult {
        let result = match tool {
            name::LIST => parse(arguments).and_then(|a: PathArg| self.list(a.path.as_deref())),
            name::READ => parse(arguments).and_then(|a: ReadArgs| self.read(&a)),
            name::SEARCH => parse(arguments).and_then(|a: SearchArgs| self.search(&a)),
            name::WRITE => {
                parse(arguments).and_then(|a: WriteArgs| self.write(&a.path, &a.content))
            }
            name::REPLACE => parse(arguments).and_then(|a: ReplaceArgs| self.replace(&a)),
            name::APPLY_DIFF => parse(arguments).and_then(|a: DiffArgs| self.apply_diff(&a.diff)),
            name::CARGO => parse(arguments).and_then(|a: CargoArgs| self.cargo(&a)),
            name::READ_SKILL => parse(arguments).and_then(|a: IdArgs| self.read_skill(&a.id)),
            name::READ_TARGET => parse(arguments).and_then(|a: NameArgs| self.read_target(&a.name)),
            name::FINISH => {
                return match parse::<SummaryArgs>(arguments) {
                    Ok(a) => ToolResult::Finished(a.summary),
                    Err(e) => ToolResult::Err(e),
                };
            }
            other => Err(format!(
                "there is no tool `{other}`; the tools are: {}",
                names().join(", ")
            )),
        };
        match result {
            Ok(text) => ToolResult::Ok(text),
            Err(e) => ToolResult::Err(e),
        }
    }

    fn list(&self, dir: Option<&str>) -> Result<String, String> {
        let base = match dir {
            Some(d) if !d.is_empty() && d != "." => {
                self.workspace.resolve(d).map_err(|e| e.to_string())?
            }
            _ => self.workspace.root().to_path_buf(),
        };
        let files = walk(&base).map_err(|e| e.to_string())?;
        Ok(files
            .iter()
            .map(|f| self.workspace.relative(f))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn read(&self, a: &ReadArgs) -> Result<String, String> {
        let path = self.workspace.resolve(&a.path).map_err(|e| e.to_string())?;
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", a.path))?;
        let lines: Vec<&str> = text.lines().collect();
        let start = a.start.unwrap_or(1).max(1);
        let end = a
            .end
            .unwrap_or(lines.len())
            .min(lines.len())
            .min(start + MAX_READ_LINES - 1);
        let body: Vec<String> = (start..=end)
            .filter_map(|n| lines.get(n - 1).map(|l| format!("{n:>5}  {l}")))
            .collect();
        Ok(format!(
            "{} ({} lines; showing {start}-{end})\n{}",
            a.path,
            lines.len(),
            body.join("\n")
        ))
    }

    fn search(&self, a: &SearchArgs) -> Result<String, String> {
        let re = regex::Regex::new(&a.pattern).map_err(|e| format!("bad regex: {e}"))?;
        let base = match &a.path {
            Some(p) if !p.is_empty() => self.workspace.resolve(p).map_err(|e| e.to_string())?,
            _ => self.workspace.root().to_path_buf(),
        };
        let mut hits = Vec::new();
        for file in walk(&base).map_err(|e| e.to_string())? {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for (n, line) in text.lines().enumerate().filter(|(_, l)| re.is_match(l)) {
                hits.push(format!(
                    "{}:{}: {line}",
                    self.workspace.relative(&file),
                    n + 1
                ));
                if hits.len() >= MAX_MATCHES {
                    hits.push(format!("[stopped at {MAX_MATCHES} matches]"));
                    return Ok(hits.join("\n"));
                }
            }
        }
        Ok(if hits.is_empty() {
            "no matches".into()
        } else {
            hits.join("\n")
        })
    }

    fn write(&self, rel: &str, content: &str) -> Result<String, String> {
        let path = self
            .workspace
            .resolve_writable(rel)
            .map_err(|e| e.to_string())?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {rel}'s folder: {e}"))?;
        }
        std::fs::write(&path, content).map_err(|e| format!("cannot write {rel}: {e}"))?;
        Ok(format!("wrote {rel} ({} bytes)", content.len()))
    }

    fn replace(&self, a: &ReplaceArgs) -> Result<String, String> {
        let path = self
            .workspace
            .resolve_writable(&a.path)
            .map_err(|e| e.to_string())?;
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", a.path))?;
        match text.matches(&a.old).count() {
            1 => self
                .write(&a.path, &text.replacen(&a.old, &a.new, 1))
                .map(|_| format!("replaced in {}", a.path)),
            0 => Err(format!("`old` does not occur in {}", a.path)),
            n => Err(format!(
                "`old` occurs {n} times in {}; give more context",
                a.path
            )),
        }
    }

    fn apply_diff(&self, diff: &str) -> Result<String, String> {
        let files = self.snapshot().map_err(|e| e.to_string())?;
        let patched = patch::apply(&files, diff).map_err(|e| e.to_string())?;
        let changed = patch::make(&files, &patched).map_err(|e| e.to_string())?;
        let mut touched = Vec::new();
        for (path, bytes) in patched.iter().filter(|(p, b)| files.get(p) != Some(*b)) {
            self.write(path, &String::from_utf8_lossy(bytes))?;
            touched.push(path.to_string());
        }
        for (path, _) in files.iter().filter(|(p, _)| patched.get(p).is_none()) {
            let full = self
                .workspace
                .resolve_writable(path)
                .map_err(|e| e.to_string())?;
            std::fs::remove_file(&full).map_err(|e| format!("cannot delete {path}: {e}"))?;
            touched.push(format!("{path} (deleted)"));
        }
        Ok(format!(
            "applied ({} lines of diff) to: {}",
            changed.lines().count(),
            touched.join(", ")
        ))
    }

    fn cargo(&self, a: &CargoArgs) -> Result<String, String> {
        if !CARGO_ALLOWED.contains(&a.subcommand.as_str()) {
            return Err(format!(
                "`cargo {}` is not allowed; allowed: {}",
                a.subcommand,
                CARGO_ALLOWED.join(", ")
            ));
        }
        if let Some(bad) = a
            .args
            .iter()
            .find(|x| x.starts_with('-') && !CARGO_FLAGS.contains(&x.as_str()))
        {
            return Err(format!(
                "the flag `{bad}` is not allowed; allowed: {}",
                CARGO_FLAGS.join(", ")
            ));
        }
        // Held while cargo runs: the build directory is shared with every other build
        // of a generated crate (the rounds' compiles, other searches).
        let _lock = lock_for(self.workspace.root(), &self.target_dir)
            .map_err(|e| format!("cannot take the build directory: {e}"))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let tmp = self.target_dir.join("vibeserve-agent-tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot make a temp folder: {e}"))?;
        let mut cmd = Command::new(cargo);
        cmd.arg(&a.subcommand)
            .arg("--offline")
            .arg("--manifest-path")
            .arg(self.workspace.root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&self.target_dir)
            .args(
                if a.subcommand == "build" && !a.args.iter().any(|x| x == "--release") {
                    &["--release"][..]
                } else {
                    &[]
                },
            )
            .args(&a.args)
            .current_dir(self.workspace.root())
            .env("TMPDIR", &tmp);
        let confinement = Confinement {
            writable: writable_dirs(self.workspace.root(), &self.target_dir),
            hidden_env: self.hidden_env.clone(),
            timeout: self.command_timeout,
        };
        let out = run(cmd, &confinement).map_err(|e| format!("cannot run cargo: {e}"))?;
        let status = match (out.timed_out, out.code) {
            (true, _) => format!("killed after {:?} (time limit)", self.command_timeout),
            (false, Some(c)) => format!("exit code {c}"),
            (false, None) => "ended by a signal".into(),
        };
        let sandbox = if out.landlocked {
            "landlock"
        } else {
            "no landlock on this kernel"
        };
        Ok(format!(
            "cargo {}: {status} ({sandbox})\n{}",
            a.subcommand, out.output
        ))
    }

    fn read_skill(&self, id: &str) -> Result<String, String> {
        let id = id.trim_end_matches("/SKILL.md");
        self.skills.get(id).map(|s| s.body.clone()).ok_or_else(|| {
            let ids: Vec<&str> = self.skills.skills.iter().map(|s| s.id.as_str()).collect();
            format!("no skill `{id}`; the skills are: {}", ids.join(", "))
        })
    }

    fn read_target(&self, name: &str) -> Result<String, String> {
        let (_, path) = self
            .target_files
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.target_files.iter().map(|(n, _)| n.as_str()).collect();
                format!("`{name}` is not readable; readable: {}", names.join(", "))
            })?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        Ok(super::sandbox::truncate(&text))
    }

    /// Every file of the crate (build output and VCS data skipped), as a [`FileSet`].
    pub fn snapshot(&self) -> std::io::Result<FileSet> {
        snapshot(self.workspace.root())
    }
}

/// Every file under `root` (skipping `target/`, `.git/` and symlinks), as a [`FileSet`].
pub fn snapshot(root: &Path) -> std::io::Result<FileSet> {
    let mut set = FileSet::default();
    for file in walk(root)? {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        set.insert(rel, std::fs::read(&file)?);
    }
    Ok(set)
}

/// Regular files under `dir`, sorted; symlinks are not followed.
fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        if folder.is_file() {
            out.push(folder);
            continue;
        }
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let name = entry.file_name();
            if kind.is_dir() && !SKIPPED_DIRS.iter().any(|s| name == *s) {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Where a confined cargo may write: the crate, the build directory and cargo's home
/// (its package cache lock).
fn writable_dirs(workspace: &Path, target_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![workspace.to_path_buf(), target_dir.to_path_buf()];
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        dirs.push(home);
    }
    dirs
}

/// The tool names, in [`specs`] order.
pub fn names() -> Vec<&'static str> {
    vec![
        name::LIST,
        name::READ,
        name::SEARCH,
        name::WRITE,
        name::REPLACE,
        name::APPLY_DIFF,
        name::CARGO,
        name::READ_SKILL,
        name::READ_TARGET,
        name::FINISH,
    ]
}
