//! Serving metrics from per-request records, with vLLM `bench serve` definitions:
//!
//! * TTFT: request sent → first output chunk. ITL: gaps between output chunks.
//! * TPOT: (E2EL − TTFT) / (output tokens − 1), for requests with more than one token.
//! * E2EL: request sent → end of stream.
//! * Throughputs divide totals over successful requests by the benchmark duration.
//! * Percentiles interpolate linearly between order statistics (numpy's default).
//! * Goodput counts requests that meet every per-request SLO, per second.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::client::{ErrorKind, RequestRecord};

/// A per-request latency that an SLO can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SloMetric {
    /// Time to first token.
    Ttft,
    /// Time per output token after the first.
    Tpot,
    /// End-to-end latency.
    E2el,
}

impl SloMetric {
    /// The short name, as in vLLM's `--goodput ttft:500`.
    pub fn name(self) -> &'static str {
        match self {
            SloMetric::Ttft => "ttft",
            SloMetric::Tpot => "tpot",
            SloMetric::E2el => "e2el",
        }
    }
}

/// A service-level objective for goodput: a request is good when its `metric` is at most
/// `limit_ms`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Slo {
    /// The bounded latency.
    pub metric: SloMetric,
    /// The bound, in milliseconds (inclusive).
    pub limit_ms: f64,
}

impl FromStr for Slo {
    type Err = String;

    /// `ttft:500`, `tpot:50` or `e2el:2000` (milliseconds), as vLLM's `--goodput`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected ttft|tpot|e2el:MILLISECONDS, got {s:?}");
        let (name, value) = s.split_once(':').ok_or_else(bad)?;
        let metric = match name.trim() {
            "ttft" => SloMetric::Ttft,
            "tpot" => SloMetric::Tpot,
            "e2el" => SloMetric::E2el,
            _ => return Err(bad()),
        };
        let limit_ms = value.trim().parse::<f64>().map_err(|_| bad())?;
        Ok(Slo { metric, limit_ms })
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.metric.name(), self.limit_ms)
    }
}

/// Summary statistics of one latency, in milliseconds. All zero when there are no samples
/// (as vLLM reports them).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Arithmetic mean.
    pub mean: f64,
    /// 50th percentile.
    pub median: f64,
    /// Population standard deviation (numpy's default).
    pub std: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Number of samples.
    pub count: usize,
}

impl Stats {
    /// Statistics of `samples` (any order).
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let var = sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Stats {
            mean,
            median: percentile(&sorted, 50.0),
            std: var.sqrt(),
            p90: percentile(&sorted, 90.0),
            p95: percentile(&sorted, 95.0),
            p99: percentile(&sorted, 99.0),
            count: sorted.len(),
        }
    }

    /// The statistic named `mean`, `median`, `std`, `p90`, `p95` or `p99`.
    pub fn get(&self, stat: &str) -> Option<f64> {
        Some(match stat {
            "mean" => self.mean,
            "median" => self.median,
            "std" => self.std,
            "p90" => self.p90,
            "p95" => self.p95,
            "p99" => self.p99,
            _ => return None,
        })
    }
}

/// The `p`-th percentile (0–100) of ascending `sorted` samples, interpolating linearly
/// between the two nearest ranks: numpy's `percentile(…, method="linear")`, used by vLLM.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// Where the token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// Every successful request's stream ended with a `usage` object.
    Usage,
    /// Some or all streams lacked `usage`: their output tokens are counted as output chunks
    /// (one token per chunk) and their prompt tokens are unknown (counted as 0).
    Chunks,
}

/// The metrics of one benchmark run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Benchmark duration in seconds: first measured request sent → last one finished.
    pub duration_s: f64,
    /// Requests that finished successfully.
    pub completed: usize,
    /// Requests that failed, of any kind.
    pub failed: usize,
    /// Failed requests by kind.
    pub errors: BTreeMap<ErrorKind, usize>,
    /// Prompt tokens over successful requests (from `usage`).
    pub total_input_tokens: u64,
    /// Output tokens over successful requests.
    pub total_output_tokens: u64,
    /// How tokens were counted.
    pub token_source: TokenSource,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Requests meeting every SLO per second; `None` without SLOs.
    pub request_goodput: Option<f64>,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Input plus output tokens per second.
    pub total_token_throughput: f64,
    /// Time to first token, ms.
    pub ttft_ms: Stats,
    /// Time per output token (excluding the first), ms.
    pub tpot_ms: Stats,
    /// Inter-token (inter-chunk) latency, ms.
    pub itl_ms: Stats,
    /// End-to-end request latency, ms.
    pub e2el_ms: Stats,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// TPOT of one successful request, in ms; `None` for fewer than two output tokens.
fn tpot_ms(r: &RequestRecord) -> Option<f64> {
    let ttft = r.ttft?;
    (r.output_tokens > 1).then(|| ms(r.latency.saturating_sub(ttft)) / (r.output_tokens - 1) as f64)
}

/// Whether a successful request meets every SLO. A request without the measured quantity
/// (no output, hence no TTFT) fails a TTFT SLO; one with a single token has no TPOT and
/// passes a TPOT SLO.
fn meets(r: &RequestRecord, slos: &[Slo]) -> bool {
    slos.iter().all(|slo| {
        let value = match slo.metric {
            SloMetric::Ttft => r.ttft.map(ms),
            SloMetric::Tpot => tpot_ms(r).or(Some(0.0)),
            SloMetric::E2el => Some(ms(r.latency)),
        };
        value.is_some_and(|v| v <= slo.limit_ms)
    })
}

impl Metrics {
    /// Compute the metrics of `records` measured over `duration`, with goodput under `slos`.
    pub fn compute(records: &[RequestRecord], duration: Duration, slos: &[Slo]) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let mut errors = BTreeMap::new();
        for r in records {
            if let Some(e) = &r.error {
                *errors.entry(e.kind).or_insert(0) += 1;
            }
        }
        let secs = duration.as_secs_f64();
        let per_s = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        let total_input_tokens: u64 = ok.iter().map(|r| r.prompt_tokens.unwrap_or(0)).sum();
        let total_output_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
        let ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft.map(ms)).collect();
        let tpots: Vec<f64> = ok.iter().filter_map(|r| tpot_ms(r)).collect();
        let itls: Vec<f64> = ok
            .iter()
            .flat_map(|r| r.itl.iter().copied().map(ms))
            .collect();
        let e2els: Vec<f64> = ok.iter().map(|r| ms(r.latency)).collect();
        let good = ok.iter().filter(|r| meets(r, slos)).count();
        let token_source = if ok.iter().all(|r| r.usage_reported) {
            TokenSource::Usage
        } else {
            TokenSource::Chunks
        };
        Metrics {
            duration_s: secs,
            completed: ok.len(),
            failed: records.len() - ok.len(),
            errors,
            total_input_tokens,
            total_output_tokens,
            token_source,
            request_throughput: per_s(ok.len() as f64),
            request_goodput: (!slos.is_empty()).then(|| per_s(good as f64)),
            output_throughput: per_s(total_output_tokens as f64),
            total_token_throughput: per_s((total_input_tokens + total_output_tokens) as f64),
            ttft_ms: Stats::of(&ttfts),
            tpot_ms: Stats::of(&tpots),
            itl_ms: Stats::of(&itls),
            e2el_ms: Stats::of(&e2els),
        }
    }

    /// A metric by its vLLM result name: `completed`, `failed`, `duration`,
    /// `total_input_tokens`, `total_output_tokens`, `request_throughput`,
    /// `request_goodput`, `output_throughput`, `total_token_throughput`, or
    /// `{mean,median,std,p90,p95,p99}_{ttft,tpot,itl,e2el}_ms`; or by its Serve.toml name
    /// (`crate::manifest::METRICS`: `output_tokens_per_s`, `total_tokens_per_s`,
    /// `requests_per_s`, `goodput_requests_per_s` and the latencies).
    pub fn get(&self, name: &str) -> Option<f64> {
        let name = match name {
            "output_tokens_per_s" => "output_throughput",
            "total_tokens_per_s" => "total_token_throughput",
            "requests_per_s" => "request_throughput",
            "goodput_requests_per_s" => "request_goodput",
            other => other,
        };
        let value = match name {
            "completed" => self.completed as f64,
            "failed" => self.failed as f64,
            "duration" => self.duration_s,
            "total_input_tokens" => self.total_input_tokens as f64,
            "total_output_tokens" => self.total_output_tokens as f64,
            "request_throughput" => self.request_throughput,
            "request_goodput" => self.request_goodput?,
            "output_throughput" => self.output_throughput,
            "total_token_throughput" => self.total_token_throughput,
            _ => {
                let (stat, rest) = name.split_once('_')?;
                let stats = match rest {
                    "ttft_ms" => &self.ttft_ms,
                    "tpot_ms" => &self.tpot_ms,
                    "itl_ms" => &self.itl_ms,
                    "e2el_ms" => &self.e2el_ms,
                    _ => return None,
                };
                stats.get(stat)?
            }
        };
        Some(value)
    }
}

/// Every name [`Metrics::get`] answers, in report order.
pub fn metric_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "completed",
        "failed",
        "duration",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
    ]
    .map(String::from)
    .to_vec();
    for metric in ["ttft", "tpot", "itl", "e2el"] {
        for stat in ["mean", "median", "std", "p90", "p95", "p99"] {
            names.push(format!("{stat}_{metric}_ms"));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client::RequestError;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A successful request with usage, from recorded timings in ms.
    fn ok(ttft: u64, itl: &[u64], latency: u64, out: u64, prompt: u64) -> RequestRecord {
        RequestRecord {
            ttft: Some(d(ttft)),
            itl: itl.iter().map(|&ms| d(ms)).collect(),
            latency: d(latency),
            output_tokens: out,
            prompt_tokens: Some(prompt),
            usage_reported: true,
            error: None,
        }
    }

    fn failed(kind: ErrorKind) -> RequestRecord {
        RequestRecord {
            error: Some(RequestError {
                kind,
                message: "x".into(),
            }),
            ..RequestRecord::default()
        }
    }

    fn recorded() -> Vec<RequestRecord> {
        vec![
            ok(100, &[20, 30], 160, 3, 10),
            ok(300, &[50], 360, 2, 20),
            failed(ErrorKind::Stalled),
            ok(50, &[], 50, 1, 5),
            failed(ErrorKind::HttpStatus),
            failed(ErrorKind::Stalled),
        ]
    }

    #[test]
    fn percentiles_match_numpy_linear_interpolation() {
        // Expected values from numpy 1.x: np.percentile(a, [50, 90, 95, 99]), np.mean, np.std.
        let s = Stats::of(&[12.0, 3.5, 7.25, 100.0, 41.0, 8.0, 19.5]);
        assert!(close(s.median, 12.0), "{s:?}");
        assert!(close(s.p90, 64.6), "{s:?}");
        assert!(close(s.p95, 82.3), "{s:?}");
        assert!(close(s.p99, 96.46), "{s:?}");
        assert!(close(s.mean, 27.321428571428573), "{s:?}");
        assert!(close(s.std, 31.867671226303237), "{s:?}");
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!(close(percentile(&ten, 99.0), 9.91));
        assert!(close(percentile(&ten, 0.0), 1.0));
        assert!(close(percentile(&ten, 100.0), 10.0));
    }

    #[test]
    fn statistics_of_no_or_one_sample() {
        assert_eq!(Stats::of(&[]), Stats::default());
        let one = Stats::of(&[4.0]);
        assert_eq!(
            (one.median, one.p99, one.std, one.count),
            (4.0, 4.0, 0.0, 1)
        );
    }

    #[test]
    fn latencies_follow_vllm_definitions() {
        let m = Metrics::compute(&recorded(), Duration::from_secs(2), &[]);
        assert_eq!((m.completed, m.failed), (3, 3));
        assert_eq!(m.errors[&ErrorKind::Stalled], 2);
        assert_eq!(m.errors[&ErrorKind::HttpStatus], 1);
        assert!(close(m.ttft_ms.mean, 150.0) && close(m.ttft_ms.median, 100.0));
        // TPOT = (E2EL − TTFT) / (tokens − 1): (160−100)/2 = 30 and (360−300)/1 = 60; the
        // one-token request has none.
        assert_eq!(m.tpot_ms.count, 2);
        assert!(close(m.tpot_ms.mean, 45.0));
        assert_eq!(m.itl_ms.count, 3);
        assert!(close(m.itl_ms.median, 30.0));
        assert!(close(m.e2el_ms.median, 160.0));
    }

    #[test]
    fn throughputs_divide_successful_totals_by_the_duration() {
        let m = Metrics::compute(&recorded(), Duration::from_secs(2), &[]);
        assert_eq!((m.total_input_tokens, m.total_output_tokens), (35, 6));
        assert!(close(m.request_throughput, 1.5));
        assert!(close(m.output_throughput, 3.0));
        assert!(close(m.total_token_throughput, 20.5));
        assert_eq!(m.request_goodput, None);
        assert_eq!(m.token_source, TokenSource::Usage);
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let goodput = |slos: &[&str]| {
            let slos: Vec<Slo> = slos.iter().map(|s| s.parse().unwrap()).collect();
            let m = Metrics::compute(&recorded(), Duration::from_secs(2), &slos);
            m.request_goodput.unwrap()
        };
        assert!(close(goodput(&["ttft:200"]), 1.0)); // 100 and 50 ms
        assert!(close(goodput(&["ttft:100"]), 1.0)); // the bound is inclusive
        assert!(close(goodput(&["tpot:40"]), 1.0)); // 30 ms, and the one-token request
        assert!(close(goodput(&["ttft:200", "e2el:100"]), 0.5)); // only the 50 ms one
        assert!(close(goodput(&["e2el:1000"]), 1.5)); // failed requests are never good
        assert!(close(goodput(&["ttft:10"]), 0.0));
    }

    #[test]
    fn missing_usage_switches_to_chunk_counting() {
        let mut records = recorded();
        records[0].usage_reported = false;
        let m = Metrics::compute(&records, Duration::from_secs(2), &[]);
        assert_eq!(m.token_source, TokenSource::Chunks);
    }

    #[test]
    fn slos_parse_like_vllm_goodput_flags() {
        let slo: Slo = "tpot:12.5".parse().unwrap();
        assert_eq!(slo.metric, SloMetric::Tpot);
        assert!(close(slo.limit_ms, 12.5));
        assert!("itl:5".parse::<Slo>().is_err());
        assert!("ttft".parse::<Slo>().is_err());
    }

    #[test]
    fn every_listed_metric_name_resolves() {
        let slos = ["ttft:200".parse().unwrap()];
        let m = Metrics::compute(&recorded(), Duration::from_secs(2), &slos);
        for name in metric_names() {
            assert!(m.get(&name).is_some(), "{name}");
        }
        for name in crate::manifest::METRICS {
            assert!(m.get(name).is_some(), "Serve.toml metric {name}");
        }
        assert_eq!(m.get("output_tokens_per_s"), Some(m.output_throughput));
        assert_eq!(m.get("p99_ttft_ms"), Some(m.ttft_ms.p99));
        assert_eq!(m.get("p42_ttft_ms"), None);
        assert_eq!(m.get("mean_foo_ms"), None);
    }
}
