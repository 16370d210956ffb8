//! The Accuracy Judge for a `dummy` model source (random bf16 safetensors weights made
//! from a seed, where the server runs). The GGUF Judge's probes read and rewrite GGUF
//! files; here the same questions are asked of the safetensors model:
//! 1. the target's accuracy command (for the CUDA targets, Hugging Face transformers on
//!    the same weights), `{url}` and `{model}` substituted, run in the manifest's folder;
//! 2. **perturbed weights**: the candidate restarted on the model of another seed must
//!    score the accuracy prompts differently — a server that ignores its weights cannot;
//! 3. **memorised answers**: seeded random token ids, scored by the candidate, must match
//!    the trusted reference server (round 0, built from the template).
//!
//! Both models are materialised once, by the generated crate's `materialize`, and shared
//! by every candidate.

use std::path::{Path, PathBuf};

use crate::bench::peer::{PeerError, ServerProcess};
use crate::judge::score::{self, Prompt, mean_abs_delta};
use crate::judge::{
    Candidate, Judgement, MAX_REFERENCE_DELTA, Probe, ProbeOutcome, RANDOM_PROMPT_SEED,
    RANDOM_PROMPT_TOKENS, WEIGHT_PROBE_PROMPTS, start_server, weights_verdict,
};
use crate::manifest::{Manifest, ModelSource};
use crate::model::dummy::{dummy_digest, dummy_dir, materialize};

/// The perturbed model's seed is the target's plus this: different weights, same shapes.
pub const PERTURBED_SEED_OFFSET: u64 = 1;
/// Tokens of each accuracy prompt the weights probe scores: enough positions to average
/// out, few enough to keep the probe quick on an 8B model.
pub const PROBE_PROMPT_TOKENS: usize = 64;

/// The target's model and the perturbed one, materialised under `root` (each once):
/// `(model, perturbed)`.
pub fn materialize_models(
    manifest: &Manifest,
    bin: &Path,
    root: &Path,
) -> Result<(PathBuf, PathBuf), DummyError> {
    let ModelSource::Dummy { config, seed } = &manifest.model.source else {
        return Err(DummyError::NotDummy);
    };
    let text = std::fs::read(config).map_err(|e| DummyError::Model(e.to_string()))?;
    let perturbed_seed = seed.wrapping_add(PERTURBED_SEED_OFFSET);
    let model = dummy_dir(root, &dummy_digest(&text, *seed));
    let perturbed = dummy_dir(root, &dummy_digest(&text, perturbed_seed));
    for (dir, seed) in [(&model, *seed), (&perturbed, perturbed_seed)] {
        let started = std::time::Instant::now();
        materialize(bin, config, seed, dir).map_err(|e| DummyError::Model(e.to_string()))?;
        eprintln!(
            "  materialize seed {seed}: {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    Ok((model, perturbed))
}

/// A `dummy` target's Judge.
pub struct DummyJudge {
    manifest: Manifest,
    model: PathBuf,
    perturbed: PathBuf,
    reference: Option<Candidate>,
    reference_scores: Option<Vec<Vec<f64>>>,
    prompts: Vec<Prompt>,
    unseen: Vec<Prompt>,
    runtime: tokio::runtime::Runtime,
}

impl DummyJudge {
    /// A Judge of `manifest`'s candidates on `model`, with `perturbed` for the weights
    /// probe; `reference` is the trusted server (`None` skips the memorised probe).
    pub fn new(
        manifest: &Manifest,
        model: &Path,
        perturbed: &Path,
        vocab: u32,
        reference: Option<Candidate>,
    ) -> Result<DummyJudge, DummyError> {
        let accuracy = manifest.accuracy.as_ref().ok_or(DummyError::NoAccuracy)?;
        let prompts = accuracy_prompts(&accuracy.golden)?;
        let unseen = score::unseen_prompts(
            &manifest.workload.requests,
            0,
            vocab,
            RANDOM_PROMPT_TOKENS,
            RANDOM_PROMPT_SEED,
        )
        .map_err(DummyError::Input)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DummyError::Input(e.to_string()))?;
        Ok(DummyJudge {
            manifest: manifest.clone(),
            model: model.to_path_buf(),
            perturbed: perturbed.to_path_buf(),
            reference,
            reference_scores: None,
            prompts,
            unseen,
            runtime,
        })
    }

    /// Runs every probe against `candidate`; `Err` only when the reference fails.
    pub fn judge(&mut self, candidate: &Candidate) -> Result<Judgement, DummyError> {
        let mut outcomes = Vec::new();
        let mut push = |probe, result: Result<String, String>| {
            let (passed, detail) = match result {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            outcomes.push(ProbeOutcome {
                probe,
                passed,
                detail,
            });
        };
        let (original, unseen) = match self.start(candidate, &self.model) {
            Err(e) => {
                push(
                    Probe::Accuracy,
                    Err(format!("the server did not start: {e}")),
                );
                return Ok(Judgement { outcomes });
            }
            Ok(server) => {
                push(Probe::Accuracy, self.accuracy(&server.url));
                (
                    self.score_all(&server.url, &self.prompts),
                    self.score_all(&server.url, &self.unseen),
                )
            }
        };
        let perturbed = self
            .start(candidate, &self.perturbed)
            .map_err(|e| format!("the server did not start on the perturbed model: {e}"))
            .and_then(|server| self.score_all(&server.url, &self.prompts));
        push(
            Probe::PerturbedWeights,
            weights_verdict(original, perturbed),
        );
        if self.reference.is_some() {
            let reference = self.reference_scores()?;
            push(Probe::Memorised, memorised_verdict(&reference, unseen));
        }
        Ok(Judgement { outcomes })
    }

    fn accuracy(&self, url: &str) -> Result<String, String> {
        let accuracy = self.manifest.accuracy.as_ref().ok_or("no [accuracy]")?;
        crate::judge::run_check(&accuracy.command_for(url, &self.model), &self.manifest.dir)
    }

    fn reference_scores(&mut self) -> Result<Vec<Vec<f64>>, DummyError> {
        if let Some(scores) = &self.reference_scores {
            return Ok(scores.clone());
        }
        let Some(reference) = self.reference.clone() else {
            return Ok(Vec::new());
        };
        let server = self
            .start(&reference, &self.model)
            .map_err(|e| DummyError::Reference(e.to_string()))?;
        let scores = self
            .score_all(&server.url, &self.unseen)
            .map_err(DummyError::Reference)?;
        self.reference_scores = Some(scores.clone());
        Ok(scores)
    }

    fn start(&self, candidate: &Candidate, model: &Path) -> Result<ServerProcess, PeerError> {
        start_server(&self.runtime, candidate, model, &self.manifest.target.name)
    }

    fn score_all(&self, url: &str, prompts: &[Prompt]) -> Result<Vec<Vec<f64>>, String> {
        let http = reqwest::Client::new();
        let name = &self.manifest.target.name;
        self.runtime.block_on(async {
            let mut out = Vec::new();
            for prompt in prompts {
                out.push(score::score(&http, url, name, prompt).await?);
            }
            Ok(out)
        })
    }
}

/// The first [`WEIGHT_PROBE_PROMPTS`] token-id prompts of the accuracy prompts file
/// (one JSON object a line with a `prompt` list), each cut to [`PROBE_PROMPT_TOKENS`].
fn accuracy_prompts(path: &Path) -> Result<Vec<Prompt>, DummyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DummyError::Input(format!("{}: {e}", path.display())))?;
    let prompts: Vec<Prompt> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let ids: Option<Vec<u32>> = v["prompt"]
                .as_array()?
                .iter()
                .take(PROBE_PROMPT_TOKENS)
                .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect();
            ids.map(Prompt::Ids)
        })
        .take(WEIGHT_PROBE_PROMPTS)
        .collect();
    if prompts.is_empty() {
        return Err(DummyError::Input(format!(
            "{}: no line has a `prompt` list of token ids",
            path.display()
        )));
    }
    Ok(prompts)
}

fn memorised_verdict(
    reference: &[Vec<f64>],
    candidate: Result<Vec<Vec<f64>>, String>,
) -> Result<String, String> {
    let candidate = candidate?;
    let deltas: Vec<f64> = reference
        .iter()
        .zip(&candidate)
        .map(|(r, c)| mean_abs_delta(r, c).unwrap_or(f64::INFINITY))
        .collect();
    let shown = show(&deltas);
    if !deltas.is_empty() && deltas.iter().all(|d| *d <= MAX_REFERENCE_DELTA) {
        Ok(format!(
            "random tokens vs reference, mean |Δ logprob| [{shown}]"
        ))
    } else {
        Err(format!(
            "random tokens disagree with the reference: mean |Δ logprob| [{shown}] \
             (each must be <= {MAX_REFERENCE_DELTA})"
        ))
    }
}

fn show(values: &[f64]) -> String {
    values
        .iter()
        .map(|d| format!("{d:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the dummy model's Judge could not work.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DummyError {
    /// The target's model is not a `dummy` source.
    #[error("the target's model is not a `dummy` source")]
    NotDummy,
    /// The target has no `[accuracy]` table.
    #[error("the target has no [accuracy] table, so nothing can judge its candidates")]
    NoAccuracy,
    /// A model could not be materialised.
    #[error("{0}")]
    Model(String),
    /// An input file could not be read.
    #[error("the Judge cannot read its prompts: {0}")]
    Input(String),
    /// The reference server failed.
    #[error("the reference server failed: {0}")]
    Reference(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weights_probe_needs_every_prompt_to_move() {
        let a = vec![vec![-1.0, -2.0], vec![-1.0, -1.0]];
        let moved = vec![vec![-3.0, -4.0], vec![-2.0, -3.0]];
        assert!(weights_verdict(Ok(a.clone()), Ok(moved)).is_ok());
        let one_same = vec![vec![-3.0, -4.0], vec![-1.0, -1.1]];
        assert!(weights_verdict(Ok(a.clone()), Ok(one_same)).is_err());
        assert!(weights_verdict(Ok(a), Err("down".into())).is_err());
    }

    #[test]
    fn accuracy_prompts_are_cut_token_id_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.jsonl");
        let long: Vec<u32> = (0..200).collect();
        let text = format!(
            "{}\n{{\"prompt\": \"text\"}}\n{}\n",
            serde_json::json!({ "prompt": long }),
            serde_json::json!({ "prompt": [5, 6] })
        );
        std::fs::write(&path, text).expect("write");
        let prompts = accuracy_prompts(&path).expect("prompts");
        assert_eq!(prompts.len(), 2);
        assert_eq!(
            prompts[0],
            Prompt::Ids((0..PROBE_PROMPT_TOKENS as u32).collect())
        );
        assert_eq!(prompts[1], Prompt::Ids(vec![5, 6]));
    }
}
