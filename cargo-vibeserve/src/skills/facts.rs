//! What a skill's `applies_to` conditions are checked against: the facts of one target.

use std::fmt;

use super::front::AppliesTo;
use crate::manifest::{Arrival, Hardware, Isa, Manifest};
use crate::model::{GgufMetadata, ModelMetadata};

/// The facts of a target that skills condition on. `None` means "not known".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `cpu` or `cuda`.
    pub device: String,
    /// The model's architecture (`llama`).
    pub arch: Option<String>,
    /// The CPU instruction set the plan is made for, `auto` resolved on this machine.
    pub isa: Option<String>,
    /// The model's main weight format (`Q4_1`): its most common non-F32 tensor type.
    pub quant: Option<String>,
    /// How requests arrive: `concurrency` (closed loop) or `rate` (open loop).
    pub arrival: String,
    /// Requests the workload keeps in flight; `None` for open-loop (Poisson) arrivals.
    pub concurrency: Option<u32>,
    /// Compute threads the target gives the server (CPU only).
    pub threads: Option<u32>,
    /// GPUs the target gives the server (CUDA only).
    pub gpus: Option<u32>,
}

impl Facts {
    /// The facts of a loaded target, with its model's metadata when it has been read.
    pub fn from_target(manifest: &Manifest, metadata: Option<&ModelMetadata>) -> Facts {
        let (isa, threads, gpus) = match &manifest.hardware {
            Hardware::Cpu { threads, isa } => {
                (Some(resolve_isa(*isa).to_string()), Some(*threads), None)
            }
            Hardware::Cuda { gpus, .. } => (None, None, Some(*gpus)),
        };
        let (arrival, concurrency) = match manifest.workload.arrival {
            Arrival::Concurrency(n) => ("concurrency", Some(n)),
            Arrival::Poisson { .. } => ("rate", None),
        };
        Facts {
            device: manifest.hardware.device().as_str().to_string(),
            arch: metadata.map(|m| m.architecture().to_string()),
            isa,
            quant: metadata.and_then(|m| match m {
                ModelMetadata::Gguf(gguf) => main_weight_type(gguf),
                // Dummy safetensors weights are bf16, as ggml names the type.
                ModelMetadata::HfConfig(_) => Some("BF16".to_string()),
            }),
            arrival: arrival.to_string(),
            concurrency,
            threads,
            gpus,
        }
    }
}

/// The most common tensor type other than F32 (norms and biases are F32 in every GGUF).
fn main_weight_type(metadata: &GgufMetadata) -> Option<String> {
    metadata
        .tensor_type_counts()
        .into_iter()
        .filter(|(ty, _)| *ty != "F32")
        .max_by_key(|(ty, n)| (*n, std::cmp::Reverse(*ty)))
        .map(|(ty, _)| ty.to_string())
}

/// `isa`, with `auto` replaced by the best instruction set this machine has: what the
/// manifest means by `auto` ("the best the generating machine has").
pub fn resolve_isa(isa: Isa) -> Isa {
    if isa != Isa::Auto {
        return isa;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
            return Isa::Avx512vnni;
        }
        if has!("avx2") && has!("fma") && has!("f16c") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// One condition of `applies_to` that a target does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// The condition's key (`isa`, `min_concurrency`, …).
    pub condition: &'static str,
    /// What the condition asks for.
    pub wanted: String,
    /// What the target has (`unknown` when the fact is not known).
    pub found: String,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (target: {})",
            self.condition, self.wanted, self.found
        )
    }
}

impl AppliesTo {
    /// The conditions `facts` do not meet; empty when the skill applies. An unknown fact
    /// fails its condition: a skill is only tried where it is known to fit.
    pub fn unmet(&self, facts: &Facts) -> Vec<Unmet> {
        let mut unmet = Vec::new();
        one_of(
            &mut unmet,
            "device",
            &self.device,
            &Some(facts.device.clone()),
        );
        one_of(
            &mut unmet,
            "arrival",
            &self.arrival,
            &Some(facts.arrival.clone()),
        );
        one_of(&mut unmet, "arch", &self.arch, &facts.arch);
        one_of(&mut unmet, "isa", &self.isa, &facts.isa);
        one_of(&mut unmet, "quant", &self.quant, &facts.quant);
        at_least(
            &mut unmet,
            "min_concurrency",
            self.min_concurrency,
            facts.concurrency,
            true,
        );
        at_least(
            &mut unmet,
            "max_concurrency",
            self.max_concurrency,
            facts.concurrency,
            false,
        );
        at_least(
            &mut unmet,
            "min_threads",
            self.min_threads,
            facts.threads,
            true,
        );
        at_least(&mut unmet, "min_gpus", self.min_gpus, facts.gpus, true);
        unmet
    }
}

/// Checks a list condition: the fact must be one of `allowed`.
fn one_of(
    unmet: &mut Vec<Unmet>,
    condition: &'static str,
    allowed: &Option<Vec<String>>,
    fact: &Option<String>,
) {
    let Some(allowed) = allowed else { return };
    if fact.as_ref().is_some_and(|f| allowed.contains(f)) {
        return;
    }
    unmet.push(Unmet {
        condition,
        wanted: format!("one of [{}]", allowed.join(", ")),
        found: fact.clone().unwrap_or_else(|| "unknown".to_string()),
    });
}

/// Checks a bound: the fact must be `>= bound` (`min`) or `<= bound` (not `min`).
fn at_least(
    unmet: &mut Vec<Unmet>,
    condition: &'static str,
    bound: Option<u32>,
    fact: Option<u32>,
    min: bool,
) {
    let Some(bound) = bound else { return };
    let holds = fact.is_some_and(|f| if min { f >= bound } else { f <= bound });
    if !holds {
        unmet.push(Unmet {
            condition,
            wanted: format!("{} {bound}", if min { ">=" } else { "<=" }),
            found: fact.map_or_else(|| "unknown".to_string(), |f| f.to_string()),
        });
    }
}
