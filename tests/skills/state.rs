//! The state repository: attempts as commits with trailers, the `best` ref, resuming.

use vibeserve::manifest::Direction;
use vibeserve::plan::Plan;
use vibeserve::search::{Task, Verdict};
use vibeserve::skills::Change;
use vibeserve::state::{self, AttemptRecord, State};

use super::{files_for, metrics, round0};

/// Round `round`'s record for `plan`.
fn record(
    round: u32,
    plan: &Plan,
    changes: Vec<Change>,
    verdict: Verdict,
    objective: f64,
) -> AttemptRecord {
    let skill = (round > 0).then(|| "serving/prefill-chunk".to_string());
    AttemptRecord {
        round,
        label: skill.as_ref().map(|_| {
            changes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }),
        skill,
        changes,
        plan_digest: plan.digest().to_string(),
        verdict,
        objective: Some(objective),
        metrics: metrics(objective),
    }
}

/// Three attempts: round 0, an accepted round 1, a rejected round 2.
fn three_attempts() -> Vec<(AttemptRecord, Plan)> {
    let p0 = round0();
    let c1 = Change::new("serving.prefill_chunk", 128);
    let p1 = c1.apply(&p0).unwrap();
    let c2 = Change::new("device.kernel_variant", "avx2");
    let p2 = c2.apply(&p1).unwrap();
    vec![
        (record(0, &p0, vec![], Verdict::Baseline, 100.0), p0),
        (record(1, &p1, vec![c1], Verdict::Accepted, 110.0), p1),
        (
            record(2, &p2, vec![c2], Verdict::RejectedRegression, 104.5),
            p2,
        ),
    ]
}

fn write_all(state: &State, attempts: &[(AttemptRecord, Plan)]) -> Vec<String> {
    attempts
        .iter()
        .map(|(r, p)| state.record(r, &files_for(p)).unwrap())
        .collect()
}

#[test]
fn attempts_are_read_back_and_best_marks_the_last_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = state::state_dir(dir.path(), "smollm2-cpu");
    let attempts = three_attempts();
    let ids = write_all(&State::open(&path).unwrap(), &attempts);

    let reopened = State::open(&path).unwrap();
    let stored = reopened.attempts().unwrap();
    assert_eq!(stored.len(), 3);
    for ((stored, id), (record, plan)) in stored.iter().zip(&ids).zip(&attempts) {
        assert_eq!(&stored.commit, id);
        assert_eq!(&stored.record, record);
        assert_eq!(reopened.files(id).unwrap(), files_for(plan));
    }
    let best = reopened.best().unwrap().unwrap();
    assert_eq!(best.record.round, 1);
    assert_eq!(
        reopened.best_files().unwrap().unwrap(),
        files_for(&attempts[1].1)
    );
}

#[test]
fn commits_are_deterministic() {
    let attempts = three_attempts();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ids_a = write_all(&State::open(&a.path().join("s.git")).unwrap(), &attempts);
    let ids_b = write_all(&State::open(&b.path().join("s.git")).unwrap(), &attempts);
    assert_eq!(ids_a, ids_b);
    let ids: std::collections::BTreeSet<&String> = ids_a.iter().collect();
    assert_eq!(ids.len(), 3);
}

#[test]
fn the_message_names_the_skill_and_plan_and_carries_trailers() {
    let (record, _) = three_attempts().remove(1);
    let text = state::message(&record);
    assert!(
        text.starts_with("round 1: serving/prefill-chunk: serving.prefill_chunk = 128 (accepted)")
    );
    assert!(text.contains(&format!("Plan {}.", record.plan_digest)));
    for key in [
        "Vibeserve-Round: 1",
        "Vibeserve-Skill: ",
        "Vibeserve-Move: ",
        "Vibeserve-Verdict: accepted",
        "Vibeserve-Objective: 110",
        "Vibeserve-Metric: p99_ttft_ms=812.5",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
    assert_eq!(state::parse_message(&text).unwrap(), record);
    assert!(state::parse_message("hello\n\nVibeserve-Round: 1\n").is_err());
}

/// A writer killed after writing its objects but before moving any ref loses only its
/// own unfinished attempt; one killed between the two refs gets `best` repaired.
#[test]
fn a_killed_writer_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.git");
    let attempts = three_attempts();
    let state = State::open(&path).unwrap();
    write_all(&state, &attempts[..2]);

    // Killed mid-round 2: its blobs, tree and commit are written, no ref moved.
    let repo = gix::open(&path).unwrap();
    let tip = repo
        .find_reference(state::ATTEMPTS_REF)
        .unwrap()
        .id()
        .detach();
    let blob = repo.write_blob(b"half a crate").unwrap().detach();
    let mut editor = repo.empty_tree().edit().unwrap();
    editor
        .upsert("src/main.rs", gix::objs::tree::EntryKind::Blob, blob)
        .unwrap();
    let tree = editor.write().unwrap().detach();
    let sig = gix::actor::Signature {
        name: "x".into(),
        email: "x@x".into(),
        time: gix::date::Time {
            seconds: 0,
            offset: 0,
        },
    };
    let orphan = gix::objs::Commit {
        tree,
        parents: [tip].into_iter().collect(),
        author: sig.clone(),
        committer: sig,
        encoding: None,
        message: "round 2: unfinished".into(),
        extra_headers: vec![],
    };
    repo.write_object(&orphan).unwrap();

    let resumed = State::open(&path).unwrap();
    assert_eq!(resumed.attempts().unwrap().len(), 2);
    assert_eq!(resumed.best().unwrap().unwrap().record.round, 1);

    // Killed between the attempts ref and the best ref: best still at round 0.
    let round0_commit = resumed.attempts().unwrap()[0].commit.clone();
    let id = gix::ObjectId::from_hex(round0_commit.as_bytes()).unwrap();
    repo.reference(
        state::BEST_REF,
        id,
        gix::refs::transaction::PreviousValue::Any,
        "simulated crash",
    )
    .unwrap();
    let repaired = State::open(&path).unwrap();
    assert_eq!(repaired.best().unwrap().unwrap().record.round, 1);
    assert_eq!(
        repaired.best_files().unwrap().unwrap(),
        files_for(&attempts[1].1)
    );

    // The run goes on from there: the next attempt's parent is round 1.
    repaired
        .record(&attempts[2].0, &files_for(&attempts[2].1))
        .unwrap();
    let rounds: Vec<u32> = repaired
        .attempts()
        .unwrap()
        .iter()
        .map(|a| a.record.round)
        .collect();
    assert_eq!(rounds, [0, 1, 2]);
}

/// Resuming rebuilds the search history from the repository: plans from each crate's
/// Plan.toml, tasks and verdicts from the trailers.
#[test]
fn the_history_is_rebuilt_from_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.git");
    assert!(
        State::open(&path)
            .unwrap()
            .history(Direction::Max)
            .unwrap()
            .is_none()
    );
    let attempts = three_attempts();
    write_all(&State::open(&path).unwrap(), &attempts);

    let history = State::open(&path)
        .unwrap()
        .history(Direction::Max)
        .unwrap()
        .unwrap();
    assert_eq!(history.attempts.len(), 3);
    for (attempt, (record, plan)) in history.attempts.iter().zip(&attempts) {
        assert_eq!(&attempt.plan, plan);
        assert_eq!(attempt.verdict, record.verdict);
        assert_eq!(attempt.objective, record.objective);
        assert_eq!(
            attempt.task.as_ref().map(|t| t.changes.clone()),
            record.task().map(|t| t.changes)
        );
    }
    assert_eq!(history.best_plan(), Some(&attempts[1].1));
    assert_eq!(history.next_round(), 3);
    assert!(history.tried("serving/prefill-chunk", "serving.prefill_chunk = 128"));
}

#[test]
fn a_record_is_made_from_a_task() {
    let p0 = round0();
    let task = Task {
        skill: "serving/prefill-chunk".into(),
        label: "serving.prefill_chunk = 128".into(),
        changes: vec![Change::new("serving.prefill_chunk", 128)],
    };
    let p1 = vibeserve::search::apply(&p0, &task).unwrap();
    let r = AttemptRecord::new(
        1,
        Some(&task),
        &p1,
        Verdict::Accepted,
        Some(1.0),
        metrics(1.0),
    );
    assert_eq!(r.task(), Some(task));
    assert_eq!(r.plan_digest, p1.digest().to_string());
    let r0 = AttemptRecord::new(0, None, &p0, Verdict::Baseline, None, metrics(1.0));
    assert_eq!(r0.task(), None);
}
