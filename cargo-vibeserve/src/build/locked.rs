//! `build --locked` (no search: replay Serve.lock, verify the tree, compile, judge) and
//! `build --relock` (replay the locked rounds on today's templates, re-judge, rewrite).

use std::collections::BTreeMap;
use std::path::Path;

use super::{BuildError, best_bin, compile, step};
use crate::generate::command::round0_plan;
use crate::generate::{FileSet, generate};
use crate::judge::{Candidate, Judge};
use crate::lock::{Lock, LockedRound, PatchRef, file_digests, lock_path, replay, template_digest};
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
    let files = with_patches(files, &replayed.patches, &manifest.dir)?;
    check_tree(prepared, work, &lock, &files)?;
    let reference = (!lock.rounds.is_empty()).then_some(&round0);
    finish(prepared, work, &files, reference)?;
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
    let mut new = Lock::new(sha, round0, &generate(round0)?)?;
    let dir = &prepared.manifest.dir;
    let mut patches = Vec::new();
    for round in rounds {
        plan = change::apply_all(&plan, &round.changes)?;
        patches.extend(round.patch.clone());
        new.accept(
            round.clone(),
            &with_patches(generate(&plan)?, &patches, dir)?,
        );
    }
    finish(
        prepared,
        work,
        &with_patches(generate(&plan)?, &patches, dir)?,
        (!rounds.is_empty()).then_some(round0),
    )?;
    new.write(&lock_path(&prepared.manifest.path))?;
    println!(
        "{}: Serve.lock rewritten ({} rounds, tree {})",
        prepared.manifest.target.name,
        new.rounds.len(),
        short(&new.tree)
    );
    Ok(())
}

/// `files` with the LLM rounds' locked patches applied, each checked against its digest.
fn with_patches(files: FileSet, patches: &[PatchRef], dir: &Path) -> Result<FileSet, BuildError> {
    crate::agent::patch::apply_locked(files, patches, dir).map_err(|e| BuildError::Patch {
        path: patches
            .iter()
            .map(|p| p.path.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        message: e.to_string(),
    })
}

/// Fails with the first differing file when `files` is not the locked tree. The locked
/// files' digests come from Serve.lock (written since it records them), else from the
/// state repository's `best` when it holds the locked tree, else from the crate last
/// written to disk; failing all three only the template's digest can be compared.
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
    let digests = files.digests();
    let from_state = || {
        State::open(&work.join("state.git"))
            .ok()
            .and_then(|s| s.best_files().ok().flatten())
            .filter(|f| f.tree_digest() == lock.tree)
            .and_then(|old| first_difference(&file_digests(&old), &digests))
    };
    let locked = (!lock.files.is_empty())
        .then(|| first_difference(&lock.files, &digests))
        .flatten()
        .or_else(from_state);
    let dir = prepared.server_dir();
    let template = template_digest()?;
    let detail = if let Some(path) = locked {
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

/// The first path, in path order, that one digest map has and the other lacks or holds
/// differently (`locked` by owned path, `now` as `FileSet::digests` gives it).
pub fn first_difference(
    locked: &BTreeMap<String, String>,
    now: &BTreeMap<&str, String>,
) -> Option<String> {
    let mut paths: Vec<&str> = locked
        .keys()
        .map(String::as_str)
        .chain(now.keys().copied())
        .collect();
    paths.sort_unstable();
    paths
        .into_iter()
        .find(|p| locked.get(*p) != now.get(p))
        .map(|p| match (locked.contains_key(p), now.contains_key(p)) {
            (true, false) => format!("{p} (no longer generated)"),
            (false, true) => format!("{p} (newly generated)"),
            _ => format!("{p} (contents changed)"),
        })
}

fn short(digest: &str) -> &str {
    &digest[..16.min(digest.len())]
}

/// Writes, compiles and (where the hardware is here) judges the final crate, and copies
/// its binary to the target's `best/server`. `reference` is round 0's plan when the
/// final crate is not round 0 itself: its server is built too, as the trusted reference
/// of the memorised-answers probe (round 0 alone is the template, which that probe has
/// nothing to compare against).
fn finish(
    prepared: &Prepared,
    work: &Path,
    files: &FileSet,
    reference: Option<&Plan>,
) -> Result<(), BuildError> {
    let dir = prepared.server_dir();
    let target_dir = compile::target_dir(&prepared.vibeserve_dir);
    let judged = prepared.manifest.hardware.device() != Device::Cuda || cuda_present();
    // Round 0 first: the crate left on disk is then the final one.
    let reference = match reference.filter(|_| judged) {
        Some(plan) => {
            generate(plan)?.write(&dir)?;
            let out = super::rounds::round_bin(work, 0);
            let bin = step("compile round 0 (the reference)", || {
                compile::compile(&dir, &target_dir, &out)
            })?;
            Some(Candidate::binary(&bin))
        }
        None => None,
    };
    files.write(&dir)?;
    let bin = step("compile", || {
        compile::compile(&dir, &target_dir, &best_bin(prepared))
    })?;
    if !judged {
        println!("judge skipped: no CUDA device");
        return Ok(());
    }
    let verdict = match prepared.metadata.gguf() {
        Some(metadata) => {
            let mut judge = Judge::new(
                &prepared.manifest,
                &prepared.model_path,
                metadata,
                work,
                reference,
            )?;
            step("judge", || judge.judge(&Candidate::binary(&bin)))?
        }
        None => step("judge", || dummy_judge(prepared, &target_dir, &bin))?,
    };
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

/// Judges `bin` on a `dummy` model: both seeds' weights are materialised (once, in the
/// model cache) by the `materialize` the same build made.
fn dummy_judge(
    prepared: &Prepared,
    target_dir: &Path,
    bin: &Path,
) -> Result<crate::judge::Judgement, BuildError> {
    use crate::evaluate::dummy::{DummyJudge, materialize_models};
    let materialize = target_dir
        .join("release")
        .join(crate::model::dummy::MATERIALIZE_BIN);
    let cache = prepared.vibeserve_dir.join("cache");
    let (model, perturbed) = materialize_models(&prepared.manifest, &materialize, &cache)?;
    let vocab = match &prepared.metadata {
        crate::model::ModelMetadata::HfConfig(config) => config.vocab_size,
        crate::model::ModelMetadata::Gguf(meta) => meta.vocab_size,
    };
    let vocab = u32::try_from(vocab).unwrap_or(u32::MAX);
    let mut judge = DummyJudge::new(&prepared.manifest, &model, &perturbed, vocab, None)?;
    Ok(judge.judge(&Candidate::binary(bin))?)
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
        files.iter().copied().collect()
    }

    fn first_difference(old: &FileSet, new: &FileSet) -> Option<String> {
        super::first_difference(&file_digests(old), &new.digests())
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
