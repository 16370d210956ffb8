//! `cargo vibeserve build TARGET --stage DIR`: the building half of rounds whose servers
//! run on another machine (a GPU host with no Rust toolchain).
//!
//! It plans the next rounds up to the round budget, each a move of the planner applied
//! by the built-in Implementer to the best plan so far (the batch's verdicts are not
//! known yet, so each is planned as if the ones before it were rejected: every candidate
//! is one change against the same incumbent), generates and compiles each, and writes a
//! self-contained bundle into DIR (see [`crate::evaluate::bundle`]): this tool's binary
//! and every server stripped and xz-compressed, the target's public files, and
//! `bundle.json`. The compiled servers are also kept as the rounds' binaries here, so
//! `--resume` and later local rounds reuse them.

use std::path::{Path, PathBuf};

use super::rounds::{HINTS_FILE, round_bin};
use super::{BuildError, compile, step};
use crate::evaluate::bundle::{
    BIN_DIR, BUNDLE_FILE, BUNDLE_VERSION, Bundle, BundleCandidate, BundleError, RESULTS_FILE,
    TOOL_FILE, run_tool, write_json, xz_compress,
};
use crate::generate::command::round0_plan;
use crate::generate::generate;
use crate::manifest::ModelSource;
use crate::model::dummy::MATERIALIZE_BIN;
use crate::plan::Plan;
use crate::prepare::Prepared;
use crate::search::{self, Attempt, Hints, History, Task, Verdict};
use crate::skills::{Facts, Library};
use crate::state::State;

/// Where the bundle keeps the target's files: `DIR/targets/<folder>/`, so that a path
/// in Serve.toml that reaches a sibling target (`../other/accuracy/x.py`) still resolves.
pub const TARGETS_DIR: &str = "targets";

/// Runs `--stage DIR`: candidates for rounds up to `rounds`.
pub fn run(prepared: &Prepared, work: &Path, rounds: u32, dir: &Path) -> Result<(), BuildError> {
    let manifest = &prepared.manifest;
    let state = State::open(&work.join("state.git"))?;
    let direction = manifest.benchmark.objective.direction;
    let (history, baseline) = match state.history(direction)? {
        Some(h) => (h, false),
        None => (History::new(direction, round0_plan(prepared)?, None), true),
    };
    let best = history
        .best()
        .expect("a history always holds round 0")
        .clone();
    let tasks = plan_batch(prepared, work, &history, &best.plan, rounds)?;
    if tasks.is_empty() && !baseline {
        println!(
            "nothing to stage: round {} reached or the policy has nothing left",
            history.next_round() - 1
        );
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // A batch staged again into DIR must not inherit the last one's results or unpacked
    // servers (`evaluate` would resume from them, `--resume` would record them).
    for stale in [dir.join(RESULTS_FILE), dir.join(BIN_DIR)] {
        let removed = if stale.is_dir() {
            std::fs::remove_dir_all(&stale)
        } else {
            std::fs::remove_file(&stale)
        };
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io(&stale)(e));
        }
    }
    let target_dir = compile::target_dir(&prepared.vibeserve_dir);
    let reference = ensure_bin(prepared, work, &target_dir, 0, &history.attempts[0].plan)?;
    let incumbent = ensure_bin(prepared, work, &target_dir, best.round, &best.plan)?;
    let mut candidates = Vec::new();
    for (round, task, plan) in &tasks {
        candidates.push(stage_candidate(
            prepared,
            work,
            &target_dir,
            dir,
            *round,
            task,
            plan,
        )?);
    }
    let materialize = match manifest.model.source {
        ModelSource::Dummy { .. } => {
            let bin = target_dir.join("release").join(MATERIALIZE_BIN);
            Some(pack(&bin, dir, "materialize.xz")?)
        }
        _ => None,
    };
    let tool = std::env::current_exe().map_err(io(dir))?;
    step("pack cargo-vibeserve", || pack(&tool, dir, TOOL_FILE))?;
    let bundle = Bundle {
        version: BUNDLE_VERSION,
        target: manifest.target.name.clone(),
        manifest: copy_target(prepared, dir)?,
        model_digest: prepared.model_digest.clone(),
        materialize,
        reference: pack(&reference, dir, "server-round-0.xz")?,
        incumbent_round: best.round,
        incumbent: pack(&incumbent, dir, &format!("server-round-{}.xz", best.round))?,
        baseline,
        candidates,
    };
    write_json(dir, BUNDLE_FILE, &bundle)?;
    println!(
        "staged {} candidate(s) (rounds {}) against round {}{} in {}",
        bundle.candidates.len(),
        tasks
            .iter()
            .map(|(r, ..)| r.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        best.round,
        if baseline {
            ", which is measured there too"
        } else {
            ""
        },
        dir.display()
    );
    println!(
        "there: xz -dk {0}/{TOOL_FILE} && {0}/cargo-vibeserve vibeserve evaluate {0}",
        dir.display()
    );
    Ok(())
}

/// The next tasks up to round `rounds`, each applied to `base`: the planner is asked
/// round by round as if each staged candidate had been rejected.
fn plan_batch(
    prepared: &Prepared,
    work: &Path,
    history: &History,
    base: &Plan,
    rounds: u32,
) -> Result<Vec<(u32, Task, Plan)>, BuildError> {
    let manifest = &prepared.manifest;
    let library = Library::embedded()?;
    let facts = Facts::from_target(manifest, Some(&prepared.metadata));
    let mut policy = search::policy(
        manifest.search.policy,
        &library,
        &facts,
        manifest.search.seed,
    )?;
    let hints: Hints = std::fs::read_to_string(work.join(HINTS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut planned = history.clone();
    let mut tasks = Vec::new();
    while planned.next_round() <= rounds {
        let Some(task) = policy.next(&planned, &hints) else {
            break;
        };
        let round = planned.next_round();
        let plan = search::apply(base, &task)?;
        planned.push(Attempt {
            round,
            task: Some(task.clone()),
            plan: plan.clone(),
            verdict: Verdict::RejectedRegression,
            objective: None,
        });
        tasks.push((round, task, plan));
    }
    Ok(tasks)
}

/// Generates and compiles one candidate and packs its server.
fn stage_candidate(
    prepared: &Prepared,
    work: &Path,
    target_dir: &Path,
    dir: &Path,
    round: u32,
    task: &Task,
    plan: &Plan,
) -> Result<BundleCandidate, BuildError> {
    eprintln!(
        "round {round}: {} — {} (plan {})",
        task.skill,
        task.label,
        plan.digest()
    );
    let files = generate(plan)?;
    let server_dir = prepared.server_dir();
    files.write(&server_dir)?;
    let built = step("compile", || {
        compile::compile(&server_dir, target_dir, &round_bin(work, round))
    });
    let (binary, build_error) = match built {
        Ok(bin) => (
            Some(pack(&bin, dir, &format!("server-round-{round}.xz"))?),
            None,
        ),
        Err(e) => {
            eprintln!("  does not build: {e}");
            (None, Some(e.to_string()))
        }
    };
    Ok(BundleCandidate {
        round,
        skill: task.skill.clone(),
        label: task.label.clone(),
        changes: task.changes.clone(),
        plan: plan.digest().to_string(),
        tree: files.tree_digest(),
        binary,
        build_error,
    })
}

/// Round `round`'s server, compiled from `plan` if it is not kept yet.
fn ensure_bin(
    prepared: &Prepared,
    work: &Path,
    target_dir: &Path,
    round: u32,
    plan: &Plan,
) -> Result<PathBuf, BuildError> {
    let bin = round_bin(work, round);
    if bin.is_file() {
        return Ok(bin);
    }
    let server_dir = prepared.server_dir();
    generate(plan)?.write(&server_dir)?;
    Ok(step(&format!("compile round {round}"), || {
        compile::compile(&server_dir, target_dir, &bin)
    })?)
}

/// Strips `bin` into a temporary copy and compresses it to `DIR/<name>`; returns `name`.
fn pack(bin: &Path, dir: &Path, name: &str) -> Result<String, BundleError> {
    let stripped = dir.join(format!(".{name}.stripped"));
    run_tool(
        std::process::Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(bin),
        "strip",
    )?;
    let packed = xz_compress(&stripped, &dir.join(name));
    let _ = std::fs::remove_file(&stripped);
    packed.map(|()| name.to_string())
}

/// Copies the target's folder (all but Serve.lock, `target/` and hidden entries) to
/// `DIR/targets/<folder>/`, and any file the accuracy command names outside it to the
/// same place relative to the targets' common parent. Returns the copied Serve.toml's
/// path relative to DIR.
fn copy_target(prepared: &Prepared, dir: &Path) -> Result<String, BuildError> {
    let manifest = &prepared.manifest;
    let folder = manifest
        .dir
        .file_name()
        .map_or_else(|| "target".into(), |n| n.to_string_lossy().to_string());
    let dest = dir.join(TARGETS_DIR).join(&folder);
    copy_tree(&manifest.dir, &dest)?;
    let root = manifest.dir.parent().unwrap_or(&manifest.dir);
    let named = manifest.accuracy.iter().flat_map(|a| a.command.iter());
    for arg in named {
        let path = manifest.dir.join(arg);
        let (Ok(file), Ok(root)) = (path.canonicalize(), root.canonicalize()) else {
            continue;
        };
        if let Ok(rel) = file.strip_prefix(&root)
            && file.is_file()
        {
            copy_file(&file, &dir.join(TARGETS_DIR).join(rel))?;
        }
    }
    let name = manifest
        .path
        .file_name()
        .map_or_else(|| "Serve.toml".into(), |n| n.to_string_lossy().to_string());
    Ok(format!("{TARGETS_DIR}/{folder}/{name}"))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    let entries = std::fs::read_dir(from).map_err(|source| BuildError::Io {
        path: from.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        // `target/` is where a target outside a workspace builds: not the target's files.
        if name.starts_with('.') || name == crate::lock::LOCK_FILE || name == "target" {
            continue;
        }
        if path.is_dir() {
            copy_tree(&path, &to.join(&name))?;
        } else if path.is_file() {
            copy_file(&path, &to.join(&name))?;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), BuildError> {
    let io = |source| BuildError::Io {
        path: to.to_path_buf(),
        source,
    };
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::copy(from, to).map(|_| ()).map_err(io)
}
