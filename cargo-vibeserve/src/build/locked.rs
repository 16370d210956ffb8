//! `build --locked` (no search: replay Serve.lock, verify the tree, compile, judge) and
//! `build --relock` (replay the locked rounds on today's templates, re-judge, rewrite).

use std::path::Path;

use super::{BuildError, best_bin, compile, gguf, step};
use crate::generate::command::round0_plan;
use crate::generate::{FileSet, generate};
use crate::judge::{Candidate, Judge};
use crate::lock::{Lock, LockedRound, lock_path, replay, template_digest};
use crate::manifest::Device;
use crate::plan::Plan;
use crate::prepare::Prepared;
use crate::skills::change;
use crate::state::State;

/// Runs `--locked` (`relock` false) or `--relock`.
///
/// `--relock` on a target with no Serve.lock yet writes its first one: round 0 alone,
/// compiled, and judged where its hardware is. A GPU target gets its lock so on a
/// machine without a GPU, which `--locked` then reproduces anywhere.
pub fn run(prepared: &Prepared, work: &Path, relock: bool) -> Result<(), BuildError> {
    let manifest = &prepared.manifest;
    let path = lock_path(&manifest.path);
    let round0 = round0_plan(prepared)?;
    let sha = prepared.model_digest.clone();
    if relock {
        let rounds = match path.exists() {
            true => Lock::read(&path)?.rounds,
            false => Vec::new(),
        };
        return relock_run(prepared, work, &rounds, &round0, &sha);
    }
    let lock = Lock::read(&path)?;
    if lock.model != sha {
        return Err(BuildError::ModelDrift {
            locked: lock.model.clone(),
            found: sha,
        });
    }
    let replayed = replay(&lock, &round0)?;
    let files = step("regenerate", || generate(&replayed.plan))?;
    check_tree(prepared, work, &lock, &files)?;
    finish(prepared, work, &files)?;
    println!(
        "{}: locked server reproduced ({} accepted rounds, tree {})",
        manifest.target.name,
        lock.rounds.len(),
        short(&lock.tree)
    );
    Ok(())
}

/// `--relock`: the locked rounds' changes replayed on today's round 0 and templates,
/// compiled and re-judged; Serve.lock rewritten with today's digests (each round keeps
/// the metrics measured when it was accepted).
fn relock_run(
    prepared: &Prepared,
    work: &Path,
    rounds: &[LockedRound],
    round0: &Plan,
    sha: &str,
) -> Result<(), BuildError> {
    let mut plan = round0.clone();
    let mut new = Lock::new(sha, round0, &generate(round0)?.tree_digest())?;
    for round in rounds {
        plan = change::apply_all(&plan, &round.changes)?;
        new.accept(round.clone(), &generate(&plan)?.tree_digest());
    }
    finish(prepared, work, &generate(&plan)?)?;
    new.write(&lock_path(&prepared.manifest.path))?;
    println!(
        "{}: Serve.lock rewritten ({} rounds, tree {})",
        prepared.manifest.target.name,
        new.rounds.len(),
        short(&new.tree)
    );
    Ok(())
}

/// Fails with the first differing file when `files` is not the locked tree. The locked
/// crate's files come from the state repository's `best` when it holds the locked tree;
/// otherwise from the crate last written to disk, else only the digests can be named.
fn check_tree(
    prepared: &Prepared,
    work: &Path,
    lock: &Lock,
    files: &FileSet,
) -> Result<(), BuildError> {
    let found = files.tree_digest();
    if found == lock.tree {
        return Ok(());
    }
    let template = template_digest()?;
    let locked_files = State::open(&work.join("state.git"))
        .ok()
        .and_then(|s| s.best_files().ok().flatten())
        .filter(|f| f.tree_digest() == lock.tree);
    let dir = prepared.server_dir();
    let detail = if let Some(path) = locked_files.and_then(|old| first_difference(&old, files)) {
        format!("first differing file: {path}")
    } else if let Some(diff) = files.diff(&dir).ok().and_then(|d| d.into_iter().next()) {
        format!(
            "first difference against the crate last built in {}: {diff}",
            dir.display()
        )
    } else if template != lock.template {
        format!(
            "the template changed (digest {} -> {})",
            short(&lock.template),
            short(&template)
        )
    } else {
        "the generator's output changed".into()
    };
    Err(BuildError::Drift {
        target: prepared.manifest.target.name.clone(),
        locked: lock.tree.clone(),
        found,
        detail,
    })
}

/// The first path, in path order, that one set has and the other lacks or holds differently.
pub fn first_difference(old: &FileSet, new: &FileSet) -> Option<String> {
    let (a, b) = (old.digests(), new.digests());
    let mut paths: Vec<&str> = a.keys().chain(b.keys()).copied().collect();
    paths.sort_unstable();
    paths.into_iter().find(|p| a.get(p) != b.get(p)).map(|p| {
        match (a.contains_key(p), b.contains_key(p)) {
            (true, false) => format!("{p} (no longer generated)"),
            (false, true) => format!("{p} (newly generated)"),
            _ => format!("{p} (contents changed)"),
        }
    })
}

fn short(digest: &str) -> &str {
    &digest[..16.min(digest.len())]
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
        gguf(prepared)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> FileSet {
        let mut s = FileSet::default();
        for (p, c) in files {
            s.insert(*p, c.as_bytes().to_vec());
        }
        s
    }

    #[test]
    fn the_first_differing_path_is_named_with_how_it_differs() {
        let old = set(&[("a.rs", "1"), ("b.rs", "2"), ("c.rs", "3")]);
        assert_eq!(first_difference(&old, &old), None);
        let changed = set(&[("a.rs", "1"), ("b.rs", "X"), ("c.rs", "3")]);
        assert_eq!(
            first_difference(&old, &changed).as_deref(),
            Some("b.rs (contents changed)")
        );
        let fewer = set(&[("b.rs", "2"), ("c.rs", "3")]);
        assert_eq!(
            first_difference(&old, &fewer).as_deref(),
            Some("a.rs (no longer generated)")
        );
        let more = set(&[("a.rs", "1"), ("aa.rs", "0"), ("b.rs", "2"), ("c.rs", "3")]);
        assert_eq!(
            first_difference(&old, &more).as_deref(),
            Some("aa.rs (newly generated)")
        );
    }
}
