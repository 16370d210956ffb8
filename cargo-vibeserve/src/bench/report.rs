//! The result of a run: a terminal table for people and a JSON object whose field names
//! follow vLLM's `bench serve` result (`completed`, `mean_ttft_ms`, …) so files can be
//! compared across tools, plus the machine, the server command and the workload digest.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::client::RequestRecord;
use super::metrics::{Metrics, Slo, Stats, TokenSource};
use super::run::{Arrival, BenchConfig, Stop};

/// What was run, where and how: everything in a result except the measurements.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunInfo {
    /// The server's base URL.
    pub base_url: String,
    /// The model name sent with requests that had none.
    pub model_id: Option<String>,
    /// The command that started the server, when known.
    pub server_command: Option<String>,
    /// The workload's description (file path or synthetic spec).
    pub workload: String,
    /// Hex SHA-256 of the workload.
    pub workload_sha256: String,
    /// Arrival process.
    pub arrival: Arrival,
    /// Warm-up requests (not measured).
    pub warmup: usize,
    /// Stop condition.
    pub stop: Stop,
    /// Per-request SLOs for goodput.
    pub slos: Vec<Slo>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// The machine that ran the harness.
    pub machine: Machine,
}

impl RunInfo {
    /// Describe a run of `config`.
    pub fn of(config: &BenchConfig, model_id: Option<String>, interrupted: bool) -> Self {
        RunInfo {
            base_url: config.base_url.clone(),
            model_id,
            server_command: config.server_command.clone(),
            workload: config.workload.source.clone(),
            workload_sha256: config.workload.sha256.clone(),
            arrival: config.arrival,
            warmup: config.warmup,
            stop: config.stop,
            slos: config.slos.clone(),
            interrupted,
            machine: Machine::this(),
        }
    }
}

/// The machine the benchmark ran on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Machine {
    /// CPU model name (from `/proc/cpuinfo` on Linux), or "unknown".
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub logical_cpus: usize,
    /// Operating system.
    pub os: &'static str,
    /// CPU architecture.
    pub arch: &'static str,
}

impl Machine {
    /// This machine.
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_owned(), |(_, name)| name.trim().to_owned());
        Machine {
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        }
    }
}

/// A finished (or interrupted) run: what was run, its metrics and every request.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// What was run.
    pub info: RunInfo,
    /// The metrics.
    pub metrics: Metrics,
    /// One record per measured request, in sending order.
    pub records: Vec<RequestRecord>,
}

impl BenchResult {
    /// Put a result together.
    pub fn new(info: RunInfo, metrics: Metrics, records: Vec<RequestRecord>) -> Self {
        BenchResult {
            info,
            metrics,
            records,
        }
    }

    /// The result as JSON, with vLLM `bench serve` names where vLLM has the field.
    pub fn to_json(&self) -> Value {
        let m = &self.metrics;
        let info = &self.info;
        let mut out = json!({
            "backend": "openai",
            "base_url": info.base_url,
            "model_id": info.model_id,
            "server_command": info.server_command,
            "workload": info.workload,
            "workload_sha256": info.workload_sha256,
            "machine": info.machine,
            "num_prompts": self.records.len(),
            "request_rate": info.arrival.request_rate.map_or(json!("inf"), |r| json!(r)),
            "max_concurrency": info.arrival.max_concurrency,
            "seed": info.arrival.seed,
            "warmup": info.warmup,
            "stop": info.stop,
            "goodput_slos": info.slos.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "interrupted": info.interrupted,
            "duration": m.duration_s,
            "completed": m.completed,
            "failed": m.failed,
            "errors_by_kind": m.errors.iter().map(|(k, n)| (k.name().to_owned(), json!(n))).collect::<Map<_, _>>(),
            "total_input_tokens": m.total_input_tokens,
            "total_output_tokens": m.total_output_tokens,
            "token_count_source": m.token_source,
            "request_throughput": m.request_throughput,
            "request_goodput": m.request_goodput,
            "output_throughput": m.output_throughput,
            "total_token_throughput": m.total_token_throughput,
        });
        let fields = out
            .as_object_mut()
            .expect("a json! object literal is an object");
        for (name, stats) in self.latency_stats() {
            for (stat, value) in stat_fields(stats) {
                fields.insert(format!("{stat}_{name}_ms"), value.into());
            }
        }
        let per_request = self.per_request();
        fields.extend(per_request);
        out
    }

    fn latency_stats(&self) -> [(&'static str, &Stats); 4] {
        let m = &self.metrics;
        [
            ("ttft", &m.ttft_ms),
            ("tpot", &m.tpot_ms),
            ("itl", &m.itl_ms),
            ("e2el", &m.e2el_ms),
        ]
    }

    /// vLLM's per-request arrays (`input_lens`, `output_lens`, `ttfts`, `itls`, `errors`),
    /// times in seconds as vLLM writes them.
    fn per_request(&self) -> Map<String, Value> {
        let secs = |d: std::time::Duration| d.as_secs_f64();
        let r = &self.records;
        let mut out = Map::new();
        let input_lens: Vec<Value> = r.iter().map(|r| json!(r.prompt_tokens)).collect();
        out.insert("input_lens".into(), input_lens.into());
        let output_lens: Vec<u64> = r.iter().map(|r| r.output_tokens).collect();
        out.insert("output_lens".into(), output_lens.into());
        let ttfts: Vec<Value> = r.iter().map(|r| json!(r.ttft.map(secs))).collect();
        out.insert("ttfts".into(), ttfts.into());
        let itls: Vec<Vec<f64>> = r
            .iter()
            .map(|r| r.itl.iter().map(|d| secs(*d)).collect())
            .collect();
        out.insert("itls".into(), json!(itls));
        let errors: Vec<Value> = r.iter().map(|r| json!(r.error)).collect();
        out.insert("errors".into(), errors.into());
        out
    }

    /// A readable table for the terminal.
    pub fn table(&self) -> String {
        let m = &self.metrics;
        let mut t = String::new();
        let line = |t: &mut String, label: &str, value: String| {
            let _ = writeln!(t, "{label:<38}{value:>14}");
        };
        let title = if self.info.interrupted {
            " Serving Benchmark Result (INTERRUPTED) "
        } else {
            " Serving Benchmark Result "
        };
        let _ = writeln!(t, "{title:=^52}");
        line(&mut t, "Server:", self.info.base_url.clone());
        let conc = self.info.arrival.max_concurrency.to_string();
        line(&mut t, "Maximum request concurrency:", conc);
        let rate = self
            .info
            .arrival
            .request_rate
            .map_or("inf".into(), |r| format!("{r}"));
        line(&mut t, "Request rate (req/s):", rate);
        line(&mut t, "Successful requests:", m.completed.to_string());
        line(&mut t, "Failed requests:", m.failed.to_string());
        for (kind, n) in &m.errors {
            line(&mut t, &format!("  {}:", kind.name()), n.to_string());
        }
        line(
            &mut t,
            "Benchmark duration (s):",
            format!("{:.2}", m.duration_s),
        );
        line(
            &mut t,
            "Total input tokens:",
            m.total_input_tokens.to_string(),
        );
        line(
            &mut t,
            "Total generated tokens:",
            m.total_output_tokens.to_string(),
        );
        line(
            &mut t,
            "Request throughput (req/s):",
            format!("{:.2}", m.request_throughput),
        );
        if let Some(goodput) = m.request_goodput {
            line(&mut t, "Request goodput (req/s):", format!("{goodput:.2}"));
        }
        line(
            &mut t,
            "Output token throughput (tok/s):",
            format!("{:.2}", m.output_throughput),
        );
        line(
            &mut t,
            "Total token throughput (tok/s):",
            format!("{:.2}", m.total_token_throughput),
        );
        for (name, stats) in self.latency_stats() {
            let _ = writeln!(t, "{:-^52}", format!(" {} (ms) ", name.to_uppercase()));
            for (stat, value) in stat_fields(stats) {
                if stat != "std" {
                    line(
                        &mut t,
                        &format!("{stat} {name} (ms):"),
                        format!("{value:.2}"),
                    );
                }
            }
        }
        let _ = writeln!(t, "{:=^52}", "");
        if m.token_source == TokenSource::Chunks {
            let _ = writeln!(
                t,
                "note: the server sent no `usage`: output tokens are counted as stream chunks \
                 and input tokens are unknown"
            );
        }
        if let Some((kind, message)) = self.first_error() {
            let _ = writeln!(t, "first error ({kind}): {message}");
        }
        t
    }

    fn first_error(&self) -> Option<(&'static str, &str)> {
        let e = self.records.iter().find_map(|r| r.error.as_ref())?;
        Some((e.kind.name(), e.message.as_str()))
    }
}

/// The statistics reported per latency, with their vLLM prefixes.
fn stat_fields(s: &Stats) -> [(&'static str, f64); 6] {
    [
        ("mean", s.mean),
        ("median", s.median),
        ("std", s.std),
        ("p90", s.p90),
        ("p95", s.p95),
        ("p99", s.p99),
    ]
}
