//! The search's state: a bare git repository per target, written in process with `gix`.
//!
//! Every attempt is one commit whose tree is the generated crate, on
//! [`ATTEMPTS_REF`] (parent: the previous attempt). Its message names the round, skill
//! and plan digest, and ends in `Vibeserve-*` trailers (round, skill, move, changes,
//! verdict, objective, metrics) that [`State::attempts`] parses back. [`BEST_REF`] points
//! at the last kept attempt (round 0 or accepted). Commits are deterministic: fixed
//! author and committer, time derived from the round, so one run gives one set of ids.
//!
//! Crash safety: objects are written before refs, and both refs move in one ref
//! transaction. An attempt whose refs were never written is lost, but it was never
//! accepted either; [`State::open`] also moves `best` forward if a crash left it behind
//! the last kept attempt on the attempts chain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gix::ObjectId;
use gix::objs::tree::EntryKind;
use gix::refs::transaction::{PreviousValue, RefEdit};

use crate::generate::FileSet;
use crate::manifest::Direction;
use crate::plan::{Plan, PlanError};
use crate::search::{Attempt, History, Task, Verdict};
use crate::skills::Change;

/// The generated crate's record of its plan, read back to rebuild the history.
pub const PLAN_FILE: &str = "Plan.toml";

/// The ref holding the chain of every attempt.
pub const ATTEMPTS_REF: &str = "refs/vibeserve/attempts";
/// The ref at the last kept attempt.
pub const BEST_REF: &str = "refs/vibeserve/best";
/// Author and committer name of every state commit.
pub const AUTHOR_NAME: &str = "cargo-vibeserve";
/// Author and committer email of every state commit.
pub const AUTHOR_EMAIL: &str = "rounds@cargo-vibeserve.invalid";
/// Commit time of round 0 (2026-01-01T00:00:00Z); round `n` is `n` minutes later, so
/// commit times order like rounds and never depend on the clock.
pub const EPOCH_SECONDS: i64 = 1_767_225_600;
/// Seconds between the commit times of consecutive rounds.
pub const SECONDS_PER_ROUND: i64 = 60;

/// The trailer keys, in the order they are written.
mod trailer {
    pub const ROUND: &str = "Vibeserve-Round";
    pub const SKILL: &str = "Vibeserve-Skill";
    pub const MOVE: &str = "Vibeserve-Move";
    pub const CHANGE: &str = "Vibeserve-Change";
    pub const PLAN: &str = "Vibeserve-Plan";
    pub const VERDICT: &str = "Vibeserve-Verdict";
    pub const OBJECTIVE: &str = "Vibeserve-Objective";
    pub const METRIC: &str = "Vibeserve-Metric";
}

/// What is recorded of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The round number (0: the template's defaults).
    pub round: u32,
    /// The skill tried; `None` for round 0.
    pub skill: Option<String>,
    /// The move as a reader sees it; `None` for round 0.
    pub label: Option<String>,
    /// The concrete changes made to the best plan.
    pub changes: Vec<Change>,
    /// The digest of the candidate's plan.
    pub plan_digest: String,
    /// How the attempt ended.
    pub verdict: Verdict,
    /// The objective's value, if the candidate was measured.
    pub objective: Option<f64>,
    /// Every measured metric, by name.
    pub metrics: BTreeMap<String, f64>,
}

impl AttemptRecord {
    /// The record of an attempt at `plan`, made by `task` (`None` for round 0).
    pub fn new(
        round: u32,
        task: Option<&Task>,
        plan: &Plan,
        verdict: Verdict,
        objective: Option<f64>,
        metrics: BTreeMap<String, f64>,
    ) -> AttemptRecord {
        AttemptRecord {
            round,
            skill: task.map(|t| t.skill.clone()),
            label: task.map(|t| t.label.clone()),
            changes: task.map(|t| t.changes.clone()).unwrap_or_default(),
            plan_digest: plan.digest().to_string(),
            verdict,
            objective,
            metrics,
        }
    }

    /// The task this attempt tried; `None` for round 0.
    pub fn task(&self) -> Option<Task> {
        Some(Task {
            skill: self.skill.clone()?,
            label: self.label.clone().unwrap_or_default(),
            changes: self.changes.clone(),
        })
    }
}

/// An attempt read back from the repository.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAttempt {
    /// The commit's id, hex.
    pub commit: String,
    /// The parsed trailers.
    pub record: AttemptRecord,
}

/// A target's state repository.
pub struct State {
    repo: gix::Repository,
}

/// Where a target's state lives: `<vibeserve dir>/<target>/state.git`.
pub fn state_dir(vibeserve_dir: &Path, target: &str) -> PathBuf {
    vibeserve_dir.join(target).join("state.git")
}

impl State {
    /// Opens the repository at `path`, creating a bare one if there is none, and repairs
    /// a `best` ref that a crash left behind.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let repo = if path.join("HEAD").is_file() {
            gix::open(path).map_err(|e| StateError::git(path, "open", e))?
        } else {
            std::fs::create_dir_all(path).map_err(|source| StateError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            gix::init_bare(path).map_err(|e| StateError::git(path, "create", e))?
        };
        let state = State { repo };
        state.repair_best()?;
        Ok(state)
    }

    /// The repository's folder.
    pub fn path(&self) -> &Path {
        self.repo.path()
    }

    /// Records an attempt whose crate is `files`: one commit on the attempts chain, and
    /// `best` moved to it if the verdict keeps it. Returns the commit id.
    pub fn record(&self, record: &AttemptRecord, files: &FileSet) -> Result<String, StateError> {
        let tree = self.write_tree(files)?;
        let parent = self.ref_target(ATTEMPTS_REF)?;
        let signature = signature(record.round);
        let commit = gix::objs::Commit {
            tree,
            parents: parent.into_iter().collect(),
            author: signature.clone(),
            committer: signature.clone(),
            encoding: None,
            message: message(record).into(),
            extra_headers: Vec::new(),
        };
        let id = self
            .repo
            .write_object(&commit)
            .map_err(|e| self.err("write a commit", e))?
            .detach();
        let expected = match parent {
            Some(p) => PreviousValue::MustExistAndMatch(p.into()),
            None => PreviousValue::MustNotExist,
        };
        let mut edits = vec![update(ATTEMPTS_REF, id, expected, "attempt")];
        if record.verdict.is_kept() {
            edits.push(update(BEST_REF, id, PreviousValue::Any, "best"));
        }
        let mut time = gix::date::parse::TimeBuf::default();
        self.repo
            .edit_references_as(edits, Some(signature.to_ref(&mut time)))
            .map_err(|e| self.err("update refs", e))?;
        Ok(id.to_string())
    }

    /// Every recorded attempt, oldest first.
    pub fn attempts(&self) -> Result<Vec<StoredAttempt>, StateError> {
        let mut out = Vec::new();
        let mut next = self.ref_target(ATTEMPTS_REF)?;
        while let Some(id) = next {
            let commit = self
                .repo
                .find_commit(id)
                .map_err(|e| self.err("read a commit", e))?;
            let text = commit.message_raw_sloppy().to_string();
            let record = parse_message(&text).map_err(|message| StateError::Trailers {
                commit: id.to_string(),
                message,
            })?;
            out.push(StoredAttempt {
                commit: id.to_string(),
                record,
            });
            next = commit.parent_ids().next().map(|p| p.detach());
        }
        out.reverse();
        Ok(out)
    }

    /// The attempt `best` points at, if any.
    pub fn best(&self) -> Result<Option<StoredAttempt>, StateError> {
        let Some(best) = self.ref_target(BEST_REF)? else {
            return Ok(None);
        };
        let best = best.to_string();
        Ok(self.attempts()?.into_iter().find(|a| a.commit == best))
    }

    /// The crate of the attempt `best` points at, to resume from.
    pub fn best_files(&self) -> Result<Option<FileSet>, StateError> {
        match self.ref_target(BEST_REF)? {
            Some(id) => Ok(Some(self.files(&id.to_string())?)),
            None => Ok(None),
        }
    }

    /// The plan of the crate recorded in commit `commit` (its `Plan.toml`).
    pub fn plan(&self, commit: &str) -> Result<Plan, StateError> {
        let files = self.files(commit)?;
        let text = files
            .get(PLAN_FILE)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| StateError::Trailers {
                commit: commit.to_string(),
                message: format!("its tree has no {PLAN_FILE}"),
            })?;
        Plan::from_toml(text).map_err(|source| StateError::Plan {
            commit: commit.to_string(),
            source,
        })
    }

    /// The search history recorded so far, to resume a run: every attempt with its plan,
    /// task, verdict and objective. `None` when nothing was recorded.
    pub fn history(&self, direction: Direction) -> Result<Option<History>, StateError> {
        let stored = self.attempts()?;
        if stored.is_empty() {
            return Ok(None);
        }
        let mut attempts = Vec::with_capacity(stored.len());
        for a in stored {
            attempts.push(Attempt {
                round: a.record.round,
                task: a.record.task(),
                plan: self.plan(&a.commit)?,
                verdict: a.record.verdict,
                objective: a.record.objective,
            });
        }
        Ok(Some(History {
            direction,
            attempts,
        }))
    }

    /// The crate recorded in commit `commit` (hex id).
    pub fn files(&self, commit: &str) -> Result<FileSet, StateError> {
        let id = ObjectId::from_hex(commit.as_bytes()).map_err(|_| StateError::Trailers {
            commit: commit.to_string(),
            message: "not a commit id".to_string(),
        })?;
        let tree = self
            .repo
            .find_commit(id)
            .and_then(|c| c.tree_id())
            .map_err(|e| self.err("read a commit", e))?;
        let mut files = FileSet::default();
        self.read_tree(tree.detach(), "", &mut files)?;
        Ok(files)
    }

    fn read_tree(&self, id: ObjectId, prefix: &str, out: &mut FileSet) -> Result<(), StateError> {
        let tree = self
            .repo
            .find_tree(id)
            .map_err(|e| self.err("read a tree", e))?;
        let decoded = tree.decode().map_err(|e| self.err("decode a tree", e))?;
        let entries: Vec<(String, bool, ObjectId)> = decoded
            .entries
            .iter()
            .map(|e| (e.filename.to_string(), e.mode.is_tree(), e.oid.to_owned()))
            .collect();
        for (name, is_tree, oid) in entries {
            let path = format!("{prefix}{name}");
            if is_tree {
                self.read_tree(oid, &format!("{path}/"), out)?;
            } else {
                let blob = self
                    .repo
                    .find_blob(oid)
                    .map_err(|e| self.err("read a blob", e))?;
                out.insert(path, blob.data.clone());
            }
        }
        Ok(())
    }

    fn write_tree(&self, files: &FileSet) -> Result<ObjectId, StateError> {
        let mut editor = self
            .repo
            .empty_tree()
            .edit()
            .map_err(|e| self.err("edit a tree", e))?;
        for (path, contents) in files.iter() {
            let blob = self
                .repo
                .write_blob(contents)
                .map_err(|e| self.err("write a blob", e))?;
            editor
                .upsert(path, EntryKind::Blob, blob.detach())
                .map_err(|e| self.err("edit a tree", e))?;
        }
        Ok(editor
            .write()
            .map_err(|e| self.err("write a tree", e))?
            .detach())
    }

    /// The object a ref points at, or `None` if the ref does not exist.
    fn ref_target(&self, name: &str) -> Result<Option<ObjectId>, StateError> {
        let found = self
            .repo
            .try_find_reference(name)
            .map_err(|e| self.err("read a ref", e))?;
        Ok(found.and_then(|r| r.target().try_id().map(ToOwned::to_owned)))
    }

    /// Moves `best` to the last kept attempt on the attempts chain, if it is elsewhere.
    fn repair_best(&self) -> Result<(), StateError> {
        let attempts = self.attempts()?;
        let Some(last_kept) = attempts.iter().rev().find(|a| a.record.verdict.is_kept()) else {
            return Ok(());
        };
        let best = self.ref_target(BEST_REF)?.map(|id| id.to_string());
        if best.as_deref() == Some(last_kept.commit.as_str()) {
            return Ok(());
        }
        let id =
            ObjectId::from_hex(last_kept.commit.as_bytes()).map_err(|_| StateError::Trailers {
                commit: last_kept.commit.clone(),
                message: "not a commit id".to_string(),
            })?;
        let sig = signature(last_kept.record.round);
        let mut time = gix::date::parse::TimeBuf::default();
        let edit = update(BEST_REF, id, PreviousValue::Any, "repair best");
        self.repo
            .edit_references_as([edit], Some(sig.to_ref(&mut time)))
            .map_err(|e| self.err("update refs", e))?;
        Ok(())
    }

    fn err(&self, action: &'static str, source: gix::Error) -> StateError {
        StateError::git(self.repo.path(), action, source)
    }
}

/// A ref update of one of this module's refs to `id`, expecting `expected`.
fn update(name: &'static str, id: ObjectId, expected: PreviousValue, log: &str) -> RefEdit {
    let name = name
        .try_into()
        .expect("ATTEMPTS_REF and BEST_REF are valid full ref names");
    RefEdit::update(name, id, expected, log)
}

/// The fixed author and committer of round `round`'s commit.
fn signature(round: u32) -> gix::actor::Signature {
    gix::actor::Signature {
        name: AUTHOR_NAME.into(),
        email: AUTHOR_EMAIL.into(),
        time: gix::date::Time {
            seconds: EPOCH_SECONDS + i64::from(round) * SECONDS_PER_ROUND,
            offset: 0,
        },
    }
}

/// The commit message of an attempt: a subject, the plan digest, then trailers.
pub fn message(r: &AttemptRecord) -> String {
    let what = match (&r.skill, &r.label) {
        (Some(skill), Some(label)) => format!("{skill}: {label}"),
        (Some(skill), None) => skill.clone(),
        _ => "the template's defaults".to_string(),
    };
    let mut text = format!(
        "round {}: {what} ({})\n\nPlan {}.\n\n",
        r.round, r.verdict, r.plan_digest
    );
    let mut line = |key: &str, value: &str| text.push_str(&format!("{key}: {value}\n"));
    line(trailer::ROUND, &r.round.to_string());
    if let Some(skill) = &r.skill {
        line(trailer::SKILL, skill);
    }
    if let Some(label) = &r.label {
        line(trailer::MOVE, label);
    }
    for change in &r.changes {
        line(trailer::CHANGE, &change.to_string());
    }
    line(trailer::PLAN, &r.plan_digest);
    line(trailer::VERDICT, r.verdict.as_str());
    if let Some(objective) = r.objective {
        line(trailer::OBJECTIVE, &objective.to_string());
    }
    for (name, value) in &r.metrics {
        line(trailer::METRIC, &format!("{name}={value}"));
    }
    text
}

/// Parses the trailers of a message written by [`message`].
pub fn parse_message(text: &str) -> Result<AttemptRecord, String> {
    let trailers = text.trim_end().rsplit_once("\n\n").map_or(text, |(_, t)| t);
    let mut round = None;
    let mut plan_digest = None;
    let mut verdict = None;
    let mut r = AttemptRecord {
        round: 0,
        skill: None,
        label: None,
        changes: Vec::new(),
        plan_digest: String::new(),
        verdict: Verdict::Baseline,
        objective: None,
        metrics: BTreeMap::new(),
    };
    for line in trailers.lines() {
        let (key, value) = line
            .split_once(": ")
            .ok_or_else(|| format!("not a trailer: `{line}`"))?;
        let bad = |what: &str| format!("bad {what} trailer `{value}`");
        match key {
            trailer::ROUND => round = Some(value.parse().map_err(|_| bad(key))?),
            trailer::SKILL => r.skill = Some(value.to_string()),
            trailer::MOVE => r.label = Some(value.to_string()),
            trailer::CHANGE => r.changes.push(value.parse().map_err(|_| bad(key))?),
            trailer::PLAN => plan_digest = Some(value.to_string()),
            trailer::VERDICT => verdict = Some(value.parse().map_err(|_| bad(key))?),
            trailer::OBJECTIVE => r.objective = Some(value.parse().map_err(|_| bad(key))?),
            trailer::METRIC => {
                let (name, v) = value.split_once('=').ok_or_else(|| bad(key))?;
                r.metrics
                    .insert(name.to_string(), v.parse().map_err(|_| bad(key))?);
            }
            _ => return Err(format!("unknown trailer `{key}`")),
        }
    }
    r.round = round.ok_or("no Vibeserve-Round trailer")?;
    r.plan_digest = plan_digest.ok_or("no Vibeserve-Plan trailer")?;
    r.verdict = verdict.ok_or("no Vibeserve-Verdict trailer")?;
    Ok(r)
}

/// What went wrong with the state repository.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StateError {
    /// A git operation failed.
    #[error("cannot {action} in the state repository {}: {source}", path.display())]
    Git {
        /// The repository.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// gix's error.
        source: gix::Error,
    },
    /// A recorded crate's Plan.toml does not parse.
    #[error("the plan recorded in state commit {commit} does not parse")]
    Plan {
        /// The commit.
        commit: String,
        /// Why.
        #[source]
        source: PlanError,
    },
    /// The repository's folder could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A commit on the attempts chain is not one this tool wrote.
    #[error("state commit {commit} is not a vibeserve attempt: {message}")]
    #[diagnostic(help("the state repository was edited by hand; move it aside to start over"))]
    Trailers {
        /// The commit.
        commit: String,
        /// What is wrong.
        message: String,
    },
}

impl StateError {
    fn git(path: &Path, action: &'static str, source: gix::Error) -> StateError {
        StateError::Git {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}
