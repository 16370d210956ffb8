//! What a target's Serve.toml contributes to a benchmark: its workload, arrival, peer,
//! repetitions, threads, verified model, per-request SLOs from its latency constraints,
//! and the check of every constraint against the measured medians.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::compare::Comparison;
use super::metrics::{Slo, SloMetric};
use crate::manifest::{self, CmpOp, Constraint, Hardware, Manifest, TargetArg};
use crate::prepare::{PrepareError, prepare};

/// Most requests in flight for Poisson arrivals, which a target gives without a
/// concurrency (vLLM's default is unbounded; a peer needs a finite slot count).
pub const POISSON_MAX_CONCURRENCY: usize = 64;

/// A target, loaded and with its model fetched and verified.
#[derive(Debug)]
pub struct TargetSetup {
    /// The loaded Serve.toml.
    pub manifest: Manifest,
    /// The verified model file.
    pub model_path: PathBuf,
    /// `<cargo target dir>/vibeserve`, for the generated server.
    pub vibeserve_dir: PathBuf,
}

impl TargetSetup {
    /// Load TARGET and fetch its model.
    pub fn load(target: Option<&str>) -> Result<Self, PrepareError> {
        let prepared = prepare(&TargetArg {
            target: target.map(str::to_owned),
        })?;
        Ok(TargetSetup {
            manifest: prepared.manifest,
            model_path: prepared.model_path,
            vibeserve_dir: prepared.vibeserve_dir,
        })
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.manifest.target.name
    }

    /// The target's workload file.
    pub fn workload(&self) -> &std::path::Path {
        &self.manifest.workload.requests
    }

    /// The concurrency levels its arrival implies.
    pub fn concurrency(&self) -> usize {
        match self.manifest.workload.arrival {
            manifest::Arrival::Concurrency(n) => n as usize,
            manifest::Arrival::Poisson { .. } => POISSON_MAX_CONCURRENCY,
        }
    }

    /// Its Poisson rate and seed, if its arrival is Poisson.
    pub fn poisson(&self) -> Option<(f64, u64)> {
        match self.manifest.workload.arrival {
            manifest::Arrival::Concurrency(_) => None,
            manifest::Arrival::Poisson { rate, seed } => Some((rate, seed)),
        }
    }

    /// Its CPU threads (`None` for a GPU target).
    pub fn threads(&self) -> Option<usize> {
        match self.manifest.hardware {
            Hardware::Cpu { threads, .. } => Some(threads as usize),
            Hardware::Cuda { .. } => None,
        }
    }

    /// Whether it names llama.cpp as its peer.
    pub fn wants_llama_cpp(&self) -> bool {
        self.manifest.benchmark.peer == Some(manifest::Peer::LlamaCpp)
    }

    /// Repetitions per server.
    pub fn repetitions(&self) -> usize {
        self.manifest.benchmark.repetitions as usize
    }

    /// Per-request SLOs for goodput: each upper bound on a TTFT, TPOT or E2EL statistic
    /// also bounds every single request's value (vLLM's `--goodput`).
    pub fn slos(&self) -> Vec<Slo> {
        self.manifest
            .benchmark
            .constraints
            .iter()
            .filter_map(slo_of)
            .collect()
    }

    /// Where a built server binary is looked for when `--server-bin` is not given: the
    /// release build in the cargo target directory beside `vibeserve/`.
    pub fn default_server_bin(&self) -> Option<PathBuf> {
        let bin = self.vibeserve_dir.parent()?.join("release").join("server");
        bin.is_file().then_some(bin)
    }
}

/// The per-request SLO a constraint implies, if it is an upper bound on a latency that
/// vLLM's goodput can bound per request.
pub fn slo_of(c: &Constraint) -> Option<Slo> {
    if !matches!(c.op, CmpOp::Le | CmpOp::Lt) {
        return None;
    }
    let name = c.metric.name();
    let metric = if name.ends_with("_ttft_ms") {
        SloMetric::Ttft
    } else if name.ends_with("_tpot_ms") {
        SloMetric::Tpot
    } else if name.ends_with("_e2el_ms") {
        SloMetric::E2el
    } else {
        return None;
    };
    Some(Slo {
        metric,
        limit_ms: c.value,
    })
}

/// Check every constraint against each server's median at each level: lines for the
/// terminal and a JSON list.
pub fn check_constraints(comparison: &Comparison, constraints: &[Constraint]) -> (String, Value) {
    let mut text = String::new();
    let mut out = Vec::new();
    for level in &comparison.levels {
        for c in constraints {
            let _ = write!(text, "c={} {c}:", level.concurrency);
            for (i, server) in comparison.contenders.iter().enumerate() {
                let value = level.median(i, c.metric.name());
                let holds = value.map(|v| c.holds(v));
                let verdict = match holds {
                    Some(true) => "ok",
                    Some(false) => "VIOLATED",
                    None => "not measured",
                };
                let shown = value.map_or("-".into(), |v| format!("{v:.2}"));
                let _ = write!(text, "  {} {shown} {verdict}", server.name);
                out.push(json!({
                    "concurrency": level.concurrency,
                    "constraint": c.to_string(),
                    "server": server.name,
                    "median": value,
                    "holds": holds,
                }));
            }
            let _ = writeln!(text);
        }
    }
    (text, out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Metric;

    fn constraint(metric: &str, op: CmpOp, value: f64) -> Constraint {
        let metric = Metric::from_name(metric).unwrap();
        Constraint { metric, op, value }
    }

    #[test]
    fn latency_upper_bounds_become_per_request_slos() {
        let slo = slo_of(&constraint("p99_ttft_ms", CmpOp::Le, 2000.0)).unwrap();
        assert_eq!((slo.metric, slo.limit_ms), (SloMetric::Ttft, 2000.0));
        let slo = slo_of(&constraint("mean_tpot_ms", CmpOp::Lt, 40.0)).unwrap();
        assert_eq!(slo.metric, SloMetric::Tpot);
        assert_eq!(slo_of(&constraint("p99_itl_ms", CmpOp::Le, 50.0)), None);
        assert_eq!(
            slo_of(&constraint("output_tokens_per_s", CmpOp::Ge, 9.0)),
            None
        );
        assert_eq!(slo_of(&constraint("p99_e2el_ms", CmpOp::Ge, 1.0)), None);
    }
}
