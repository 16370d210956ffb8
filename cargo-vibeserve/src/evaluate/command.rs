//! `cargo vibeserve evaluate DIR`: judge and measure a staged batch of candidates where
//! the target's hardware is (a GPU host with no Rust toolchain, or this machine), and
//! write `DIR/results.json` for `build --resume DIR`.
//!
//! Order: materialise a dummy model once (and its perturbed twin); judge round 0 when
//! the bundle asks for a baseline; judge every candidate that built; then measure every
//! candidate that passed against the incumbent in one interleaved run
//! ([`Evaluator::compare_many`]). Each candidate's verdict follows a local round's
//! rules against the incumbent; `--resume` settles which one the batch keeps.

use std::path::{Path, PathBuf};

use super::bundle::{
    BUNDLE_FILE, BUNDLE_VERSION, Bundle, BundleError, CandidateResult, Measuring, ProbeResult,
    RESULTS_FILE, Results, bundle_digest, read_json, unpack, write_json,
};
use super::dummy::{DummyError, DummyJudge, materialize_models};
use super::{EvaluateError, Evaluation, Evaluator, median};
use crate::build::rounds::{key_metrics, verdict_of};
use crate::judge::{Candidate, Judge, JudgeError, Judgement};
use crate::manifest::{Manifest, ManifestError, ModelSource};
use crate::search::Verdict;

/// `cargo vibeserve evaluate DIR`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The bundle `cargo vibeserve build TARGET --stage DIR` wrote.
    pub dir: PathBuf,
    /// The model file of a GGUF target (default: its Serve.toml source, fetched into
    /// DIR/cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where a `dummy` model's weights are materialised (default: DIR/models); a folder
    /// that already holds them is reused.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
}

/// Runs `cargo vibeserve evaluate DIR`.
///
/// `DIR/results.json` is written after each judgement and each benchmark repetition.
/// When it holds an earlier, interrupted run of the same bundle on the same device
/// (a job cut off by its time limit), its judgements and repetitions are kept and only
/// what is missing is done: judging the rest, then the benchmark's missing repetitions.
pub fn run(args: &EvaluateArgs) -> Result<(), CommandError> {
    let dir = &args.dir;
    let bundle: Bundle = read_json(dir, BUNDLE_FILE)?;
    let manifest = Manifest::load(&dir.join(&bundle.manifest))?;
    let reference = unpack(dir, &bundle.reference)?;
    let incumbent = unpack(dir, &bundle.incumbent)?;
    let mut judges = Judges::new(&manifest, &bundle, args, &reference)?;
    let evaluator = Evaluator::new(&manifest, &judges.model)?;
    let mut results = Results {
        version: BUNDLE_VERSION,
        target: bundle.target.clone(),
        device: device(),
        metric: evaluator.metric().to_string(),
        bundle: Some(bundle_digest(dir)?),
        baseline: None,
        candidates: Vec::new(),
        measuring: None,
    };
    eprintln!("evaluate {} on {}", bundle.target, results.device);
    let earlier = earlier_results(dir, &results);
    // Kept on disk until the benchmark goes on from them, in case this run is cut off too.
    results.measuring = earlier.as_ref().and_then(|e| e.measuring.clone());
    if bundle.baseline {
        let reused = earlier
            .as_ref()
            .and_then(|e| judged_before(e.baseline.as_ref()));
        let baseline = match reused {
            Some(b) => {
                eprintln!("round 0: judge {} (reused)", verdict_line(&b));
                b
            }
            None => judged(0, &judges.judge(&incumbent, false)?),
        };
        let failed = baseline.verdict == Verdict::RejectedJudge;
        let reasons = baseline.reason.clone().unwrap_or_default();
        results.baseline = Some(baseline);
        write_json(dir, RESULTS_FILE, &results)?;
        if failed {
            return Err(CommandError::Round0(reasons));
        }
    }
    let measured = judge_candidates(dir, &bundle, &mut judges, earlier.as_ref(), &mut results)?;
    if measured_before(&results, &measured) {
        eprintln!("measurements: all reused from the earlier run");
    } else {
        let servers = Servers {
            dir,
            incumbent: (bundle.incumbent_round, &incumbent),
            candidates: &measured,
        };
        measure(&evaluator, &servers, earlier.as_ref(), &mut results)?;
        write_json(dir, RESULTS_FILE, &results)?;
    }
    for r in results.baseline.iter().chain(&results.candidates) {
        println!("round {}: {}", r.round, verdict_line(r));
    }
    println!("results: {}", dir.join(RESULTS_FILE).display());
    Ok(())
}

/// Judges every candidate of the bundle (or keeps its judgement from `earlier`) into
/// `results`, written to `DIR/results.json` after each, so that a run cut short keeps
/// what it judged; returns those that passed, to be measured, with their binaries.
fn judge_candidates(
    dir: &Path,
    bundle: &Bundle,
    judges: &mut Judges,
    earlier: Option<&Results>,
    results: &mut Results,
) -> Result<Vec<(usize, PathBuf)>, CommandError> {
    let mut measured = Vec::new();
    for candidate in &bundle.candidates {
        let before = earlier
            .and_then(|e| judged_before(e.candidates.iter().find(|r| r.round == candidate.round)));
        let reused = before.is_some() && candidate.binary.is_some();
        let result = match (&candidate.binary, before) {
            (None, _) => CandidateResult {
                reason: candidate.build_error.clone(),
                ..empty(candidate.round, Verdict::RejectedBuild)
            },
            (Some(name), before) => {
                let bin = unpack(dir, name)?;
                let result = match before {
                    Some(r) => r,
                    None => judged(candidate.round, &judges.judge(&bin, true)?),
                };
                if result.verdict != Verdict::RejectedJudge {
                    measured.push((results.candidates.len(), bin));
                }
                result
            }
        };
        let note = if reused { " (reused)" } else { "" };
        eprintln!(
            "round {}: judge {}{note}",
            result.round,
            verdict_line(&result)
        );
        results.candidates.push(result);
        write_json(dir, RESULTS_FILE, results)?;
    }
    Ok(measured)
}

/// The results of an earlier run of this bundle on this device in `DIR/results.json`,
/// if there are any; says what it reuses, or why it reuses nothing.
fn earlier_results(dir: &Path, now: &Results) -> Option<Results> {
    if !dir.join(RESULTS_FILE).exists() {
        return None;
    }
    let why_not = match read_json::<Results>(dir, RESULTS_FILE) {
        Err(e) => format!("unreadable ({e})"),
        Ok(e) if e.bundle != now.bundle || e.target != now.target => {
            "of another bundle".to_string()
        }
        Ok(e) if e.device != now.device || e.metric != now.metric => {
            format!("from another device ({})", e.device)
        }
        Ok(e) => {
            let judged: Vec<String> = e
                .baseline
                .iter()
                .chain(&e.candidates)
                .filter(|r| judged_before(Some(r)).is_some())
                .map(|r| r.round.to_string())
                .collect();
            eprintln!(
                "resuming an interrupted run: judgements of round(s) {} reused from {RESULTS_FILE}",
                if judged.is_empty() {
                    "-".to_string()
                } else {
                    judged.join(", ")
                }
            );
            return Some(e);
        }
    };
    eprintln!("{RESULTS_FILE} left by an earlier run is {why_not}: starting over");
    None
}

/// `result`, when it carries the Judge's probes (it was judged, maybe measured too).
fn judged_before(result: Option<&CandidateResult>) -> Option<CandidateResult> {
    result.filter(|r| !r.probes.is_empty()).cloned()
}

/// Whether every figure the benchmark would produce is already in `results`: the
/// baseline's (when there is one) and every judged-and-passed candidate's.
fn measured_before(results: &Results, measured: &[(usize, PathBuf)]) -> bool {
    let baseline = results
        .baseline
        .as_ref()
        .is_none_or(|b| b.objective.is_some());
    let candidates = measured
        .iter()
        .all(|(i, _)| results.candidates[*i].objective.is_some());
    baseline && candidates && !(measured.is_empty() && results.baseline.is_none())
}

/// What a benchmark measures: the incumbent (round, binary) and the candidates that
/// passed the Judge (index in the results, binary), of the bundle in `dir`.
struct Servers<'a> {
    dir: &'a Path,
    incumbent: (u32, &'a Path),
    candidates: &'a [(usize, PathBuf)],
}

/// Measures the candidates that passed the Judge against the incumbent and fills in
/// their verdicts and figures, and the baseline's. Every repetition is kept in
/// results.json as it finishes; those an interrupted run of the same servers kept in
/// `earlier` are not run again.
fn measure(
    evaluator: &Evaluator,
    servers: &Servers,
    earlier: Option<&Results>,
    results: &mut Results,
) -> Result<(), CommandError> {
    if servers.candidates.is_empty() && results.baseline.is_none() {
        return Ok(());
    }
    let metric = results.metric.clone();
    let rounds: Vec<u32> = std::iter::once(servers.incumbent.0)
        .chain(
            servers
                .candidates
                .iter()
                .map(|(i, _)| results.candidates[*i].round),
        )
        .collect();
    let done = earlier
        .and_then(|e| e.measuring.as_ref())
        .filter(|m| m.rounds == rounds)
        .map(|m| m.measured.clone())
        .unwrap_or_default();
    let reused: usize = done.iter().map(|m| m.reps.len()).sum();
    if reused > 0 {
        eprintln!("measurements: {reused} repetition(s) of the interrupted benchmark reused");
    }
    let bins: Vec<&Path> = servers
        .candidates
        .iter()
        .map(|(_, b)| b.as_path())
        .collect();
    let mut snapshot = results.clone();
    let (inc, evals) = evaluator.compare_many_from(&bins, servers.incumbent.1, done, |so_far| {
        snapshot.measuring = Some(Measuring {
            rounds: rounds.clone(),
            measured: so_far.to_vec(),
        });
        write_json(servers.dir, RESULTS_FILE, &snapshot).map_err(CommandError::from)
    })?;
    results.measuring = None;
    if let Some(baseline) = &mut results.baseline {
        baseline.objective = median(&inc.objective(&metric));
        baseline.metrics = key_metrics(&inc.medians(), &metric);
        baseline.reps = inc.objective(&metric);
    }
    for ((index, _), eval) in servers.candidates.iter().zip(evals) {
        let result = &mut results.candidates[*index];
        fill(result, &eval, &metric);
        eprintln!("round {}: {}", result.round, eval.summary(&metric));
    }
    Ok(())
}

/// A candidate's verdict and figures from its evaluation.
fn fill(result: &mut CandidateResult, eval: &Evaluation, metric: &str) {
    let verdict = verdict_of(eval);
    let mut metrics = key_metrics(&eval.candidate.medians(), metric);
    metrics.insert("ratio_vs_best".into(), eval.ratio);
    result.verdict = verdict;
    result.objective = median(&eval.candidate.objective(metric));
    result.metrics = metrics;
    result.reps = eval.candidate.objective(metric);
    result.hints = Some(eval.hints.clone());
    result.reason = match verdict {
        Verdict::Accepted => None,
        Verdict::RejectedConstraint => Some(format!(
            "constraints violated: {}; {}",
            eval.violated.join(", "),
            eval.summary(metric)
        )),
        _ => Some(eval.summary(metric)),
    };
}

/// A result with no figures yet.
fn empty(round: u32, verdict: Verdict) -> CandidateResult {
    CandidateResult {
        round,
        verdict,
        objective: None,
        metrics: Default::default(),
        reps: Vec::new(),
        hints: None,
        reason: None,
        probes: Vec::new(),
    }
}

/// The result of a judged candidate: rejected-judge with the reasons, or (until it is
/// measured) baseline for round 0 and rejected-regression for the others.
fn judged(round: u32, judgement: &Judgement) -> CandidateResult {
    let (verdict, reason) = match (judgement.passed(), round) {
        (false, _) => (Verdict::RejectedJudge, Some(judgement.reasons())),
        (true, 0) => (Verdict::Baseline, None),
        (true, _) => (Verdict::RejectedRegression, Some("not measured".into())),
    };
    CandidateResult {
        reason,
        probes: judgement.outcomes.iter().map(ProbeResult::from).collect(),
        ..empty(round, verdict)
    }
}

fn verdict_line(r: &CandidateResult) -> String {
    let objective = r.objective.map_or("-".into(), |o| format!("{o:.2}"));
    let reason = r.reason.as_deref().unwrap_or("");
    format!("{:<20} objective {objective} {reason}", r.verdict.as_str())
}

/// The GPUs `nvidia-smi` lists (name and count), else `cpu`.
fn device() -> String {
    let gpus = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let names: Vec<&str> = gpus.lines().filter(|l| !l.trim().is_empty()).collect();
    match names.first() {
        Some(first) => format!("{} x{}", first.trim(), names.len()),
        None => format!(
            "cpu ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    }
}

/// The two Judges of a run (round 0 has no reference to compare with; the candidates
/// have round 0) over one model.
struct Judges {
    model: PathBuf,
    kind: Kind,
}

enum Kind {
    Gguf {
        round0: Judge,
        candidates: Judge,
    },
    Dummy {
        round0: DummyJudge,
        candidates: DummyJudge,
    },
}

impl Judges {
    fn new(
        manifest: &Manifest,
        bundle: &Bundle,
        args: &EvaluateArgs,
        reference: &Path,
    ) -> Result<Judges, CommandError> {
        let reference = || Some(Candidate::binary(reference));
        if let ModelSource::Dummy { config, .. } = &manifest.model.source {
            let name = bundle.materialize.as_deref().ok_or_else(|| {
                BundleError::Mismatch("a dummy model's bundle has no materialize binary".into())
            })?;
            let bin = unpack(&args.dir, name)?;
            let root = args
                .models_dir
                .clone()
                .unwrap_or_else(|| args.dir.join("models"));
            let (model, perturbed) = materialize_models(manifest, &bin, &root)?;
            let text =
                std::fs::read_to_string(config).map_err(|e| DummyError::Model(e.to_string()))?;
            let vocab = crate::model::HfConfig::parse(&text, config)
                .map_err(|e| DummyError::Model(e.to_string()))?
                .vocab_size;
            let vocab = u32::try_from(vocab).unwrap_or(u32::MAX);
            let kind = Kind::Dummy {
                round0: DummyJudge::new(manifest, &model, &perturbed, vocab, None)?,
                candidates: DummyJudge::new(manifest, &model, &perturbed, vocab, reference())?,
            };
            return Ok(Judges { model, kind });
        }
        let model = match &args.model {
            Some(m) => m.clone(),
            None => crate::prepare::fetch_model(manifest, &args.dir.join("cache"))
                .map_err(|e| CommandError::Model(e.to_string()))?,
        };
        let metadata = crate::model::read_gguf_metadata(&model)
            .map_err(|e| CommandError::Model(e.to_string()))?;
        let work = args.dir.join("work");
        std::fs::create_dir_all(&work).map_err(|source| BundleError::Io {
            path: work.clone(),
            source,
        })?;
        let kind = Kind::Gguf {
            round0: Judge::new(manifest, &model, &metadata, &work, None)?,
            candidates: Judge::new(manifest, &model, &metadata, &work, reference())?,
        };
        Ok(Judges { model, kind })
    }

    /// Judges `bin`; `with_reference` for a candidate, not for round 0.
    fn judge(&mut self, bin: &Path, with_reference: bool) -> Result<Judgement, CommandError> {
        let candidate = Candidate::binary(bin);
        Ok(match (&mut self.kind, with_reference) {
            (Kind::Gguf { round0, .. }, false) => round0.judge(&candidate)?,
            (Kind::Gguf { candidates, .. }, true) => candidates.judge(&candidate)?,
            (Kind::Dummy { round0, .. }, false) => round0.judge(&candidate)?,
            (Kind::Dummy { candidates, .. }, true) => candidates.judge(&candidate)?,
        })
    }
}

/// What went wrong in `cargo vibeserve evaluate`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CommandError {
    /// The bundle could not be read, unpacked or written.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Bundle(#[from] BundleError),
    /// The bundle's Serve.toml is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Manifest(#[from] ManifestError),
    /// The model could not be found or read.
    #[error("the model: {0}")]
    #[diagnostic(help("pass --model PATH to name the GGUF file on this machine"))]
    Model(String),
    /// The Judge could not work.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Judge(#[from] JudgeError),
    /// The dummy model's Judge could not work.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dummy(#[from] DummyError),
    /// The Evaluator could not measure.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Evaluate(#[from] EvaluateError),
    /// Round 0 fails the Judge: nothing can be measured against it.
    #[error("the round-0 server fails the Accuracy Judge: {0}")]
    #[diagnostic(help(
        "round 0 is built from the template: this is a bug in the template or its engine"
    ))]
    Round0(String),
}
