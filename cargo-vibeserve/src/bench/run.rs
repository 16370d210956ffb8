//! Running a benchmark: warm-up, then requests dispatched at a fixed concurrency and/or a
//! seeded Poisson rate until a request count or a duration is reached.
//!
//! Cancellation (Ctrl-C) stops dispatching, abandons requests still in flight, and still
//! returns the metrics of everything that finished, marked as interrupted.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{Client, RequestRecord};
use super::metrics::{Metrics, Slo};
use super::report::{BenchResult, RunInfo};
use super::workload::Workload;

/// How long to wait for `GET /v1/models` when the workload names no model.
const MODEL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// When requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Arrival {
    /// At most this many requests in flight (a closed loop when `rate` is `None`).
    pub max_concurrency: usize,
    /// Poisson arrivals at this many requests per second; `None` sends as fast as the
    /// concurrency allows.
    pub request_rate: Option<f64>,
    /// Seed of the inter-arrival times.
    pub seed: u64,
}

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this many requests (cycling through the workload if it is shorter).
    Requests(usize),
    /// No new request after this long; requests in flight are finished.
    Duration(Duration),
}

/// Everything a benchmark run needs, as plain values.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The `model` field for requests that have none; `None` asks the server's
    /// `/v1/models` and, failing that, sends none.
    pub model: Option<String>,
    /// The requests.
    pub workload: Workload,
    /// Arrival process.
    pub arrival: Arrival,
    /// Warm-up requests sent first (taken from the end of the workload) and not measured.
    pub warmup: usize,
    /// Whether the measured requests follow the warm-up in the same closed loop, each
    /// sent as a warm-up request frees its slot, instead of after the warm-up drained.
    /// With a warm-up of at least `max_concurrency` requests the measured part then
    /// starts in steady state rather than with `max_concurrency` simultaneous arrivals
    /// on an idle server, whose prefill burst would dominate the tail of TTFT.
    pub continuous_warmup: bool,
    /// When to stop.
    pub stop: Stop,
    /// Limit on one request, from sending to the end of its stream.
    pub request_timeout: Duration,
    /// Limit on the silence between two pieces of a response.
    pub stall_timeout: Duration,
    /// Per-request SLOs for goodput.
    pub slos: Vec<Slo>,
    /// The command that started the server, if the harness knows it (for the report).
    pub server_command: Option<String>,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

/// Run the benchmark described by `config`. Returns early, with what was measured, when
/// `cancel` fires.
pub async fn run(config: &BenchConfig, cancel: &CancellationToken) -> BenchResult {
    let client = Client::new(
        &config.base_url,
        config.request_timeout,
        config.stall_timeout,
    );
    let model = match &config.model {
        Some(model) => Some(model.clone()),
        None if config
            .workload
            .requests
            .iter()
            .all(|r| r.body.contains_key("model")) =>
        {
            None
        }
        None => client.first_model_id(MODEL_QUERY_TIMEOUT).await,
    };
    let n = config.workload.requests.len();
    let warmup: Vec<usize> = (0..config.warmup).map(|i| n - 1 - i % n).collect();
    let bar = progress_bar(config.progress, config.warmup as u64, "warm-up");
    let slots = Arc::new(Semaphore::new(config.arrival.max_concurrency.max(1)));
    let plan = Dispatch {
        client: &client,
        config,
        model: model.as_deref(),
        bar: &bar,
        slots: &slots,
    };
    let mut warming = plan
        .send(warmup.into_iter(), Stop::Requests(config.warmup), cancel)
        .await
        .in_flight;
    if !config.continuous_warmup {
        plan.collect(&mut warming, cancel).await;
        bar.finish_and_clear();
    }
    let measured = match config.stop {
        Stop::Requests(count) => progress_bar(config.progress, count as u64, "requests"),
        Stop::Duration(_) => progress_bar(config.progress, 0, "requests"),
    };
    let plan = Dispatch {
        bar: &measured,
        ..plan
    };
    let sent = plan.send((0..n).cycle(), config.stop, cancel).await;
    // A continuous phase waits for warm-up slots before its first send.
    let start = if config.continuous_warmup {
        sent.first_send
    } else {
        sent.began
    };
    let mut in_flight = sent.in_flight;
    let (records, interrupted) = plan.collect(&mut in_flight, cancel).await;
    let duration = start.elapsed();
    // Warm-up requests still running are not measured; stop waiting for them.
    warming.abort_all();
    bar.finish_and_clear();
    measured.finish_and_clear();
    let metrics = Metrics::compute(&records, duration, &config.slos);
    BenchResult::new(RunInfo::of(config, model, interrupted), metrics, records)
}

/// Run [`run`] on a fresh single-threaded runtime, cancelled by Ctrl-C. One thread keeps
/// the harness's own CPU use small next to the server it measures.
pub fn run_blocking(config: &BenchConfig) -> std::io::Result<BenchResult> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let cancel = cancel_on_ctrl_c();
        Ok(run(config, &cancel).await)
    })
}

/// A token that fires on Ctrl-C (SIGINT). Must be called inside a tokio runtime.
pub fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    let fire = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: reporting what was measured so far");
            fire.cancel();
        }
    });
    cancel
}

fn progress_bar(enabled: bool, len: u64, what: &'static str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    // `stderr()` draws nothing when stderr is not a terminal.
    let bar =
        ProgressBar::with_draw_target(Some(len).filter(|&l| l > 0), ProgressDrawTarget::stderr());
    let template = if len > 0 {
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len}"
    } else {
        "{msg} [{elapsed_precise}] {spinner} {pos} done"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

/// One phase of sending requests.
#[derive(Clone, Copy)]
struct Dispatch<'a> {
    client: &'a Client,
    config: &'a BenchConfig,
    model: Option<&'a str>,
    bar: &'a ProgressBar,
    /// The closed loop's slots, shared by the warm-up and the measured phase.
    slots: &'a Arc<Semaphore>,
}

/// Requests sent by one phase and still to be collected.
struct Sent {
    /// The requests' tasks, each yielding its sending index and record.
    in_flight: JoinSet<(usize, RequestRecord)>,
    /// When the phase began.
    began: Instant,
    /// When its first request was sent (when it began, if none was).
    first_send: Instant,
}

impl Dispatch<'_> {
    /// Send the workload requests at `indices` until `stop`, each once a slot is free;
    /// returns without waiting for them to finish.
    async fn send(
        self,
        mut indices: impl Iterator<Item = usize>,
        stop: Stop,
        cancel: &CancellationToken,
    ) -> Sent {
        let start = Instant::now();
        let mut first_send = None;
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.arrival.seed);
        let mut next_arrival = start;
        let mut in_flight = JoinSet::new();
        let mut sent = 0;
        loop {
            let more = match stop {
                Stop::Requests(count) => sent < count,
                Stop::Duration(limit) => first_send.unwrap_or(start).elapsed() < limit,
            };
            let Some(index) = indices.next().filter(|_| more) else {
                break;
            };
            if let Some(rate) = self.config.arrival.request_rate {
                // Exponential inter-arrival times make a Poisson process.
                let u: f64 = rng.random();
                next_arrival += Duration::from_secs_f64(-(1.0 - u).ln() / rate);
                tokio::select! {
                    () = tokio::time::sleep_until(next_arrival) => {}
                    () = cancel.cancelled() => break,
                }
            }
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => permit,
                () = cancel.cancelled() => break,
            };
            let Ok(permit) = permit else { break };
            first_send.get_or_insert_with(Instant::now);
            let (client, model, bar) = (
                self.client.clone(),
                self.model.map(str::to_owned),
                self.bar.clone(),
            );
            let request = self.config.workload.requests[index].clone();
            in_flight.spawn(async move {
                let record = client.send(&request, model.as_deref()).await;
                drop(permit);
                bar.inc(1);
                (sent, record)
            });
            sent += 1;
        }
        Sent {
            in_flight,
            began: start,
            first_send: first_send.unwrap_or(start),
        }
    }

    /// Waits for the requests of `in_flight`: their records in sending order, and
    /// whether `cancel` cut the wait short (what was in flight is then abandoned).
    async fn collect(
        self,
        in_flight: &mut JoinSet<(usize, RequestRecord)>,
        cancel: &CancellationToken,
    ) -> (Vec<RequestRecord>, bool) {
        let mut records = Vec::with_capacity(in_flight.len());
        tokio::select! {
            () = collect(in_flight, &mut records) => {}
            () = cancel.cancelled() => {}
        }
        // After a cancel: abandon what is in flight, keep what had finished.
        in_flight.abort_all();
        collect(in_flight, &mut records).await;
        records.sort_by_key(|(i, _)| *i);
        let records = records.into_iter().map(|(_, r)| r).collect();
        (records, cancel.is_cancelled())
    }
}

/// Move every finished request of `in_flight` into `records`, waiting for those still
/// running. Aborted tasks are skipped: a request task fails only by being aborted.
async fn collect(
    in_flight: &mut JoinSet<(usize, RequestRecord)>,
    records: &mut Vec<(usize, RequestRecord)>,
) {
    while let Some(joined) = in_flight.join_next().await {
        if let Ok(record) = joined {
            records.push(record);
        }
    }
}
