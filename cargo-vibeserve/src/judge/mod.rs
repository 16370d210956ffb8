//! The Accuracy Judge: is a candidate server still the model, or a reward hack?
//!
//! It starts the candidate on a free loopback port and runs, in order:
//! 1. the target's accuracy command (`[accuracy] command`, `{url}` substituted, run in
//!    the manifest's folder; exit 0 is a pass, anything else a failure);
//! 2. **held-back prompts**: the held-out golden file's prompts (`[accuracy] heldout`,
//!    by default `heldout.jsonl` beside the golden file; they appear nowhere in the workload), teacher-forced: the
//!    reference continuation's logprobs must match the reference engine's within the
//!    accuracy gate's tolerance. Not the target's command: its free-running greedy floor
//!    (>= 40% of prompts identical for 16 tokens) is too coarse on 8 prompts, where one
//!    near-tie flips a whole prompt; the teacher-forced figure is the calibrated one;
//! 3. **perturbed weights**: the candidate restarted on a copy of the model with one
//!    tensor negated ([`perturb`]) must score the golden prompts differently — a server
//!    that ignores its weights cannot;
//! 4. **memorised answers**: perturbed workload prompts and random tokens, scored by the
//!    candidate, must match the trusted reference server (round 0, built from the
//!    template) — a table of memorised responses cannot answer prompts it never saw.
//!
//! Every probe runs, so the verdict lists every reason; the candidate passes only if all do.

pub mod perturb;
pub mod score;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bench::peer::{PeerError, ServerProcess, free_port, serve_args};
use crate::manifest::Manifest;
use crate::model::GgufMetadata;
use score::{Prompt, mean_abs_delta};

/// How long a candidate may take to answer `/health` after it starts.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Golden prompts scored by the weights probe.
pub const WEIGHT_PROBE_PROMPTS: usize = 3;
/// The perturbed model must move the golden prompts' logprobs by at least this much on
/// average: negating a layer's MLP output moves them by whole nats, rounding by < 0.05.
pub const MIN_PERTURBED_DELTA: f64 = 0.5;
/// Workload prompts (perturbed) scored by the memorised-answers probe.
pub const UNSEEN_PROMPTS: usize = 4;
/// Length of the random-token prompt.
pub const RANDOM_PROMPT_TOKENS: usize = 48;
/// Seed of the random-token prompt.
pub const RANDOM_PROMPT_SEED: u64 = 0x5eed;
/// Most mean |Δ logprob| against the reference per unseen prompt: two correct builds of
/// the same engine differ by rounding only (check.py admits 0.05 against llama.cpp).
pub const MAX_REFERENCE_DELTA: f64 = 0.1;
/// Most mean |Δ logprob| of a held-out prompt's continuation against the golden
/// reference (llama.cpp): check.py's calibrated gate over all positions.
pub const MAX_HELDOUT_DELTA: f64 = 0.05;

/// A server to judge: a program and the arguments before its `serve …` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The executable.
    pub program: PathBuf,
    /// Arguments placed before `serve --model M --port P --served-model-name N`.
    pub args: Vec<OsString>,
}

impl Candidate {
    /// A generated server binary.
    pub fn binary(path: &Path) -> Candidate {
        Candidate {
            program: path.to_path_buf(),
            args: Vec::new(),
        }
    }
}

/// The built-in checks and the target's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The target's accuracy command on its golden file.
    Accuracy,
    /// The accuracy command on held-back prompts.
    HeldOut,
    /// Outputs must change when the weights change.
    PerturbedWeights,
    /// Unseen prompts must match the reference server.
    Memorised,
}

impl Probe {
    /// The probe's name in verdicts.
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Accuracy => "accuracy",
            Probe::HeldOut => "held-out",
            Probe::PerturbedWeights => "perturbed-weights",
            Probe::Memorised => "memorised",
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// Which probe.
    pub probe: Probe,
    /// Whether the candidate passed it.
    pub passed: bool,
    /// What was measured, or why it failed.
    pub detail: String,
}

/// The Judge's verdict on one candidate: every probe's outcome.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Judgement {
    /// The outcomes, in the order the probes ran.
    pub outcomes: Vec<ProbeOutcome>,
}

impl Judgement {
    /// Whether every probe passed (and at least one ran).
    pub fn passed(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(|o| o.passed)
    }

    /// The outcome of `probe`, if it ran.
    pub fn outcome(&self, probe: Probe) -> Option<&ProbeOutcome> {
        self.outcomes.iter().find(|o| o.probe == probe)
    }

    /// The failed probes as `probe: detail`, joined by `; `.
    pub fn reasons(&self) -> String {
        self.outcomes
            .iter()
            .filter(|o| !o.passed)
            .map(|o| format!("{}: {}", o.probe.as_str(), o.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn push(&mut self, probe: Probe, result: Result<String, String>) {
        let (passed, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.outcomes.push(ProbeOutcome {
            probe,
            passed,
            detail,
        });
    }
}

/// A target's Judge: its accuracy command, its model, a perturbed copy, and the trusted
/// reference's scores of the unseen prompts (computed once, reused every round).
pub struct Judge {
    manifest: Manifest,
    model: PathBuf,
    perturbed: PathBuf,
    reference: Option<Candidate>,
    reference_scores: Option<Vec<Vec<f64>>>,
    unseen: Vec<Prompt>,
    runtime: tokio::runtime::Runtime,
}

impl Judge {
    /// A Judge for `manifest`'s target. The perturbed model is written to `work_dir` once.
    /// `reference` is the trusted server the memorised-answers probe compares against;
    /// `None` skips that probe (for the reference itself).
    pub fn new(
        manifest: &Manifest,
        model: &Path,
        metadata: &GgufMetadata,
        work_dir: &Path,
        reference: Option<Candidate>,
    ) -> Result<Judge, JudgeError> {
        let perturbed = work_dir.join("perturbed.gguf");
        if !perturbed.is_file() {
            perturb::write_perturbed(model, metadata, &perturbed)?;
        }
        let vocab = u32::try_from(metadata.vocab_size).unwrap_or(u32::MAX);
        let unseen = score::unseen_prompts(
            &manifest.workload.requests,
            UNSEEN_PROMPTS,
            vocab,
            RANDOM_PROMPT_TOKENS,
            RANDOM_PROMPT_SEED,
        )
        .map_err(JudgeError::Input)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(JudgeError::Runtime)?;
        Ok(Judge {
            manifest: manifest.clone(),
            model: model.to_path_buf(),
            perturbed,
            reference,
            reference_scores: None,
            unseen,
            runtime,
        })
    }

    /// Runs every probe against `candidate`. `Err` only when the Judge itself cannot
    /// work (the reference fails, an input is unreadable); a bad candidate is a
    /// [`Judgement`] that did not pass.
    pub fn judge(&mut self, candidate: &Candidate) -> Result<Judgement, JudgeError> {
        let mut verdict = Judgement::default();
        let golden = self.golden_prompts()?;
        let name = self.manifest.target.name.clone();
        let (original, unseen) = match self.start(candidate, &self.model.clone()) {
            Err(e) => {
                verdict.push(
                    Probe::Accuracy,
                    Err(format!("the server did not start: {e}")),
                );
                return Ok(verdict);
            }
            Ok(server) => {
                verdict.push(Probe::Accuracy, self.accuracy(&server.url));
                verdict.push(Probe::HeldOut, self.heldout(&server.url, &name));
                let original = self.score_all(&server.url, &name, &golden);
                let unseen = self.score_all(&server.url, &name, &self.unseen.clone());
                (original, unseen)
            }
        };
        let perturbed = self
            .start(candidate, &self.perturbed.clone())
            .map_err(|e| format!("the server did not start on the perturbed model: {e}"))
            .and_then(|server| self.score_all(&server.url, &name, &golden));
        verdict.push(
            Probe::PerturbedWeights,
            weights_verdict(original, perturbed),
        );
        if self.reference.is_some() {
            let reference = self.reference_scores()?;
            verdict.push(Probe::Memorised, memorised_verdict(&reference, unseen));
        }
        Ok(verdict)
    }

    fn golden_prompts(&self) -> Result<Vec<Prompt>, JudgeError> {
        let golden = self
            .manifest
            .accuracy
            .as_ref()
            .ok_or(JudgeError::NoAccuracy)?;
        let records = score::golden_records(&golden.golden, WEIGHT_PROBE_PROMPTS)
            .map_err(JudgeError::Input)?;
        Ok(records.into_iter().map(|r| r.prompt).collect())
    }

    fn heldout_path(&self) -> PathBuf {
        let heldout = self.manifest.accuracy.as_ref().map(|a| a.heldout.clone());
        heldout.unwrap_or_default()
    }

    fn reference_scores(&mut self) -> Result<Vec<Vec<f64>>, JudgeError> {
        if let Some(scores) = &self.reference_scores {
            return Ok(scores.clone());
        }
        let Some(reference) = self.reference.clone() else {
            return Ok(Vec::new());
        };
        let server = self
            .start(&reference, &self.model.clone())
            .map_err(JudgeError::Reference)?;
        let name = self.manifest.target.name.clone();
        let scores = self
            .score_all(&server.url, &name, &self.unseen.clone())
            .map_err(JudgeError::ReferenceScore)?;
        self.reference_scores = Some(scores.clone());
        Ok(scores)
    }

    fn start(&self, candidate: &Candidate, model: &Path) -> Result<ServerProcess, PeerError> {
        start_server(&self.runtime, candidate, model, &self.manifest.target.name)
    }

    fn score_all(
        &self,
        url: &str,
        model: &str,
        prompts: &[Prompt],
    ) -> Result<Vec<Vec<f64>>, String> {
        let http = reqwest::Client::new();
        self.runtime.block_on(async {
            let mut out = Vec::new();
            for prompt in prompts {
                out.push(score::score(&http, url, model, prompt).await?);
            }
            Ok(out)
        })
    }

    /// Runs the accuracy command against `url`.
    fn accuracy(&self, url: &str) -> Result<String, String> {
        let accuracy = self
            .manifest
            .accuracy
            .as_ref()
            .ok_or("the target has no [accuracy]")?;
        run_check(&accuracy.command_for(url, &self.model), &self.manifest.dir)
    }

    /// Scores the held-out prompts and compares them with the golden reference.
    fn heldout(&self, url: &str, model: &str) -> Result<String, String> {
        let path = self.heldout_path();
        let records = score::golden_records(&path, usize::MAX)?;
        let prompts: Vec<Prompt> = records.iter().map(|r| r.prompt.clone()).collect();
        let scored = self.score_all(url, model, &prompts)?;
        let deltas: Vec<Option<f64>> = records
            .iter()
            .zip(&scored)
            .map(|(r, s)| r.delta(s))
            .collect();
        let total: Vec<f64> = deltas.iter().map(|d| d.unwrap_or(f64::INFINITY)).collect();
        let mean = total.iter().sum::<f64>() / total.len().max(1) as f64;
        let shown = deltas
            .iter()
            .map(|d| d.map_or("missing".into(), |d| format!("{d:.3}")))
            .collect::<Vec<_>>()
            .join(", ");
        if !records.is_empty() && mean <= MAX_HELDOUT_DELTA {
            Ok(format!(
                "{} prompts, mean |Δ logprob| {mean:.4} [{shown}]",
                records.len()
            ))
        } else {
            Err(format!(
                "held-back prompts disagree with the reference: mean |Δ logprob| {mean:.4} \
                 (must be <= {MAX_HELDOUT_DELTA}) [{shown}]"
            ))
        }
    }
}

/// Runs a check command in `dir`: `Ok` with its last line on exit 0, `Err` otherwise.
pub fn run_check(command: &[String], dir: &Path) -> Result<String, String> {
    let (program, args) = command
        .split_first()
        .ok_or("the accuracy command is empty")?;
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    // A progress bar (transformers' tqdm) redraws its line with carriage returns: keep
    // what each line ends as, not every frame.
    let lines = text
        .lines()
        .map(|line| line.rsplit('\r').next().unwrap_or(line).trim_end())
        .filter(|line| !line.is_empty());
    let tail: Vec<&str> = lines.rev().take(3).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
    if output.status.success() {
        Ok(tail)
    } else {
        Err(format!(
            "`{}` exited with {}: {tail}",
            command.join(" "),
            output.status
        ))
    }
}

/// The perturbed-weights probe: every prompt's scores must move by at least
/// `MIN_PERTURBED_DELTA` when the weights change (perturbed, or another seed's).
pub(crate) fn weights_verdict(
    original: Result<Vec<Vec<f64>>, String>,
    perturbed: Result<Vec<Vec<f64>>, String>,
) -> Result<String, String> {
    let (original, perturbed) = (original?, perturbed?);
    let deltas: Vec<f64> = original
        .iter()
        .zip(&perturbed)
        .map(|(a, b)| mean_abs_delta(a, b).unwrap_or(f64::INFINITY))
        .collect();
    let least = deltas.iter().copied().fold(f64::INFINITY, f64::min);
    let shown = deltas
        .iter()
        .map(|d| format!("{d:.3}"))
        .collect::<Vec<_>>()
        .join(", ");
    if deltas.is_empty() || least < MIN_PERTURBED_DELTA {
        Err(format!(
            "outputs barely change when the weights do: mean |Δ logprob| per prompt [{shown}] \
             (each must be >= {MIN_PERTURBED_DELTA})"
        ))
    } else {
        Ok(format!("mean |Δ logprob| per prompt [{shown}]"))
    }
}

fn memorised_verdict(
    reference: &[Vec<f64>],
    candidate: Result<Vec<Vec<f64>>, String>,
) -> Result<String, String> {
    let candidate = candidate?;
    let deltas: Vec<Option<f64>> = reference
        .iter()
        .zip(&candidate)
        .map(|(r, c)| mean_abs_delta(r, c))
        .collect();
    let shown = deltas
        .iter()
        .map(|d| d.map_or("length differs".into(), |d| format!("{d:.3}")))
        .collect::<Vec<_>>()
        .join(", ");
    if deltas
        .iter()
        .all(|d| d.is_some_and(|d| d <= MAX_REFERENCE_DELTA))
    {
        Ok(format!(
            "unseen prompts vs reference, mean |Δ logprob| [{shown}]"
        ))
    } else {
        Err(format!(
            "unseen prompts disagree with the reference: mean |Δ logprob| [{shown}] \
             (each must be <= {MAX_REFERENCE_DELTA})"
        ))
    }
}

/// Why the Judge itself could not work.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum JudgeError {
    /// The target has no `[accuracy]` table.
    #[error("the target has no [accuracy] table, so nothing can judge its candidates")]
    #[diagnostic(help("add `[accuracy] command = [...]` and `golden = \"...\"` to Serve.toml"))]
    NoAccuracy,
    /// The perturbed model could not be written.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Perturb(#[from] perturb::PerturbError),
    /// A golden or workload file could not be read.
    #[error("the Judge cannot read its prompts: {0}")]
    Input(String),
    /// The reference server did not start.
    #[error("the reference server did not start")]
    Reference(#[source] PeerError),
    /// The reference server could not score the unseen prompts.
    #[error("the reference server could not score the unseen prompts: {0}")]
    ReferenceScore(String),
    /// The async runtime could not be created.
    #[error("cannot start the Judge's async runtime")]
    Runtime(#[source] std::io::Error),
}

/// Starts `candidate` serving `model` under the target's name on a free port, and waits
/// until it answers its health check.
pub fn start_server(
    runtime: &tokio::runtime::Runtime,
    candidate: &Candidate,
    model: &Path,
    served_name: &str,
) -> Result<ServerProcess, PeerError> {
    let port = free_port().map_err(|source| PeerError::Spawn {
        program: candidate.program.display().to_string(),
        source,
    })?;
    let mut args = candidate.args.clone();
    args.extend(serve_args(model, port, served_name));
    runtime.block_on(ServerProcess::start(
        &candidate.program,
        &args,
        port,
        HEALTH_TIMEOUT,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checks_progress_bar_frames_are_left_out_of_its_verdict() {
        let script = r"printf 'Loading 0%%\rLoading 50%%\rLoading 100%%\n\ntop-1 0.88\n'";
        let command = ["sh", "-c", script].map(String::from);
        let verdict = run_check(&command, Path::new("."));
        assert_eq!(verdict, Ok("Loading 100% | top-1 0.88".to_string()));
        let failing = ["sh", "-c", "echo 'FAIL 0/30'; exit 1"].map(String::from);
        let verdict = run_check(&failing, Path::new(".")).expect_err("exit 1 fails");
        assert!(
            verdict.ends_with("exited with exit status: 1: FAIL 0/30"),
            "{verdict}"
        );
    }
}
