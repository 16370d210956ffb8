//! Side-by-side runs: several servers benchmarked alternately, for several repetitions at
//! each concurrency level, summarised as each metric's median and the ratio of the first
//! server to the second. Alternating (A B, B A, A B, …) spreads the drift of a noisy
//! machine over both servers instead of charging it to one.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::metrics::percentile;
use super::report::BenchResult;
use super::run::{Arrival, BenchConfig, run};

/// The metrics summarised in comparisons, in table order.
pub const SUMMARY_METRICS: &[&str] = &[
    "completed",
    "failed",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
];

/// One server in a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    /// A short name for tables: `ours`, `llama-cpp`, or the URL.
    pub name: String,
    /// Its base URL.
    pub url: String,
    /// The command that started it, when the harness started it.
    pub command: Option<String>,
}

/// One measured run of one contender.
#[derive(Debug, Clone)]
pub struct Run {
    /// Index into [`Comparison::contenders`].
    pub contender: usize,
    /// 0-based repetition.
    pub repetition: usize,
    /// The result.
    pub result: BenchResult,
}

/// All runs at one concurrency level.
#[derive(Debug, Clone)]
pub struct Level {
    /// The maximum concurrency of these runs.
    pub concurrency: usize,
    /// The runs, in the order they ran.
    pub runs: Vec<Run>,
}

/// The outcome of [`compare`].
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The servers, in the order given (the ratio is first / second).
    pub contenders: Vec<Contender>,
    /// Repetitions asked for at each level.
    pub repetitions: usize,
    /// One entry per concurrency level.
    pub levels: Vec<Level>,
}

/// Benchmark `contenders` alternately with `base` (its URL, server command and concurrency
/// are replaced per run) at each of `concurrencies`, `repetitions` times each. Stops early,
/// keeping what finished, when `cancel` fires.
pub async fn compare(
    contenders: &[Contender],
    base: &BenchConfig,
    concurrencies: &[usize],
    repetitions: usize,
    cancel: &CancellationToken,
) -> Comparison {
    let mut levels = Vec::new();
    'levels: for &concurrency in concurrencies {
        let mut level = Level {
            concurrency,
            runs: Vec::new(),
        };
        for repetition in 0..repetitions {
            let mut order: Vec<usize> = (0..contenders.len()).collect();
            if repetition % 2 == 1 {
                order.reverse();
            }
            for contender in order {
                let c = &contenders[contender];
                let config = BenchConfig {
                    base_url: c.url.clone(),
                    server_command: c.command.clone(),
                    arrival: Arrival {
                        max_concurrency: concurrency,
                        ..base.arrival
                    },
                    ..base.clone()
                };
                let result = run(&config, cancel).await;
                eprintln!("{}", one_line(&c.name, concurrency, repetition, &result));
                let interrupted = result.info.interrupted;
                level.runs.push(Run {
                    contender,
                    repetition,
                    result,
                });
                if interrupted {
                    levels.push(level);
                    break 'levels;
                }
            }
        }
        levels.push(level);
    }
    Comparison {
        contenders: contenders.to_vec(),
        repetitions,
        levels,
    }
}

fn one_line(name: &str, concurrency: usize, repetition: usize, r: &BenchResult) -> String {
    let m = &r.metrics;
    format!(
        "c={concurrency} rep {} {name}: {:.1} output tok/s, median TTFT {:.1} ms, \
         median ITL {:.1} ms, {} ok / {} failed",
        repetition + 1,
        m.output_throughput,
        m.ttft_ms.median,
        m.itl_ms.median,
        m.completed,
        m.failed
    )
}

impl Level {
    /// The median of `metric` over `contender`'s runs, if it has any with that metric.
    pub fn median(&self, contender: usize, metric: &str) -> Option<f64> {
        let mut values: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.contender == contender)
            .filter_map(|r| r.result.metrics.get(metric))
            .collect();
        values.sort_by(f64::total_cmp);
        (!values.is_empty()).then(|| percentile(&values, 50.0))
    }

    /// Median of the first contender over median of the second.
    pub fn ratio(&self, metric: &str) -> Option<f64> {
        let (a, b) = (self.median(0, metric)?, self.median(1, metric)?);
        (b != 0.0).then(|| a / b)
    }
}

impl Comparison {
    /// A table per level: each metric's median per server, and the ratio first / second.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let names: Vec<&str> = self.contenders.iter().map(|c| c.name.as_str()).collect();
        let ratio_name = match names.as_slice() {
            [a, b, ..] => Some(format!("{a}/{b}")),
            _ => None,
        };
        for level in &self.levels {
            let _ = writeln!(
                t,
                "== concurrency {}: medians of {} repetition(s) ==",
                level.concurrency, self.repetitions
            );
            let _ = write!(t, "{:<24}", "metric");
            for name in &names {
                let _ = write!(t, "{name:>14}");
            }
            if let Some(ratio) = &ratio_name {
                let _ = write!(t, "{ratio:>18}");
            }
            let _ = writeln!(t);
            for metric in SUMMARY_METRICS {
                let medians: Vec<Option<f64>> =
                    (0..names.len()).map(|i| level.median(i, metric)).collect();
                if medians.iter().all(Option::is_none) {
                    continue;
                }
                let _ = write!(t, "{metric:<24}");
                for m in medians {
                    let _ = write!(t, "{:>14}", m.map_or("-".into(), |v| format!("{v:.2}")));
                }
                if ratio_name.is_some() {
                    let ratio = level
                        .ratio(metric)
                        .map_or("-".into(), |r| format!("{r:.3}"));
                    let _ = write!(t, "{ratio:>18}");
                }
                let _ = writeln!(t);
            }
        }
        t
    }

    /// The comparison as JSON: servers, per-level medians and ratios, and every run as a
    /// vLLM-style result object with `server` and `repetition` added.
    pub fn to_json(&self) -> Value {
        let levels: Vec<Value> = self.levels.iter().map(|l| self.level_json(l)).collect();
        let servers: Vec<Value> = self
            .contenders
            .iter()
            .map(|c| json!({ "name": c.name, "url": c.url, "command": c.command }))
            .collect();
        json!({ "servers": servers, "repetitions": self.repetitions, "levels": levels })
    }

    fn level_json(&self, level: &Level) -> Value {
        let mut medians = Map::new();
        for (i, c) in self.contenders.iter().enumerate() {
            let values: Map<String, Value> = SUMMARY_METRICS
                .iter()
                .filter_map(|m| Some((m.to_string(), level.median(i, m)?.into())))
                .collect();
            medians.insert(c.name.clone(), values.into());
        }
        let ratios: Map<String, Value> = SUMMARY_METRICS
            .iter()
            .filter_map(|m| Some((m.to_string(), level.ratio(m)?.into())))
            .collect();
        let runs: Vec<Value> = level
            .runs
            .iter()
            .map(|run| {
                let mut result = run.result.to_json();
                if let Some(fields) = result.as_object_mut() {
                    let name = self.contenders[run.contender].name.clone();
                    fields.insert("server".into(), name.into());
                    fields.insert("repetition".into(), run.repetition.into());
                }
                result
            })
            .collect();
        json!({
            "concurrency": level.concurrency,
            "median": medians,
            "ratio": ratios,
            "runs": runs,
        })
    }
}
