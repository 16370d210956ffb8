//! The search policies driven round by round against a synthetic objective.

use std::collections::BTreeSet;

use vibeserve::manifest::Direction;
use vibeserve::plan::Plan;
use vibeserve::search::{
    self, Attempt, Backlog, Evolutionary, Hints, History, Policy, Task, Verdict,
};
use vibeserve::skills::{Library, Stage};

use super::{cpu_facts, round0};

/// A made-up but deterministic objective (higher is better) with a known optimum:
/// prefill chunk 128, block size 32, 1 thread.
fn synthetic_objective(plan: &Plan) -> f64 {
    let mut score = 100.0;
    score -= (plan.serving.prefill_chunk as f64 / 128.0).log2().abs() * 5.0;
    score -= (plan.kv_cache.block_size as f64 / 32.0).log2().abs() * 3.0;
    score -= (plan.device.threads as f64 - 1.0).abs() * 4.0;
    score
}

/// Runs `rounds` rounds of `policy` against the synthetic objective; returns the history.
fn run_loop(policy: &mut dyn Policy, rounds: u32, hints: &Hints) -> History {
    let mut history = History::new(
        Direction::Max,
        round0(),
        Some(synthetic_objective(&round0())),
    );
    for _ in 0..rounds {
        let Some(task) = policy.next(&history, hints) else {
            break;
        };
        let best = history.best().unwrap();
        let plan = search::apply(&best.plan, &task).unwrap();
        assert!(
            !history.has_plan(&plan),
            "{} proposed a plan already tried: {}",
            policy.name(),
            task.label
        );
        let value = synthetic_objective(&plan);
        let verdict = if value > best.objective.unwrap() {
            Verdict::Accepted
        } else {
            Verdict::RejectedRegression
        };
        let round = history.next_round();
        history.push(Attempt {
            round,
            task: Some(task),
            plan,
            verdict,
            objective: Some(value),
        });
    }
    history
}

#[test]
fn backlog_follows_priorities_and_never_repeats() {
    let library = Library::embedded().unwrap();
    let facts = cpu_facts(4);
    let mut backlog = Backlog::new(search::candidates(&library, &facts));
    let history = run_loop(&mut backlog, 40, &Hints::default());
    let tasks: Vec<&Task> = history
        .attempts
        .iter()
        .filter_map(|a| a.task.as_ref())
        .collect();
    // The highest-priority applicable skill goes first.
    assert_eq!(tasks[0].skill, "serving/prefill-chunk");
    // Nothing is tried twice, and the backlog runs dry rather than looping.
    let labels: BTreeSet<(&str, &str)> = tasks
        .iter()
        .map(|t| (t.skill.as_str(), t.label.as_str()))
        .collect();
    assert_eq!(labels.len(), tasks.len());
    assert!(tasks.len() < 40);
    let best = history.best().unwrap();
    assert_eq!(
        (
            best.plan.serving.prefill_chunk,
            best.plan.kv_cache.block_size,
            best.plan.device.threads
        ),
        (128, 32, 1)
    );
    // Skills whose conditions fail never appear.
    assert!(
        tasks
            .iter()
            .all(|t| t.skill != "hardware/kernel-avx512vnni" && t.skill != "serving/batch-seqs")
    );
}

#[test]
fn backlog_reorders_by_hints() {
    let library = Library::embedded().unwrap();
    let facts = cpu_facts(4);
    let mut backlog = Backlog::new(search::candidates(&library, &facts));
    let history = History::new(Direction::Max, round0(), Some(1.0));
    let queueing = Hints {
        dominant: Some(Stage::Queueing),
        suggest: vec![],
    };
    let first = backlog.next(&history, &queueing).unwrap();
    let skill = library.get(&first.skill).unwrap();
    assert!(
        skill.front.addresses.contains(&Stage::Queueing),
        "{}",
        first.skill
    );
    let named = Hints {
        dominant: None,
        suggest: vec!["hardware/threads".into()],
    };
    assert_eq!(
        backlog.next(&history, &named).unwrap().skill,
        "hardware/threads"
    );
    // Same inputs, same answer.
    assert_eq!(
        backlog.next(&history, &named),
        backlog.next(&history, &named)
    );
}

#[test]
fn evolutionary_is_seeded_and_never_repeats_a_plan() {
    let library = Library::embedded().unwrap();
    let candidates = search::candidates(&library, &cpu_facts(4));
    let run = |seed| {
        run_loop(
            &mut Evolutionary::new(candidates.clone(), seed),
            12,
            &Hints::default(),
        )
    };
    let (a, b) = (run(7), run(7));
    assert_eq!(a, b);
    assert!(a.attempts.len() > 6);
    assert_ne!(run(8), a, "a different seed should explore differently");
    let best = a.best().unwrap().objective.unwrap();
    assert!(
        best > a.attempts[0].objective.unwrap(),
        "12 rounds found nothing better"
    );
}

#[test]
fn evolutionary_recombines_field_groups_of_two_parents() {
    let library = Library::embedded().unwrap();
    let candidates = search::candidates(&library, &cpu_facts(4));
    let mut history = History::new(Direction::Max, round0(), Some(1.0));
    let mut left = round0();
    left.serving.prefill_chunk = 64;
    let mut right = round0();
    right.kv_cache.block_size = 32;
    let task = |skill: &str| {
        Some(Task {
            skill: skill.into(),
            label: String::new(),
            changes: vec![],
        })
    };
    history.push(Attempt {
        round: 1,
        task: task("a"),
        plan: left.clone(),
        verdict: Verdict::Accepted,
        objective: Some(2.0),
    });
    history.push(Attempt {
        round: 2,
        task: task("b"),
        plan: right.clone(),
        verdict: Verdict::RejectedRegression,
        objective: Some(1.5),
    });
    let mut saw_recombination = false;
    for seed in 0..40 {
        let task = Evolutionary::new(candidates.clone(), seed)
            .next(&history, &Hints::default())
            .unwrap();
        let child = search::apply(&left, &task).unwrap();
        if task.skill == search::evolutionary::RECOMBINE_SKILL {
            saw_recombination = true;
            assert_eq!(
                child.serving.prefill_chunk, 64,
                "serving comes from the left parent (the other has the same)"
            );
            assert_eq!(
                child.kv_cache.block_size, 32,
                "the only new child takes kv_cache from the right"
            );
        }
    }
    assert!(saw_recombination);
}
