//! `cargo vibeserve build TARGET --resume DIR`: takes a staged batch's results back into
//! the state repository and Serve.lock.
//!
//! Every candidate is regenerated from its recorded move (its plan and tree digests must
//! match the bundle's) and recorded as an attempt with the same commits and trailers as
//! a local round. Verdicts follow a local round's rules against the incumbent; since
//! every candidate of a batch is one change to the same incumbent, at most one can
//! become the new best: of those that beat the incumbent, the one with the best
//! objective is accepted and the others are recorded as `rejected-regression` (they did
//! not beat the round that was kept). Serve.lock is then rewritten (atomically) from the
//! state's accepted rounds.

use std::path::Path;

use super::rounds::{HINTS_FILE, round_bin};
use super::{BuildError, best_bin, copy_bin};
use crate::evaluate::bundle::{
    BUNDLE_FILE, Bundle, BundleError, CandidateResult, RESULTS_FILE, Results, read_json,
};
use crate::generate::{generate, write_atomic};
use crate::lock::{Lock, LockedRound, lock_path};
use crate::manifest::Direction;
use crate::prepare::Prepared;
use crate::search::{Attempt, History, Task, Verdict};
use crate::state::{AttemptRecord, State};

/// Runs `--resume DIR`.
pub fn run(prepared: &Prepared, work: &Path, dir: &Path) -> Result<(), BuildError> {
    let bundle: Bundle = read_json(dir, BUNDLE_FILE)?;
    let results: Results = read_json(dir, RESULTS_FILE)?;
    check_bundle(prepared, &bundle, &results)?;
    let state = State::open(&work.join("state.git"))?;
    let direction = prepared.manifest.benchmark.objective.direction;
    let mut history = match (state.history(direction)?, bundle.baseline) {
        (Some(h), false) => h,
        (None, true) => record_baseline(prepared, &state, &results)?,
        (Some(_), true) => return Err(mismatch("the state already records round 0")),
        (None, false) => return Err(mismatch("the state records no round 0")),
    };
    let best = history.best().expect("a history holds round 0").clone();
    let first = bundle
        .candidates
        .first()
        .map_or(best.round + 1, |c| c.round);
    if best.round != bundle.incumbent_round || history.next_round() != first {
        return Err(mismatch(&format!(
            "the bundle's rounds start at {first} against round {}, the state is at round {} with best round {}",
            bundle.incumbent_round,
            history.next_round(),
            best.round
        )));
    }
    let keeper = keeper(&results.candidates, direction);
    println!(
        "{} (from {}, on {})",
        prepared.manifest.target.name,
        dir.display(),
        results.device
    );
    for c in &bundle.candidates {
        let r = results
            .candidates
            .iter()
            .find(|r| r.round == c.round)
            .ok_or_else(|| mismatch(&format!("results.json has no round {}", c.round)))?;
        let task = Task {
            skill: c.skill.clone(),
            label: c.label.clone(),
            changes: c.changes.clone(),
        };
        let plan = crate::search::apply(&best.plan, &task)?;
        let files = generate(&plan)?;
        if plan.digest().to_string() != c.plan || files.tree_digest() != c.tree {
            return Err(mismatch(&format!(
                "round {} regenerates differently here (plan {}, staged {}): the templates changed since --stage",
                c.round,
                plan.digest(),
                c.plan
            )));
        }
        let verdict = match r.verdict {
            Verdict::Accepted if keeper != Some(c.round) => Verdict::RejectedRegression,
            v => v,
        };
        let record = AttemptRecord::new(
            c.round,
            Some(&task),
            &plan,
            verdict,
            r.objective,
            r.metrics.clone(),
        );
        state.record(&record, &files)?;
        let note = match (r.verdict, verdict) {
            (Verdict::Accepted, Verdict::RejectedRegression) => {
                " (beat the incumbent, but another round of the batch did better)".to_string()
            }
            _ => r
                .reason
                .as_deref()
                .map_or(String::new(), |s| format!(" ({s})")),
        };
        println!(
            "round {}: {verdict:<20} {} {}, {} {}{note}",
            c.round,
            c.skill,
            c.label,
            results.metric,
            r.objective.map_or("-".into(), |o| format!("{o:.2}"))
        );
        history.push(Attempt {
            round: c.round,
            task: Some(task),
            plan,
            verdict,
            objective: r.objective,
        });
    }
    write_hints(work, &results, keeper)?;
    write_lock(prepared, &state, &history)?;
    let best = history.best().expect("a history holds round 0");
    if round_bin(work, best.round).is_file() {
        copy_bin(&round_bin(work, best.round), &best_bin(prepared))?;
    }
    println!(
        "best: round {} ({} {}); Serve.lock written",
        best.round,
        results.metric,
        best.objective.map_or("-".into(), |o| format!("{o:.2}"))
    );
    Ok(())
}

/// The bundle must be this target's, on this model, with a result for each candidate.
fn check_bundle(prepared: &Prepared, bundle: &Bundle, results: &Results) -> Result<(), BuildError> {
    let name = &prepared.manifest.target.name;
    if &bundle.target != name || &results.target != name {
        return Err(mismatch(&format!(
            "the bundle is for {}, not {name}",
            bundle.target
        )));
    }
    if bundle.model_digest != prepared.model_digest {
        return Err(mismatch("the bundle was staged for another model"));
    }
    if bundle.baseline && results.baseline.is_none() {
        return Err(mismatch("results.json has no round-0 baseline"));
    }
    Ok(())
}

/// Records round 0 from the results' baseline; fails if it did not pass the Judge.
fn record_baseline(
    prepared: &Prepared,
    state: &State,
    results: &Results,
) -> Result<History, BuildError> {
    let base = results.baseline.as_ref().expect("checked by check_bundle");
    if base.verdict != Verdict::Baseline {
        return Err(BuildError::Rejected {
            what: "round-0".into(),
            reasons: base.reason.clone().unwrap_or_default(),
        });
    }
    let plan = crate::generate::command::round0_plan(prepared)?;
    let files = generate(&plan)?;
    let record = AttemptRecord::new(
        0,
        None,
        &plan,
        Verdict::Baseline,
        base.objective,
        base.metrics.clone(),
    );
    state.record(&record, &files)?;
    println!(
        "round 0: baseline, {} {}",
        results.metric,
        base.objective.map_or("-".into(), |o| format!("{o:.2}"))
    );
    let direction = prepared.manifest.benchmark.objective.direction;
    Ok(History::new(direction, plan, base.objective))
}

/// The round the batch keeps: of the candidates accepted against the incumbent, the one
/// with the best objective (the earliest on a tie).
fn keeper(results: &[CandidateResult], direction: Direction) -> Option<u32> {
    let better = |a: f64, b: f64| match direction {
        Direction::Max => a > b,
        Direction::Min => a < b,
    };
    let mut best: Option<(u32, f64)> = None;
    for r in results.iter().filter(|r| r.verdict == Verdict::Accepted) {
        let Some(o) = r.objective else { continue };
        if best.is_none_or(|(_, b)| better(o, b)) {
            best = Some((r.round, o));
        }
    }
    best.map(|(round, _)| round)
}

/// The hints of the kept round, else of the last measured one, for the next planning.
fn write_hints(work: &Path, results: &Results, keeper: Option<u32>) -> Result<(), BuildError> {
    let measured = results.candidates.iter().filter(|r| r.hints.is_some());
    let chosen = measured
        .clone()
        .find(|r| Some(r.round) == keeper)
        .or_else(|| measured.clone().next_back());
    if let Some(hints) = chosen.and_then(|r| r.hints.as_ref()) {
        let text = serde_json::to_string_pretty(hints).unwrap_or_default();
        write_atomic(&work.join(HINTS_FILE), text.as_bytes())?;
    }
    Ok(())
}

/// Serve.lock from round 0 and the state's accepted rounds (built-in moves only).
fn write_lock(prepared: &Prepared, state: &State, history: &History) -> Result<(), BuildError> {
    let round0 = &history.attempts[0].plan;
    let mut lock = Lock::new(&prepared.model_digest, round0, &generate(round0)?)?;
    for stored in state.attempts()? {
        let Some(round) = LockedRound::from_record(&stored.record) else {
            continue;
        };
        if round.changes.is_empty() {
            return Err(mismatch(&format!(
                "round {} is an LLM patch round: --resume records built-in rounds only",
                round.round
            )));
        }
        let plan = history
            .attempts
            .iter()
            .find(|a| a.round == round.round)
            .map(|a| a.plan.clone())
            .expect("the state's rounds are in the history");
        lock.accept(round, &generate(&plan)?);
    }
    Ok(lock.write(&lock_path(&prepared.manifest.path))?)
}

fn mismatch(message: &str) -> BuildError {
    BuildError::Bundle(BundleError::Mismatch(message.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(round: u32, verdict: Verdict, objective: Option<f64>) -> CandidateResult {
        CandidateResult {
            round,
            verdict,
            objective,
            metrics: Default::default(),
            reps: Vec::new(),
            hints: None,
            reason: None,
            probes: Vec::new(),
        }
    }

    #[test]
    fn a_batch_keeps_its_best_accepted_round_only() {
        let rs = [
            result(1, Verdict::Accepted, Some(10.0)),
            result(2, Verdict::RejectedRegression, Some(30.0)),
            result(3, Verdict::Accepted, Some(12.0)),
            result(4, Verdict::Accepted, Some(12.0)),
        ];
        assert_eq!(keeper(&rs, Direction::Max), Some(3));
        assert_eq!(keeper(&rs, Direction::Min), Some(1));
        assert_eq!(keeper(&rs[1..2], Direction::Max), None);
    }
}
