//! Serve.lock: text round trips, atomic writes, replay and drift.

use vibeserve::lock::{self, Lock, LockError, LockedRound, PatchRef};
use vibeserve::search::Verdict;
use vibeserve::skills::Change;

use super::{files_for, metrics, round0};

const MODEL_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn accepted(round: u32, changes: Vec<Change>) -> LockedRound {
    LockedRound {
        round,
        skill: "serving/kv-block-size".into(),
        label: changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        verdict: Verdict::Accepted,
        changes,
        patch: None,
        metrics: metrics(100.0 + f64::from(round)),
    }
}

/// A lock with two accepted rounds, and the final plan they lead to.
fn two_rounds() -> (Lock, vibeserve::plan::Plan) {
    let p0 = round0();
    let mut lock = Lock::new(MODEL_SHA, &p0, &files_for(&p0)).unwrap();
    let r1 = vec![
        Change::new("kv_cache.block_size", 32),
        Change::new("kv_cache.blocks", 2048),
    ];
    let r3 = vec![Change::new("device.kernel_variant", "avx2")];
    let mut plan = p0.clone();
    for (round, changes) in [(1, r1), (3, r3)] {
        plan = vibeserve::skills::change::apply_all(&plan, &changes).unwrap();
        lock.accept(accepted(round, changes), &files_for(&plan));
    }
    (lock, plan)
}

#[test]
fn lock_round_trips_through_text_and_disk() {
    let (lock, plan) = two_rounds();
    let text = lock.to_toml();
    assert!(text.contains("version = 1"));
    assert!(text.contains("[[rounds]]"));
    assert_eq!(Lock::from_toml(&text).unwrap(), lock);
    assert_eq!(
        two_rounds().0.to_toml(),
        text,
        "the same rounds give the same text"
    );
    assert_eq!(lock.tree, files_for(&plan).tree_digest());
    assert_eq!(lock.files, lock::file_digests(&files_for(&plan)));
    assert!(
        lock.files.contains_key("Plan.toml"),
        "{:?}",
        lock.files.keys()
    );
    assert_eq!(lock.template, lock::template_digest().unwrap());
    assert_eq!(lock.template.len(), 64);

    let dir = tempfile::tempdir().unwrap();
    let path = lock::lock_path(&dir.path().join("Serve.toml"));
    assert_eq!(path.file_name().unwrap(), "Serve.lock");
    lock.write(&path).unwrap();
    assert_eq!(Lock::read(&path).unwrap(), lock);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[test]
fn replay_rebuilds_the_final_plan() {
    let (lock, plan) = two_rounds();
    let replayed = lock::replay(&lock, &round0()).unwrap();
    assert_eq!(replayed.plan, plan);
    assert!(replayed.patches.is_empty());
    assert_eq!(files_for(&replayed.plan).tree_digest(), lock.tree);
}

#[test]
fn replay_names_drift() {
    let (mut lock, _) = two_rounds();
    let mut other = round0();
    other.device.threads = 4;
    assert!(matches!(
        lock::replay(&lock, &other),
        Err(LockError::Round0Drift { .. })
    ));
    lock.rounds[1].changes = vec![Change::new("device.kernel", "avx2")];
    match lock::replay(&lock, &round0()) {
        Err(LockError::Replay { round, .. }) => assert_eq!(round, 3),
        other => panic!("expected a replay error, got {other:?}"),
    }
}

#[test]
fn patch_rounds_are_kept_in_order() {
    let (mut lock, _) = two_rounds();
    let patch = PatchRef {
        path: "patches/round-4.patch".into(),
        sha256: "ab".repeat(32),
    };
    let mut round = accepted(4, vec![]);
    round.skill = "model/decode-roofline".into();
    round.patch = Some(patch.clone());
    lock.accept(round, &files_for(&round0()));
    let text = lock.to_toml();
    assert_eq!(Lock::from_toml(&text).unwrap(), lock);
    assert_eq!(lock::replay(&lock, &round0()).unwrap().patches, vec![patch]);
}

#[test]
fn unknown_versions_and_keys_are_errors() {
    let (lock, _) = two_rounds();
    let text = lock.to_toml();
    let v2 = text.replace("version = 1", "version = 2");
    assert!(matches!(
        Lock::from_toml(&v2),
        Err(LockError::Version { found: 2 })
    ));
    let extra = format!("{text}\nsurprise = true\n");
    assert!(matches!(Lock::from_toml(&extra), Err(LockError::Parse(_))));
}

#[test]
fn only_accepted_attempts_become_locked_rounds() {
    let p0 = round0();
    let changes = vec![Change::new("serving.prefill_chunk", 128)];
    let p1 = vibeserve::skills::change::apply_all(&p0, &changes).unwrap();
    let mut record = vibeserve::state::AttemptRecord {
        round: 2,
        skill: Some("serving/prefill-chunk".into()),
        label: Some("serving.prefill_chunk = 128".into()),
        changes: changes.clone(),
        plan_digest: p1.digest().to_string(),
        verdict: Verdict::Accepted,
        objective: Some(101.0),
        metrics: metrics(101.0),
    };
    let locked = LockedRound::from_record(&record).unwrap();
    assert_eq!(
        (locked.round, locked.changes, locked.metrics),
        (2, changes, metrics(101.0))
    );
    record.verdict = Verdict::RejectedJudge;
    assert_eq!(LockedRound::from_record(&record), None);
}
