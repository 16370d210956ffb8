//! The drill-down: the server's own per-stage timings (`vibeserve_stage_seconds_total`
//! in `/metrics`), scraped when the measured pass starts and when it ends, become each
//! stage's share of the pass's wall time, and rules over those shares say what
//! dominates and which skills target it.
//!
//! The engine stages partition the one engine thread's busy time, so their shares sum
//! to at most 1 (the rest is the engine idling); the request stages (`queue_wait`,
//! `tokenize`, `respond`) are summed over requests, so their "share" is the mean number
//! of requests in that stage.
//!
//! Hardware counters (`perf stat`) are probed once; where the machine does not support
//! them the Evaluator says so, once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::manifest::Device;
use crate::skills::Stage;

/// The server's counter of seconds per stage.
pub const STAGE_METRIC: &str = "vibeserve_stage_seconds_total";
/// The server's counter of sequences that ended normally.
pub const FINISHED_METRIC: &str = "vibeserve_finished_sequences_total";
/// Prefix of the stage shares among a measurement's metrics (`stage_decode_products`).
pub const SHARE_PREFIX: &str = "stage_";
/// The engine thread's busy share (the sum of the engine stages).
pub const ENGINE_BUSY: &str = "stage_engine_busy";
/// Stages the engine thread spends, prefill's first.
pub const PREFILL_STAGES: [&str; 3] = ["prefill_products", "prefill_attention", "prefill_other"];
/// Decode's engine stages.
pub const DECODE_STAGES: [&str; 3] = ["decode_products", "decode_attention", "decode_other"];
/// The engine's stages outside the forward.
pub const OTHER_ENGINE_STAGES: [&str; 3] = ["schedule", "sample", "detokenize"];
/// How often the Evaluator looks for the end of the first warm-up request, which opens
/// the measured window: a scrape costs the server well under a millisecond.
pub const WINDOW_POLL: Duration = Duration::from_millis(50);
/// Below this busy share the engine thread is not the bottleneck: it waits for work
/// half the time, so the time goes to HTTP workers, tokenizing or the client.
pub const MIN_ENGINE_BUSY: f64 = 0.5;
/// Queueing dominates when on average this fraction of the clients' requests waits
/// for admission: a quarter of them idle is a larger loss than any kernel's share.
pub const QUEUED_CLIENT_FRACTION: f64 = 0.25;

/// One scrape of the server's stage counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    /// When it was taken.
    pub at: Instant,
    /// Seconds per stage label.
    pub seconds: BTreeMap<String, f64>,
    /// Sequences finished so far.
    pub finished: f64,
}

/// The stage counters in a `/metrics` text taken at `at`; `None` when it has none (a
/// server that does not report stages).
pub fn parse(text: &str, at: Instant) -> Option<Scrape> {
    let mut seconds = BTreeMap::new();
    let mut finished = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if name == FINISHED_METRIC {
            finished = value;
        } else if let Some(labels) = name.strip_prefix(STAGE_METRIC) {
            let stage = labels
                .strip_prefix("{stage=\"")
                .and_then(|l| l.strip_suffix("\"}"));
            if let Some(stage) = stage {
                seconds.insert(stage.to_string(), value);
            }
        }
    }
    (!seconds.is_empty()).then_some(Scrape {
        at,
        seconds,
        finished,
    })
}

/// Scrapes `base_url/metrics`; `None` when it cannot be read or has no stages.
pub async fn scrape(client: &reqwest::Client, base_url: &str) -> Option<Scrape> {
    let response = client
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    parse(&text, Instant::now())
}

/// Each stage's seconds between two scrapes per second of wall time, keyed
/// `stage_<label>`, plus [`ENGINE_BUSY`].
pub fn shares(before: &Scrape, after: &Scrape) -> BTreeMap<String, f64> {
    let wall = after.at.duration_since(before.at).as_secs_f64();
    if wall <= 0.0 {
        return BTreeMap::new();
    }
    let out: BTreeMap<String, f64> = after
        .seconds
        .iter()
        .map(|(stage, s)| {
            let delta = s - before.seconds.get(stage).copied().unwrap_or(0.0);
            (format!("{SHARE_PREFIX}{stage}"), delta.max(0.0) / wall)
        })
        .collect();
    with_engine_busy(out)
}

/// `shares` with [`ENGINE_BUSY`] added: the sum of the engine thread's stages.
fn with_engine_busy(mut shares: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let engine = PREFILL_STAGES
        .iter()
        .chain(&DECODE_STAGES)
        .chain(&OTHER_ENGINE_STAGES);
    let busy = engine.map(|s| share(&shares, s)).sum();
    shares.insert(ENGINE_BUSY.into(), busy);
    shares
}

/// A stage's share (0 when absent).
pub fn share(shares: &BTreeMap<String, f64>, stage: &str) -> f64 {
    shares
        .get(&format!("{SHARE_PREFIX}{stage}"))
        .copied()
        .unwrap_or(0.0)
}

/// What the stage shares say.
#[derive(Debug, Clone, PartialEq)]
pub struct Drill {
    /// The stage that dominates, if the engine does.
    pub dominant: Option<Stage>,
    /// Skill ids that target it, most specific first.
    pub suggest: Vec<String>,
    /// What was seen, in words, for the planner and the log.
    pub notes: Vec<String>,
}

/// The rules: the engine idling means the bottleneck is outside it; many requests
/// queued means admission; else prefill or decode by their engine time, and within it
/// the largest part names the skills (products: the kernels' register tiles on a CPU;
/// decode attention: the KV cache's element type and block size). `None` without stage
/// shares.
pub fn drill_down(shares: &BTreeMap<String, f64>, device: Device, clients: usize) -> Option<Drill> {
    let busy = *shares.get(ENGINE_BUSY)?;
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let mut notes = vec![format!("engine thread busy {} of the wall time", pct(busy))];
    let queued = share(shares, "queue_wait");
    if queued >= QUEUED_CLIENT_FRACTION * clients as f64 {
        notes.push(format!(
            "{queued:.1} of {clients} requests wait for admission on average"
        ));
        let suggest = [
            "serving/batch-seqs",
            "serving/kv-budget",
            "serving/batch-tokens",
        ];
        return Some(Drill {
            dominant: Some(Stage::Queueing),
            suggest: suggest.map(String::from).to_vec(),
            notes,
        });
    }
    if busy < MIN_ENGINE_BUSY {
        notes.push("the engine waits for work: HTTP, tokenizing or the client limit".into());
        return Some(Drill {
            dominant: None,
            suggest: vec!["hardware/http-threads".into()],
            notes,
        });
    }
    let sum = |stages: &[&str]| stages.iter().map(|s| share(shares, s)).sum::<f64>();
    let (dominant, group) = if sum(&PREFILL_STAGES) > sum(&DECODE_STAGES) {
        (Stage::Prefill, PREFILL_STAGES)
    } else {
        (Stage::Decode, DECODE_STAGES)
    };
    let candidates = group.iter().chain(&OTHER_ENGINE_STAGES);
    let top = candidates.max_by(|a, b| share(shares, a).total_cmp(&share(shares, b)))?;
    notes.push(format!(
        "largest stage: {top} at {} of the wall time",
        pct(share(shares, top))
    ));
    let suggest = match (*top, device) {
        ("decode_products" | "prefill_products", Device::Cpu) => {
            vec!["hardware/row-tile", "hardware/matmul-tiling"]
        }
        ("decode_attention", _) => vec!["serving/kv-dtype", "serving/kv-block-size"],
        ("prefill_attention" | "prefill_other", _) => vec!["serving/prefix-cache"],
        _ => {
            notes.push(format!("no skill in the library targets {top}"));
            Vec::new()
        }
    };
    Some(Drill {
        dominant: Some(dominant),
        suggest: suggest.into_iter().map(String::from).collect(),
        notes,
    })
}

/// Whether `perf stat` can read the cycle and instruction counters here; the reason
/// when it cannot.
pub fn perf_unsupported() -> Option<String> {
    let out = std::process::Command::new("perf")
        .args(["stat", "-x,", "-e", "cycles,instructions", "true"])
        .output();
    match out {
        Err(e) => Some(format!("perf stat cannot run ({e})")),
        Ok(o) if !o.status.success() => Some("perf stat failed".into()),
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("<not supported>") => Some(
            "perf stat: this machine does not support the cycle and instruction counters".into(),
        ),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares_of(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        with_engine_busy(
            pairs
                .iter()
                .map(|(k, v)| (format!("{SHARE_PREFIX}{k}"), *v))
                .collect(),
        )
    }

    #[test]
    fn parses_the_stage_counters_and_turns_deltas_into_shares() {
        let text = |decode: f64, finished: f64| {
            format!(
                "# HELP vibeserve_stage_seconds Seconds per stage\n\
                 {STAGE_METRIC}{{stage=\"decode_products\"}} {decode}\n\
                 {STAGE_METRIC}{{stage=\"queue_wait\"}} 1.0\n\
                 {FINISHED_METRIC} {finished}\n"
            )
        };
        let t0 = Instant::now();
        let before = parse(&text(2.0, 1.0), t0).expect("stages");
        assert_eq!(before.finished, 1.0);
        let after = parse(&text(3.5, 4.0), t0 + Duration::from_secs(2)).expect("stages");
        let s = shares(&before, &after);
        assert!((share(&s, "decode_products") - 0.75).abs() < 1e-12);
        assert_eq!(share(&s, "queue_wait"), 0.0);
        assert!(
            (s[ENGINE_BUSY] - 0.75).abs() < 1e-12,
            "queue wait is no engine time"
        );
        assert_eq!(parse("vibeserve_queue_depth 3\n", t0), None);
    }

    #[test]
    fn batched_cpu_decode_products_name_the_tile_skills() {
        let s = shares_of(&[
            ("decode_products", 0.6),
            ("decode_attention", 0.1),
            ("prefill_products", 0.2),
        ]);
        let d = drill_down(&s, Device::Cpu, 16).expect("stages");
        assert_eq!(d.dominant, Some(Stage::Decode));
        assert_eq!(d.suggest, ["hardware/row-tile", "hardware/matmul-tiling"]);
        assert!(
            d.notes.iter().any(|n| n.contains("decode_products at 60%")),
            "{:?}",
            d.notes
        );
        // The same shares on a GPU: products are not the CPU tiles' business.
        let gpu = drill_down(&s, Device::Cuda, 16).expect("stages");
        assert!(gpu.suggest.is_empty());
    }

    #[test]
    fn attention_prefill_queueing_and_an_idle_engine_each_have_their_rule() {
        let attention = shares_of(&[("decode_attention", 0.5), ("decode_products", 0.3)]);
        let d = drill_down(&attention, Device::Cpu, 16).expect("stages");
        assert_eq!(d.suggest, ["serving/kv-dtype", "serving/kv-block-size"]);
        let prefill = shares_of(&[("prefill_products", 0.5), ("decode_products", 0.3)]);
        let d = drill_down(&prefill, Device::Cpu, 16).expect("stages");
        assert_eq!(d.dominant, Some(Stage::Prefill));
        let mut queued = shares_of(&[("decode_products", 0.9)]);
        queued.insert(format!("{SHARE_PREFIX}queue_wait"), 4.0);
        let d = drill_down(&queued, Device::Cpu, 16).expect("stages");
        assert_eq!(d.dominant, Some(Stage::Queueing));
        assert!(
            drill_down(&queued, Device::Cpu, 32)
                .expect("stages")
                .dominant
                != Some(Stage::Queueing)
        );
        let idle = shares_of(&[("decode_products", 0.2), ("sample", 0.1)]);
        let d = drill_down(&idle, Device::Cpu, 16).expect("stages");
        assert_eq!(
            (d.dominant, d.suggest),
            (None, vec!["hardware/http-threads".to_string()])
        );
        let sampling = shares_of(&[("sample", 0.5), ("decode_products", 0.3)]);
        let d = drill_down(&sampling, Device::Cpu, 16).expect("stages");
        assert!(d.suggest.is_empty() && d.notes.iter().any(|n| n.contains("no skill")));
        assert_eq!(drill_down(&BTreeMap::new(), Device::Cpu, 16), None);
    }
}
