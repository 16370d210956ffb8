//! `build --locked` (no search: replay Serve.lock, verify the tree, compile, judge) and
//! `build --relock` (replay the locked rounds on today's templates, re-judge, rewrite).

use std::path::Path;

use super::{BuildError, best_bin, compile, step};
use crate::generate::command::round0_plan;
use crate::generate::{FileDiff, FileSet, generate};
use crate::judge::{Candidate, Judge};
use crate::lock::{Lock, lock_path, replay, template_digest};
use crate::manifest::Device;
use crate::prepare::Prepared;
use crate::skills::change;

/// Runs `--locked` (`relock` false) or `--relock`.
pub fn run(prepared: &Prepared, work: &Path, relock: bool) -> Result<(), BuildError> {
    let manifest = &prepared.manifest;
    let path = lock_path(&manifest.path);
    let lock = Lock::read(&path)?;
    let round0 = round0_plan(prepared)?;
    let sha = manifest.model.sha256.clone().unwrap_or_default();
    let files = if relock {
        let mut plan = round0.clone();
        let mut new = Lock::new(&sha, &round0, &generate(&round0)?.tree_digest())?;
        for round in &lock.rounds {
            plan = change::apply_all(&plan, &round.changes)?;
            new.accept(round.clone(), &generate(&plan)?.tree_digest());
        }
        let files = generate(&plan)?;
        finish(prepared, work, &files)?;
        new.write(&path)?;
        println!(
            "{}: Serve.lock rewritten (tree {})",
            manifest.target.name,
            &new.tree[..16]
        );
        return Ok(());
    } else {
        if lock.model != sha {
            return Err(BuildError::ModelDrift {
                locked: lock.model.clone(),
                found: sha,
            });
        }
        let replayed = replay(&lock, &round0)?;
        let files = step("regenerate", || generate(&replayed.plan))?;
        check_tree(prepared, &lock, &files)?;
        files
    };
    finish(prepared, work, &files)?;
    println!(
        "{}: locked server reproduced ({} accepted rounds, tree {})",
        manifest.target.name,
        lock.rounds.len(),
        &lock.tree[..16.min(lock.tree.len())]
    );
    Ok(())
}

/// Fails with the first differing file when `files` is not the locked tree.
fn check_tree(prepared: &Prepared, lock: &Lock, files: &FileSet) -> Result<(), BuildError> {
    let found = files.tree_digest();
    if found == lock.tree {
        return Ok(());
    }
    let dir = prepared.server_dir();
    let on_disk = files.diff(&dir).ok().and_then(|d| d.into_iter().next());
    let template = template_digest()?;
    let detail = match on_disk {
        Some(diff) => format!(
            "first differing file against the last crate built in {}: {}",
            dir.display(),
            describe(&diff)
        ),
        None if template != lock.template => format!(
            "the template changed (digest {} → {})",
            &lock.template[..16.min(lock.template.len())],
            &template[..16]
        ),
        None => "the generator's output changed".into(),
    };
    Err(BuildError::Drift {
        target: prepared.manifest.target.name.clone(),
        locked: lock.tree.clone(),
        found,
        detail,
    })
}

fn describe(diff: &FileDiff) -> String {
    diff.to_string()
}

/// Writes, compiles and (where the hardware is here) judges the final crate, and copies
/// its binary to the target's `best/server`.
fn finish(prepared: &Prepared, work: &Path, files: &FileSet) -> Result<(), BuildError> {
    let dir = prepared.server_dir();
    files.write(&dir)?;
    let target_dir = compile::target_dir(&prepared.vibeserve_dir);
    let bin = step("compile", || {
        compile::compile(&dir, &target_dir, &best_bin(prepared))
    })?;
    if prepared.manifest.hardware.device() == Device::Cuda && !cuda_present() {
        println!("judge skipped: no CUDA device");
        return Ok(());
    }
    // No round-0 server is built here, so the memorised-answers probe (which compares
    // against it) does not run; the target's check and the other probes do.
    let mut judge = Judge::new(
        &prepared.manifest,
        &prepared.model_path,
        &prepared.metadata,
        work,
        None,
    )?;
    let verdict = step("judge", || judge.judge(&Candidate::binary(&bin)))?;
    if !verdict.passed() {
        return Err(BuildError::Rejected {
            what: "locked".into(),
            reasons: verdict.reasons(),
        });
    }
    for o in &verdict.outcomes {
        println!("  {}: {}", o.probe.as_str(), o.detail);
    }
    Ok(())
}

/// Whether a CUDA device is visible (`nvidia-smi -L` lists one).
fn cuda_present() -> bool {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}
