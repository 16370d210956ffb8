//! The search: round 0, then `policy.next → apply → generate → compile → judge →
//! evaluate → record` until the round budget or the backlog runs out.
//!
//! Everything needed to resume lives in the state repository (the attempts and their
//! plans), `hints.json` (the last Evaluator hints) and the per-round binaries (rebuilt
//! from the recorded crate if missing). A rerun continues after the last recorded
//! attempt; an accepted round is never recomputed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{BuildError, best_bin, compile, copy_bin, gguf, step};
use crate::evaluate::{Evaluation, Evaluator, median};
use crate::generate::command::round0_plan;
use crate::generate::{FileSet, generate, write_atomic};
use crate::judge::{Candidate, Judge};
use crate::lock::{Lock, LockedRound, lock_path};
use crate::prepare::Prepared;
use crate::search::{self, Attempt, Hints, History, Task, Verdict};
use crate::skills::{Facts, Library};
use crate::state::{AttemptRecord, State};

/// The LLM back end's rounds: the Implementer's patch, the reviewer, the Evaluator's notes.
mod llm;

/// The last hints, beside the state repository.
pub const HINTS_FILE: &str = "hints.json";

/// A candidate's verdict, objective, metrics, the Evaluator's hints if it measured, and
/// why it was rejected, if it was.
type Outcome = (
    Verdict,
    Option<f64>,
    BTreeMap<String, f64>,
    Option<Hints>,
    Option<String>,
);

/// One search run's fixed parts.
struct Search<'a> {
    prepared: &'a Prepared,
    work: &'a Path,
    state: State,
    evaluator: Evaluator,
    judge: Judge,
    target_dir: PathBuf,
    /// The LLM back end, when it implements the rounds.
    llm: Option<llm::Llm>,
}

/// Runs the search up to round `rounds`, resuming whatever the state records; `agent`
/// is `[agent]` when the LLM back end implements the rounds.
pub fn run(
    prepared: &Prepared,
    work: &Path,
    rounds: u32,
    agent: Option<&crate::manifest::Agent>,
) -> Result<(), BuildError> {
    let manifest = &prepared.manifest;
    let state = State::open(&work.join("state.git"))?;
    let direction = manifest.benchmark.objective.direction;
    let reference = Candidate::binary(&round_bin(work, 0));
    let judge = Judge::new(
        manifest,
        &prepared.model_path,
        gguf(prepared)?,
        work,
        Some(reference),
    )?;
    let mut s = Search {
        prepared,
        work,
        state,
        evaluator: Evaluator::new(manifest, &prepared.model_path)?,
        judge,
        target_dir: compile::target_dir(&prepared.vibeserve_dir),
        llm: None,
    };
    let mut history = match s.state.history(direction)? {
        Some(h) => {
            eprintln!(
                "resuming after round {} (state {})",
                h.next_round() - 1,
                s.state.path().display()
            );
            h
        }
        None => s.round0()?,
    };
    s.ensure_bin(&history, 0)?;
    let library = Library::embedded()?;
    let facts = Facts::from_target(manifest, Some(&prepared.metadata));
    let mut policy = search::policy(
        manifest.search.policy,
        &library,
        &facts,
        manifest.search.seed,
    )?;
    if let Some(config) = agent {
        s.llm = Some(llm::Llm::new(prepared, config, library, &facts)?);
    }
    let mut hints = s.read_hints();
    while history.next_round() <= rounds {
        let (task, transcript) = s.next_task(&history, &hints, policy.as_mut());
        let Some(task) = task else {
            eprintln!("the {} policy has nothing left to try", policy.name());
            break;
        };
        let (attempt, new_hints) = match transcript {
            Some(transcript) => s.llm_round(&history, task, transcript)?,
            None => s.round(&history, task)?,
        };
        if let Some(h) = new_hints {
            hints = h;
            s.write_hints(&hints)?;
        }
        abort_if_asked(attempt.round);
        history.push(attempt);
    }
    s.finish(&history)
}

impl Search<'_> {
    fn round0(&mut self) -> Result<History, BuildError> {
        let plan = round0_plan(self.prepared)?;
        let files = generate(&plan)?;
        eprintln!("round 0: the template's defaults (plan {})", plan.digest());
        let bin = step("compile", || self.compile(&files, 0))?;
        let mut round0_judge = Judge::new(
            &self.prepared.manifest,
            &self.prepared.model_path,
            gguf(self.prepared)?,
            self.work,
            None,
        )?;
        let verdict = step("judge", || round0_judge.judge(&Candidate::binary(&bin)))?;
        if !verdict.passed() {
            return Err(BuildError::Rejected {
                what: "round-0".into(),
                reasons: verdict.reasons(),
            });
        }
        let measured = step("benchmark", || self.evaluator.measure(&bin))?;
        let metric = self.evaluator.metric().to_string();
        let objective = median(&measured.objective(&metric));
        let metrics = key_metrics(&measured.medians(), &metric);
        let record = AttemptRecord::new(0, None, &plan, Verdict::Baseline, objective, metrics);
        self.state.record(&record, &files)?;
        println!("round 0: baseline, {metric} {}", show(objective));
        let history = History::new(
            self.prepared.manifest.benchmark.objective.direction,
            plan,
            objective,
        );
        // Round 1 is planned from round 0's figures, like every later round.
        self.write_hints(&self.evaluator.hints(&measured))?;
        self.write_lock(&history)?;
        abort_if_asked(0);
        Ok(history)
    }

    /// One round: the task tried, its verdict, and the Evaluator's hints if it measured.
    fn round(
        &mut self,
        history: &History,
        task: Task,
    ) -> Result<(Attempt, Option<Hints>), BuildError> {
        let round = history.next_round();
        let best = history.best().expect("a history always holds round 0");
        let plan = search::apply(&best.plan, &task)?;
        eprintln!(
            "round {round}: {} — {} (plan {})",
            task.skill,
            task.label,
            plan.digest()
        );
        let files = self.crate_files(&plan, history, round)?;
        let (verdict, objective, metrics, hints, _) =
            self.try_candidate(&files, round, best.round, &mut || None)?;
        let record = AttemptRecord::new(round, Some(&task), &plan, verdict, objective, metrics);
        self.state.record(&record, &files)?;
        let change = match (objective, best.objective) {
            (Some(o), Some(b)) if b != 0.0 => format!(" ({:+.1}% vs best)", (o / b - 1.0) * 100.0),
            _ => String::new(),
        };
        println!(
            "round {round}: {verdict:<20} {} {}, {} {}{change}",
            task.skill,
            task.label,
            self.evaluator.metric(),
            show(objective)
        );
        let attempt = Attempt {
            round,
            task: Some(task),
            plan,
            verdict,
            objective,
        };
        self.conclude(history, attempt, hints)
    }

    /// Compile, judge, review (`review` gives a reason to reject, after the probes
    /// pass), measure: the verdict, objective, metrics, hints and rejection reason.
    fn try_candidate(
        &mut self,
        files: &FileSet,
        round: u32,
        best_round: u32,
        review: &mut dyn FnMut() -> Option<String>,
    ) -> Result<Outcome, BuildError> {
        let none = BTreeMap::new();
        let bin = match step("compile", || self.compile(files, round)) {
            Ok(bin) => bin,
            Err(BuildError::Compile(e)) => {
                eprintln!("  rejected: {e}");
                return Ok((
                    Verdict::RejectedBuild,
                    None,
                    none,
                    None,
                    Some(e.to_string()),
                ));
            }
            Err(e) => return Err(e),
        };
        let judgement = step("judge", || self.judge.judge(&Candidate::binary(&bin)))?;
        if !judgement.passed() {
            let reasons = judgement.reasons();
            eprintln!("  judge: {reasons}");
            return Ok((Verdict::RejectedJudge, None, none, None, Some(reasons)));
        }
        if let Some(reason) = review() {
            eprintln!("  review: {reason}");
            let reason = format!("review: {reason}");
            return Ok((Verdict::RejectedJudge, None, none, None, Some(reason)));
        }
        let incumbent = round_bin(self.work, best_round);
        let eval = step("benchmark", || self.evaluator.compare(&bin, &incumbent))?;
        let metric = self.evaluator.metric().to_string();
        eprintln!("  {}", eval.summary(&metric));
        let verdict = verdict_of(&eval);
        if !eval.violated.is_empty() {
            eprintln!("  constraints violated: {}", eval.violated.join(", "));
        }
        if !eval.incumbent_violated.is_empty() {
            eprintln!(
                "  the incumbent violated: {}",
                eval.incumbent_violated.join(", ")
            );
        }
        let objective = median(&eval.candidate.objective(&metric));
        let mut metrics = key_metrics(&eval.candidate.medians(), &metric);
        metrics.insert(crate::log::RATIO_METRIC.into(), eval.ratio);
        let reason = (verdict != Verdict::Accepted).then(|| eval.summary(&metric));
        Ok((verdict, objective, metrics, Some(eval.hints), reason))
    }

    fn compile(&self, files: &FileSet, round: u32) -> Result<PathBuf, BuildError> {
        let dir = self.prepared.server_dir();
        files.write(&dir)?;
        Ok(compile::compile(
            &dir,
            &self.target_dir,
            &round_bin(self.work, round),
        )?)
    }

    /// Rebuilds a kept round's binary from its recorded crate if it is missing.
    fn ensure_bin(&self, history: &History, round: u32) -> Result<(), BuildError> {
        if round_bin(self.work, round).is_file() {
            return Ok(());
        }
        let plan = history
            .attempts
            .iter()
            .find(|a| a.round == round)
            .map(|a| a.plan.clone())
            .expect("the round is in the history");
        step(&format!("rebuild round {round}'s server"), || {
            self.compile(&self.crate_files(&plan, history, round + 1)?, round)
        })?;
        Ok(())
    }

    fn finish(&self, history: &History) -> Result<(), BuildError> {
        let best = history.best().expect("a history always holds round 0");
        self.ensure_bin(history, best.round)?;
        let out = best_bin(self.prepared);
        copy_bin(&round_bin(self.work, best.round), &out)?;
        // Each accepted round was measured interleaved against the best before it, so
        // the product of those ratios is the final server against round 0 with the
        // machine's drift between rounds cancelled.
        let accepted: Vec<f64> = self
            .state
            .attempts()?
            .iter()
            .filter(|a| a.record.verdict == Verdict::Accepted)
            .filter_map(|a| a.record.metrics.get(crate::log::RATIO_METRIC).copied())
            .collect();
        let ratio = match accepted.is_empty() {
            true => String::new(),
            false => format!(
                ", x{:.3} vs round 0 (interleaved ratios of the accepted rounds, multiplied)",
                accepted.iter().product::<f64>()
            ),
        };
        println!(
            "best: round {} ({}{ratio}); server {}",
            best.round,
            show(best.objective),
            out.display()
        );
        Ok(())
    }

    /// Ends a round: a kept attempt rewrites Serve.lock with it.
    fn conclude(
        &self,
        history: &History,
        attempt: Attempt,
        hints: Option<Hints>,
    ) -> Result<(Attempt, Option<Hints>), BuildError> {
        if attempt.verdict.is_kept() {
            let mut next = history.clone();
            next.push(attempt.clone());
            self.write_lock(&next)?;
        }
        Ok((attempt, hints))
    }

    /// Serve.lock from the kept attempts of `history`.
    fn write_lock(&self, history: &History) -> Result<(), BuildError> {
        let manifest = &self.prepared.manifest;
        let round0 = &history.attempts[0];
        let sha = self.prepared.model_digest.clone();
        let mut lock = Lock::new(&sha, &round0.plan, &generate(&round0.plan)?)?;
        let stored: BTreeMap<u32, AttemptRecord> = self
            .state
            .attempts()?
            .into_iter()
            .map(|a| (a.record.round, a.record))
            .collect();
        for a in history
            .attempts
            .iter()
            .filter(|a| a.verdict == Verdict::Accepted)
        {
            let task = a.task.clone().expect("an accepted round has a task");
            let metrics = stored
                .get(&a.round)
                .map(|r| r.metrics.clone())
                .unwrap_or_default();
            let round = LockedRound {
                round: a.round,
                skill: task.skill,
                label: task.label,
                verdict: a.verdict,
                changes: task.changes,
                patch: self.lock_patch(a.round)?,
                metrics,
            };
            lock.accept(round, &self.crate_files(&a.plan, history, a.round + 1)?);
        }
        Ok(lock.write(&lock_path(&manifest.path))?)
    }

    fn read_hints(&self) -> Hints {
        std::fs::read_to_string(self.work.join(HINTS_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn write_hints(&self, hints: &Hints) -> Result<(), BuildError> {
        let text = serde_json::to_string_pretty(hints).unwrap_or_default();
        Ok(write_atomic(&self.work.join(HINTS_FILE), text.as_bytes())?)
    }
}

/// The verdict the Evaluator's numbers give: feasibility first, then the objective
/// beyond the noise (see [`crate::evaluate`]).
pub fn verdict_of(eval: &Evaluation) -> Verdict {
    let feasible = eval.violated.is_empty();
    let incumbent_feasible = eval.incumbent_violated.is_empty();
    match (feasible, incumbent_feasible) {
        (true, false) => Verdict::Accepted,
        (true, true) if eval.beats_noise => Verdict::Accepted,
        (true, true) => Verdict::RejectedRegression,
        (false, false) if eval.violation_shrinks => Verdict::Accepted,
        (false, _) => Verdict::RejectedConstraint,
    }
}

/// Where round `round`'s server binary is kept.
pub fn round_bin(work: &Path, round: u32) -> PathBuf {
    work.join("rounds")
        .join(round.to_string())
        .join(compile::SERVER_BIN)
}

/// The metrics worth a trailer: the objective's and the latency figures constraints use.
pub fn key_metrics(medians: &BTreeMap<String, f64>, objective: &str) -> BTreeMap<String, f64> {
    const KEPT: [&str; 5] = [
        "output_throughput",
        "median_ttft_ms",
        "p99_ttft_ms",
        "median_tpot_ms",
        "request_throughput",
    ];
    // The server's stage shares (`stage_*`) are kept too: the drill-down's evidence.
    medians
        .iter()
        .filter(|(k, _)| {
            KEPT.contains(&k.as_str())
                || k.as_str() == objective
                || k.starts_with(crate::evaluate::stages::SHARE_PREFIX)
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn show(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}"))
}

/// Exits as a kill would, when [`super::ABORT_AFTER_ROUND_ENV`] names this round.
fn abort_if_asked(round: u32) {
    let asked = std::env::var(super::ABORT_AFTER_ROUND_ENV).ok();
    if asked.and_then(|v| v.parse::<u32>().ok()) == Some(round) {
        eprintln!(
            "aborting after round {round} ({})",
            super::ABORT_AFTER_ROUND_ENV
        );
        std::process::exit(super::ABORT_EXIT_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(violated: bool, incumbent_violated: bool, beats: bool, shrinks: bool) -> Evaluation {
        let none = crate::evaluate::Measurement::default();
        let broken = |b: bool| {
            if b {
                vec!["p99_ttft_ms <= 2000".to_string()]
            } else {
                vec![]
            }
        };
        Evaluation {
            candidate: none.clone(),
            incumbent: none,
            ratio: 1.0,
            beats_noise: beats,
            violated: broken(violated),
            incumbent_violated: broken(incumbent_violated),
            violation_shrinks: shrinks,
            hints: Hints::default(),
        }
    }

    #[test]
    fn feasibility_comes_first_then_the_objective_beyond_the_noise() {
        // Feasible against an infeasible incumbent: accepted even without a faster objective.
        assert_eq!(
            verdict_of(&eval(false, true, false, false)),
            Verdict::Accepted
        );
        // Both feasible: only a gain beyond the noise.
        assert_eq!(
            verdict_of(&eval(false, false, true, false)),
            Verdict::Accepted
        );
        assert_eq!(
            verdict_of(&eval(false, false, false, false)),
            Verdict::RejectedRegression
        );
        // Infeasible against a feasible incumbent: never, however fast.
        assert_eq!(
            verdict_of(&eval(true, false, true, true)),
            Verdict::RejectedConstraint
        );
        // Both infeasible: a violation smaller beyond the noise wins.
        assert_eq!(
            verdict_of(&eval(true, true, false, true)),
            Verdict::Accepted
        );
        assert_eq!(
            verdict_of(&eval(true, true, true, false)),
            Verdict::RejectedConstraint
        );
    }

    #[test]
    fn round_binaries_are_kept_apart() {
        let work = Path::new("w");
        assert_ne!(round_bin(work, 0), round_bin(work, 1));
        assert!(round_bin(work, 3).ends_with("rounds/3/server"));
    }
}
