//! The Performance Evaluator: is a candidate faster than the incumbent beyond the noise?
//!
//! Both servers run the target's workload through the bench harness, one at a time (a
//! server is started for each repetition and stopped after it, so an idle engine never
//! competes for the cores), interleaved candidate/incumbent with the order alternating
//! each repetition, `benchmark.repetitions` times (at least [`MIN_REPETITIONS`]).
//!
//! Each repetition measures steady state: a fresh server gets one closed loop of
//! `concurrency` warm-up requests (from the end of the workload) followed, as each frees
//! its slot, by the measured requests (from the start, so no measured prompt was seen
//! before and the prefix cache is not flattered by verbatim repeats). Measuring from an
//! idle server instead puts `concurrency` simultaneous prompts at the start of every
//! repetition: on 2 cores round 0 prefills those 16 prompts (~800 tokens) at ~350
//! tokens/s, so half the measured requests waited 1.7–2.2 s for their first token, and
//! p99 TTFT measured that start-up burst, not the server under load.
//!
//! The acceptance rule is feasibility first, then the objective beyond the noise
//! (Deb's rule for constrained search, with "beyond the noise" as the comparison):
//! * a candidate whose medians meet every constraint beats an incumbent that broke one in
//!   the same run;
//! * between two feasible servers, the candidate's **worst** repetition must beat the
//!   incumbent's **best** on the objective. With 3 repetitions each, a change that is
//!   pure noise passes this only when six draws happen to sort perfectly (1 in 20 for
//!   i.i.d. noise), and a real gain smaller than the run-to-run spread is not claimed;
//! * between two infeasible ones, the same worst-beats-best rule on the total violation
//!   (the relative excess over each broken bound, summed): a smaller violation wins only
//!   beyond the noise;
//! * an infeasible candidate never beats a feasible incumbent.
//!
//! Drill-down ([`stages`]): the server's own stage timings, scraped from `/metrics` when
//! the measured part of a repetition starts (the first warm-up request has ended) and
//! when it ends, become per-stage shares of the wall time, recorded with the round's
//! metrics as `stage_*`; rules over them say what dominates and which skills target it,
//! and that goes to the planner as [`Hints`]. A server without stage metrics falls back
//! to the client-side timings (time to first token = prefill and queueing, time per
//! output token = decode). Hardware counters (`perf stat`) are probed once per Evaluator;
//! where they are unsupported (the machines this was built on), it says so once.
//!
//! `cargo vibeserve evaluate DIR` ([`command`]) runs the Judge and this Evaluator on a
//! bundle of candidates that `build --stage` made on another machine ([`bundle`]).

/// The staged bundle and the results that come back from it.
pub mod bundle;
/// `cargo vibeserve evaluate DIR`.
pub mod command;
/// The Judge of a `dummy` model (random safetensors weights).
pub mod dummy;
/// The server's per-stage timings and the hints drawn from them.
pub mod stages;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::bench::peer::{PeerError, ServerProcess, free_port};
use crate::bench::target::slo_of;
use crate::bench::{Arrival, BenchConfig, Metrics, Stop, Workload};
use crate::manifest::{self, Direction, Manifest};
use crate::search::Hints;
use crate::skills::Stage;

/// Repetitions per server, whatever the manifest says: fewer cannot show the noise.
pub const MIN_REPETITIONS: usize = 3;
/// Fewest measured requests per repetition: the workload's requests the warm-up did not
/// use are measured, but never fewer than this (the prompts then repeat).
pub const MIN_MEASURED_REQUESTS: usize = 16;
/// Warm-up requests of an open-loop (Poisson) workload; a closed loop warms up with one
/// request per client.
pub const POISSON_WARMUP_REQUESTS: usize = 4;
/// Limit on one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Limit on the silence inside one streamed response.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to become healthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Sequences in flight from which a CPU decode step is a compute-bound batched product:
/// the round-0 activation tile (`kernels.act_tile`).
pub const BATCHED_DECODE: usize = 4;
/// The skills that shape the CPU kernels' register tiles, most specific first.
pub const CPU_BATCHED_DECODE_SKILLS: [&str; 2] = ["hardware/row-tile", "hardware/matmul-tiling"];
/// Queueing dominates when the median TTFT is this many times the TTFT of a lone
/// request's prefill would be (approximated by the fastest TTFT seen).
pub const QUEUEING_FACTOR: f64 = 4.0;

/// One server's repetitions.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    /// Each repetition's metrics, in order.
    pub reps: Vec<Metrics>,
    /// Each repetition's stage shares ([`stages::shares`]; empty where the server
    /// reports no stages), in order.
    pub stages: Vec<BTreeMap<String, f64>>,
}

impl Measurement {
    /// The objective's value in each repetition.
    pub fn objective(&self, metric: &str) -> Vec<f64> {
        self.reps.iter().filter_map(|m| m.get(metric)).collect()
    }

    /// The median over repetitions of every metric the harness names and of every
    /// stage share.
    pub fn medians(&self) -> BTreeMap<String, f64> {
        let mut medians: BTreeMap<String, f64> = crate::bench::metrics::metric_names()
            .into_iter()
            .filter_map(|name| {
                let values: Vec<f64> = self.reps.iter().filter_map(|m| m.get(&name)).collect();
                median(&values).map(|v| (name, v))
            })
            .collect();
        let names: std::collections::BTreeSet<&String> =
            self.stages.iter().flat_map(|s| s.keys()).collect();
        for name in names {
            let values: Vec<f64> = self
                .stages
                .iter()
                .filter_map(|s| s.get(name))
                .copied()
                .collect();
            if let Some(v) = median(&values) {
                medians.insert(name.clone(), v);
            }
        }
        medians
    }

    fn push(&mut self, (metrics, stages): (Metrics, BTreeMap<String, f64>)) {
        self.reps.push(metrics);
        self.stages.push(stages);
    }
}

/// The Evaluator's verdict on a candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The candidate's repetitions.
    pub candidate: Measurement,
    /// The incumbent's repetitions.
    pub incumbent: Measurement,
    /// Candidate median / incumbent median of the objective.
    pub ratio: f64,
    /// Whether the gain beats the noise (worst candidate rep beats best incumbent rep).
    pub beats_noise: bool,
    /// Constraints the candidate's medians break, as text.
    pub violated: Vec<String>,
    /// Constraints the incumbent's medians broke in the same run, as text.
    pub incumbent_violated: Vec<String>,
    /// Both infeasible: whether the candidate's worst repetition broke the constraints by
    /// less than the incumbent's best one (total relative excess).
    pub violation_shrinks: bool,
    /// What the planner should look at next.
    pub hints: Hints,
}

impl Evaluation {
    /// One line: medians, spreads, ratio and the rule's outcome.
    pub fn summary(&self, metric: &str) -> String {
        let show = |m: &Measurement| {
            let v = m.objective(metric);
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{:.1} [{lo:.1}..{hi:.1}]", median(&v).unwrap_or(f64::NAN))
        };
        format!(
            "{metric}: candidate {} vs best {} (x{:.3}, {})",
            show(&self.candidate),
            show(&self.incumbent),
            self.ratio,
            if self.beats_noise {
                "beats the noise"
            } else {
                "within the noise"
            }
        )
    }
}

/// A target's Evaluator.
pub struct Evaluator {
    manifest: Manifest,
    model: std::path::PathBuf,
    workload: Workload,
    reps: usize,
    runtime: tokio::runtime::Runtime,
}

impl Evaluator {
    /// An Evaluator for `manifest`'s workload and objective on `model`.
    pub fn new(manifest: &Manifest, model: &Path) -> Result<Evaluator, EvaluateError> {
        let workload = Workload::from_jsonl(&manifest.workload.requests)?;
        if let Some(why) = stages::perf_unsupported() {
            eprintln!("{why}; the drill-down uses the server's stage timings only");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(EvaluateError::Runtime)?;
        Ok(Evaluator {
            manifest: manifest.clone(),
            model: model.to_path_buf(),
            workload,
            reps: (manifest.benchmark.repetitions as usize).max(MIN_REPETITIONS),
            runtime,
        })
    }

    /// The objective's metric name.
    pub fn metric(&self) -> &str {
        self.manifest.benchmark.objective.metric.name()
    }

    /// Measures one server alone (round 0's baseline).
    pub fn measure(&self, server: &Path) -> Result<Measurement, EvaluateError> {
        let mut measured = Measurement::default();
        for _ in 0..self.reps {
            measured.push(self.one_rep(server)?);
        }
        Ok(measured)
    }

    /// Measures `candidate` against `incumbent`, interleaved, and applies the rule.
    pub fn compare(&self, candidate: &Path, incumbent: &Path) -> Result<Evaluation, EvaluateError> {
        let (mut cand, mut inc) = (Measurement::default(), Measurement::default());
        for rep in 0..self.reps {
            if rep % 2 == 0 {
                cand.push(self.one_rep(candidate)?);
                inc.push(self.one_rep(incumbent)?);
            } else {
                inc.push(self.one_rep(incumbent)?);
                cand.push(self.one_rep(candidate)?);
            }
        }
        Ok(self.judge(cand, inc))
    }

    /// Measures several candidates against one incumbent: each repetition runs the
    /// incumbent and every candidate once, in an order that rotates each repetition, so
    /// every candidate is interleaved with the incumbent and the incumbent is measured
    /// once per repetition rather than once per candidate. Returns the incumbent's
    /// measurement and each candidate's evaluation against it, in order.
    pub fn compare_many(
        &self,
        candidates: &[&Path],
        incumbent: &Path,
    ) -> Result<(Measurement, Vec<Evaluation>), EvaluateError> {
        self.compare_many_from(candidates, incumbent, Vec::new(), |_| Ok(()))
    }

    /// [`Evaluator::compare_many`], resumed: `done` holds the repetitions an earlier,
    /// interrupted run finished (the incumbent's first, then each candidate's, as
    /// `on_rep` was given them), which are kept and not run again; `on_rep` gets every
    /// server's repetitions so far after each one, to keep them.
    pub fn compare_many_from<E: From<EvaluateError>>(
        &self,
        candidates: &[&Path],
        incumbent: &Path,
        done: Vec<Measurement>,
        mut on_rep: impl FnMut(&[Measurement]) -> Result<(), E>,
    ) -> Result<(Measurement, Vec<Evaluation>), E> {
        let servers: Vec<&Path> = std::iter::once(incumbent)
            .chain(candidates.iter().copied())
            .collect();
        let mut reps = done;
        reps.resize(servers.len(), Measurement::default());
        for rep in 0..self.reps {
            for k in 0..servers.len() {
                let i = (k + rep) % servers.len();
                if reps[i].reps.len() > rep {
                    continue;
                }
                reps[i].push(self.one_rep(servers[i])?);
                on_rep(&reps)?;
            }
        }
        let mut measured = reps.into_iter();
        let incumbent = measured.next().expect("the incumbent is measured");
        let evaluations = measured
            .map(|candidate| self.judge(candidate, incumbent.clone()))
            .collect();
        Ok((incumbent, evaluations))
    }

    fn judge(&self, candidate: Measurement, incumbent: Measurement) -> Evaluation {
        let metric = self.metric();
        let (c, i) = (candidate.objective(metric), incumbent.objective(metric));
        let ratio = match (median(&c), median(&i)) {
            (Some(c), Some(i)) if i != 0.0 => c / i,
            _ => f64::NAN,
        };
        let beats_noise = !c.is_empty()
            && !i.is_empty()
            && match self.manifest.benchmark.objective.direction {
                Direction::Max => {
                    c.iter().copied().fold(f64::INFINITY, f64::min)
                        > i.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                }
                Direction::Min => {
                    c.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                        < i.iter().copied().fold(f64::INFINITY, f64::min)
                }
            };
        let constraints = &self.manifest.benchmark.constraints;
        let incumbent_violated = violated(constraints, &incumbent.medians());
        let violated = violated(constraints, &candidate.medians());
        let excess = |m: &Measurement| -> Vec<f64> {
            m.reps.iter().map(|r| violation(constraints, r)).collect()
        };
        let (cv, iv) = (excess(&candidate), excess(&incumbent));
        let violation_shrinks = !cv.is_empty()
            && !iv.is_empty()
            && cv.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                < iv.iter().copied().fold(f64::INFINITY, f64::min);
        let hints = self.hints(&candidate);
        Evaluation {
            candidate,
            incumbent,
            ratio,
            beats_noise,
            violated,
            incumbent_violated,
            violation_shrinks,
            hints,
        }
    }

    /// One repetition: the bench metrics, and the stage shares of the measured window
    /// (from the end of the first warm-up request to the end of the run).
    fn one_rep(&self, server: &Path) -> Result<(Metrics, BTreeMap<String, f64>), EvaluateError> {
        let port = free_port().map_err(EvaluateError::Port)?;
        let args: Vec<OsString> = vec![
            "serve".into(),
            "--model".into(),
            self.model.as_os_str().to_owned(),
            "--port".into(),
            port.to_string().into(),
            "--served-model-name".into(),
            self.manifest.target.name.clone().into(),
        ];
        let process =
            self.runtime
                .block_on(ServerProcess::start(server, &args, port, HEALTH_TIMEOUT))?;
        let config = self.config(&process.url);
        let (result, shares) = self.runtime.block_on(measured_window(&config));
        drop(process);
        Ok((result.metrics, shares))
    }

    /// The planner's hints from one server's measurement: the dominant stage and the
    /// skills worth trying for it.
    pub fn hints(&self, measured: &Measurement) -> Hints {
        let medians = measured.medians();
        let device = self.manifest.hardware.device();
        let mut hints = hints(&medians);
        hints.suggest = suggest(hints.dominant, device, self.concurrency());
        let shares: BTreeMap<String, f64> = medians
            .into_iter()
            .filter(|(k, _)| k.starts_with(stages::SHARE_PREFIX))
            .collect();
        if let Some(drill) = stages::drill_down(&shares, device, self.concurrency()) {
            eprintln!("  drill-down: {}", drill.notes.join("; "));
            hints.dominant = drill.dominant;
            hints.suggest = drill.suggest;
        }
        hints
    }

    /// Requests the workload keeps in flight: its closed-loop concurrency (an open loop's
    /// is unknown in advance: 1).
    fn concurrency(&self) -> usize {
        match self.manifest.workload.arrival {
            manifest::Arrival::Concurrency(n) => n as usize,
            manifest::Arrival::Poisson { .. } => 1,
        }
    }

    fn config(&self, url: &str) -> BenchConfig {
        let (max_concurrency, request_rate, seed) = match self.manifest.workload.arrival {
            manifest::Arrival::Concurrency(n) => (n as usize, None, 0),
            manifest::Arrival::Poisson { rate, seed } => (
                crate::bench::target::POISSON_MAX_CONCURRENCY,
                Some(rate),
                seed,
            ),
        };
        let warmup = match self.manifest.workload.arrival {
            manifest::Arrival::Concurrency(n) => n as usize,
            manifest::Arrival::Poisson { .. } => POISSON_WARMUP_REQUESTS,
        };
        let measured = self
            .workload
            .requests
            .len()
            .saturating_sub(warmup)
            .max(MIN_MEASURED_REQUESTS);
        BenchConfig {
            base_url: url.to_string(),
            model: Some(self.manifest.target.name.clone()),
            workload: self.workload.clone(),
            arrival: Arrival {
                max_concurrency,
                request_rate,
                seed,
            },
            warmup,
            continuous_warmup: true,
            stop: Stop::Requests(measured),
            request_timeout: REQUEST_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
            slos: self
                .manifest
                .benchmark
                .constraints
                .iter()
                .filter_map(slo_of)
                .collect(),
            server_command: None,
            progress: true,
        }
    }
}

/// Runs the bench and, beside it, scrapes the server's stage counters when the first
/// request finishes (the measured window opens: warm-up requests give way to measured
/// ones) and after the run; returns the run and the window's stage shares (empty when
/// the server reports no stages).
async fn measured_window(
    config: &BenchConfig,
) -> (crate::bench::BenchResult, BTreeMap<String, f64>) {
    let client = reqwest::Client::new();
    let url = config.base_url.as_str();
    let before = stages::scrape(&client, url).await;
    let done = tokio_util::sync::CancellationToken::new();
    let bench = async {
        let result = crate::bench::run(config, &tokio_util::sync::CancellationToken::new()).await;
        done.cancel();
        result
    };
    let opened = async {
        let before = before.as_ref()?;
        while !done.is_cancelled() {
            tokio::time::sleep(stages::WINDOW_POLL).await;
            match stages::scrape(&client, url).await {
                Some(now) if now.finished > before.finished => return Some(now),
                _ => {}
            }
        }
        None
    };
    let (result, opened) = tokio::join!(bench, opened);
    let after = stages::scrape(&client, url).await;
    let shares = match (opened.or(before), after) {
        (Some(start), Some(end)) => stages::shares(&start, &end),
        _ => BTreeMap::new(),
    };
    (result, shares)
}

/// The constraints `medians` break, as `constraint (measured x)`.
pub fn violated(
    constraints: &[manifest::Constraint],
    medians: &BTreeMap<String, f64>,
) -> Vec<String> {
    constraints
        .iter()
        .filter_map(|c| {
            match medians
                .get(c.metric.name())
                .or_else(|| lookup(medians, c.metric.name()))
            {
                Some(v) if c.holds(*v) => None,
                Some(v) => Some(format!("{c} (measured {v:.2})")),
                None => Some(format!("{c} (not measured)")),
            }
        })
        .collect()
}

/// How far `metrics` break `constraints`: the relative excess over each broken bound,
/// summed (0 when every constraint holds; a metric not measured counts as 1).
pub fn violation(constraints: &[manifest::Constraint], metrics: &Metrics) -> f64 {
    constraints
        .iter()
        .map(|c| match metrics.get(c.metric.name()) {
            Some(v) if c.holds(v) => 0.0,
            Some(v) => (v - c.value).abs() / c.value.abs().max(f64::MIN_POSITIVE),
            None => 1.0,
        })
        .sum()
}

/// A Serve.toml metric name's value among vLLM-named medians.
fn lookup<'a>(medians: &'a BTreeMap<String, f64>, name: &str) -> Option<&'a f64> {
    let alias = match name {
        "output_tokens_per_s" => "output_throughput",
        "total_tokens_per_s" => "total_token_throughput",
        "requests_per_s" => "request_throughput",
        "goodput_requests_per_s" => "request_goodput",
        _ => return None,
    };
    medians.get(alias)
}

/// Which stage dominates, from the stage timings: queueing when the median TTFT dwarfs
/// the fastest one, else prefill or decode by their share of the request time.
pub fn hints(medians: &BTreeMap<String, f64>) -> Hints {
    let get = |k: &str| medians.get(k).copied().unwrap_or(0.0);
    let (ttft, tpot, out) = (
        get("mean_ttft_ms"),
        get("mean_tpot_ms"),
        get("total_output_tokens"),
    );
    let completed = get("completed").max(1.0);
    let decode_ms = tpot * (out / completed - 1.0).max(0.0);
    let dominant = if get("median_ttft_ms") > QUEUEING_FACTOR * decode_ms.max(tpot) {
        Stage::Queueing
    } else if ttft > decode_ms {
        Stage::Prefill
    } else {
        Stage::Decode
    };
    Hints {
        dominant: Some(dominant),
        ..Hints::default()
    }
}

/// Skills worth trying next: on a CPU, decode steps of at least [`BATCHED_DECODE`]
/// sequences are batched matrix products, compute-bound rather than bandwidth-bound, so
/// when decode dominates the kernels' register tiles are the lever.
pub fn suggest(dominant: Option<Stage>, device: manifest::Device, in_flight: usize) -> Vec<String> {
    let batched = in_flight >= BATCHED_DECODE;
    if dominant == Some(Stage::Decode) && device == manifest::Device::Cpu && batched {
        CPU_BATCHED_DECODE_SKILLS.map(String::from).to_vec()
    } else {
        Vec::new()
    }
}

/// The median of `values`; `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Why the Evaluator could not measure.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum EvaluateError {
    /// The workload could not be loaded.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Workload(#[from] crate::bench::workload::WorkloadError),
    /// A server did not start.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Server(#[from] PeerError),
    /// No free port.
    #[error("cannot find a free port")]
    Port(#[source] std::io::Error),
    /// The async runtime could not be created.
    #[error("cannot start the Evaluator's async runtime")]
    Runtime(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn long_decodes_make_decode_dominant_and_long_waits_queueing() {
        let m = |pairs: &[(&str, f64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let decode = m(&[
            ("mean_ttft_ms", 100.0),
            ("median_ttft_ms", 90.0),
            ("mean_tpot_ms", 20.0),
            ("total_output_tokens", 3200.0),
            ("completed", 32.0),
        ]);
        assert_eq!(hints(&decode).dominant, Some(Stage::Decode));
        let queue = m(&[
            ("mean_ttft_ms", 9000.0),
            ("median_ttft_ms", 9000.0),
            ("mean_tpot_ms", 20.0),
            ("total_output_tokens", 3200.0),
            ("completed", 32.0),
        ]);
        assert_eq!(hints(&queue).dominant, Some(Stage::Queueing));
    }

    #[test]
    fn batched_cpu_decode_suggests_the_register_tile_skills() {
        let cpu = manifest::Device::Cpu;
        let tiles = suggest(Some(Stage::Decode), cpu, 16);
        assert_eq!(tiles, ["hardware/row-tile", "hardware/matmul-tiling"]);
        assert!(suggest(Some(Stage::Decode), cpu, 1).is_empty());
        assert!(suggest(Some(Stage::Prefill), cpu, 16).is_empty());
        assert!(suggest(Some(Stage::Decode), manifest::Device::Cuda, 16).is_empty());
    }
}
