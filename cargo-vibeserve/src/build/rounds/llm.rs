//! Rounds implemented by the LLM back end. The Orchestrator (`policy = "llm"`) or the
//! configured policy names the task; the Implementer edits the best crate in place
//! through its confined tools; the crate it leaves is diffed against the one it got,
//! and that patch is what is compiled, judged, reviewed, measured and recorded. The plan
//! is unchanged by such a round: the patch is the change, kept in `<work>/agent/` with
//! the round's transcript, and copied beside Serve.toml when the round is accepted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Search;
use crate::agent::prompts::Context;
use crate::agent::sandbox::Workspace;
use crate::agent::tools::{COMMAND_TIMEOUT, Toolbox};
use crate::agent::transcript::{AGENT_DIR, patch_path};
use crate::agent::{Agent, End, Transcript, patch};
use crate::build::BuildError;
use crate::generate::{FileSet, generate, write_atomic};
use crate::lock::PatchRef;
use crate::manifest::Policy as PolicyKind;
use crate::prepare::Prepared;
use crate::search::{Attempt, Hints, History, Policy, Task, Verdict};
use crate::skills::{Facts, Library};
use crate::state::AttemptRecord;

/// The Evaluator's last notes, beside the transcripts.
const NOTES_FILE: &str = "notes.txt";
/// Longest task label kept in the state's trailers and the log.
const MAX_LABEL: usize = 100;
/// Folder beside Serve.toml that accepted rounds' patches are copied to.
pub const LOCKED_PATCH_DIR: &str = "patches";

/// The back end and what its prompts are built from.
pub(super) struct Llm {
    agent: Agent,
    library: Library,
    context: Context,
    orchestrate: bool,
}

impl Llm {
    /// Connects to the endpoint `config` names.
    pub(super) fn new(
        prepared: &Prepared,
        config: &crate::manifest::Agent,
        library: Library,
        facts: &Facts,
    ) -> Result<Llm, BuildError> {
        let context = Context::new(&prepared.manifest, &library, facts);
        Ok(Llm {
            agent: Agent::from_env(config)?,
            library,
            context,
            orchestrate: prepared.manifest.search.policy == PolicyKind::Llm,
        })
    }
}

impl Search<'_> {
    /// The next task, and with the LLM back end the round's transcript so far (the
    /// Orchestrator's conversation, when it picks).
    pub(super) fn next_task(
        &mut self,
        history: &History,
        hints: &Hints,
        policy: &mut dyn Policy,
    ) -> (Option<Task>, Option<Transcript>) {
        let Some(llm) = &self.llm else {
            return (policy.next(history, hints), None);
        };
        let round = history.next_round();
        let mut transcript = llm.agent.transcript(round);
        let fallback = policy.next(history, hints);
        if !llm.orchestrate {
            return (fallback, Some(transcript));
        }
        let cx = self.context(llm, history);
        let state = orchestrator_brief(history, hints, fallback.as_ref());
        let mut budget = llm.agent.budget();
        let pick = llm
            .agent
            .orchestrate(&cx, &state, &mut budget, &mut transcript);
        let task = pick
            .map(|p| Task {
                skill: one_line(&p.skill),
                label: one_line(&p.task),
                changes: Vec::new(),
            })
            .or(fallback);
        (task, Some(transcript))
    }

    /// One LLM round: implement, diff, then compile, judge, review and measure the patch.
    pub(super) fn llm_round(
        &mut self,
        history: &History,
        task: Task,
        transcript: Transcript,
    ) -> Result<(Attempt, Option<Hints>), BuildError> {
        let llm = self.llm.take().expect("an LLM round has the back end");
        let result = self.llm_round_with(&llm, history, task, transcript);
        self.llm = Some(llm);
        result
    }

    fn llm_round_with(
        &mut self,
        llm: &Llm,
        history: &History,
        task: Task,
        mut transcript: Transcript,
    ) -> Result<(Attempt, Option<Hints>), BuildError> {
        let round = history.next_round();
        let best = history.best().expect("a history always holds round 0");
        let task = Task {
            changes: Vec::new(),
            ..task
        };
        eprintln!(
            "round {round}: {} — {} (LLM Implementer)",
            task.skill, task.label
        );
        let base = self.crate_files(&best.plan, history, round)?;
        let dir = self.prepared.server_dir();
        base.write(&dir)?;
        let cx = self.context(llm, history);
        let tools = self.toolbox(llm, &dir)?;
        let mut budget = llm.agent.budget();
        let brief = format!("{} ({})", task.label, task.skill);
        let end = llm.agent.implement(
            &cx,
            &task.skill,
            &brief,
            &tools,
            &mut budget,
            &mut transcript,
        );
        let files = tools.snapshot().map_err(|e| io(&dir, e))?;
        let diff = patch::make(&base, &files).map_err(|e| BuildError::Patch {
            path: format!("round {round}"),
            message: e.to_string(),
        })?;
        write_atomic(&patch_path(self.work, round), diff.as_bytes())?;
        let (verdict, objective, metrics, hints, reason) = match end {
            End::Exhausted(why) => (
                Verdict::BudgetExhausted,
                None,
                BTreeMap::new(),
                None,
                Some(why),
            ),
            End::Failed(e) => (
                Verdict::AgentFailed,
                None,
                BTreeMap::new(),
                None,
                Some(e.to_string()),
            ),
            End::Done(_) if diff.is_empty() => (
                Verdict::AgentFailed,
                None,
                BTreeMap::new(),
                None,
                Some("no change to the crate".into()),
            ),
            End::Done(_) => {
                let mut review = || llm.agent.review(&cx, &diff, &mut transcript);
                self.try_candidate(&files, round, best.round, &mut review)?
            }
        };
        if let Some(h) = &hints {
            let figures = figures(&metrics, h, reason.as_deref());
            if let Some((notes, suggest)) = llm.agent.evaluate(&cx, &figures, &mut transcript) {
                let text = format!("{notes}\nsuggested: {}", suggest.join(", "));
                write_atomic(&self.work.join(AGENT_DIR).join(NOTES_FILE), text.as_bytes())?;
            }
        }
        let record =
            AttemptRecord::new(round, Some(&task), &best.plan, verdict, objective, metrics);
        let commit = self.state.record(&record, &files)?;
        transcript.commit = Some(commit);
        transcript.verdict = Some(verdict.to_string());
        transcript.reason = reason.clone();
        llm.agent
            .write_transcript(&transcript, self.work)
            .map_err(|e| io(self.work, e))?;
        println!(
            "round {round}: {verdict:<20} {} {}, {} {}{}",
            task.skill,
            task.label,
            self.evaluator.metric(),
            super::show(objective),
            reason
                .map(|r| format!(" ({})", one_line(&r)))
                .unwrap_or_default()
        );
        let attempt = Attempt {
            round,
            task: Some(task),
            plan: best.plan.clone(),
            verdict,
            objective,
        };
        self.conclude(history, attempt, hints)
    }

    /// The crate of `plan` with the patches of the accepted rounds before `before`
    /// applied in round order (rounds of the built-in Implementer have none).
    pub(super) fn crate_files(
        &self,
        plan: &crate::plan::Plan,
        history: &History,
        before: u32,
    ) -> Result<FileSet, BuildError> {
        let mut files = generate(plan)?;
        for a in history
            .attempts
            .iter()
            .filter(|a| a.round < before && a.verdict == Verdict::Accepted)
        {
            let path = patch_path(self.work, a.round);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            files = patch::apply(&files, &text).map_err(|e| BuildError::Patch {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(files)
    }

    /// The accepted round's patch copied beside Serve.toml, and its reference for the
    /// lock; `None` for a round of the built-in Implementer.
    pub(super) fn lock_patch(&self, round: u32) -> Result<Option<PatchRef>, BuildError> {
        let Ok(text) = std::fs::read(patch_path(self.work, round)) else {
            return Ok(None);
        };
        let rel = format!("{LOCKED_PATCH_DIR}/round-{round}.patch");
        write_atomic(&self.prepared.manifest.dir.join(&rel), &text)?;
        Ok(Some(PatchRef {
            path: rel,
            sha256: hex::encode(Sha256::digest(&text)),
        }))
    }

    /// The prompts' context: the target, the best plan, the last figures and notes.
    fn context(&self, llm: &Llm, history: &History) -> Context {
        let mut cx = llm.context.clone();
        if let Some(best) = history.best() {
            cx.plan = best.plan.to_toml();
        }
        let last = history.attempts.last();
        let notes =
            std::fs::read_to_string(self.work.join(AGENT_DIR).join(NOTES_FILE)).unwrap_or_default();
        cx.last_round = match last {
            Some(a) => format!(
                "round {} {} ({}), objective {}. Evaluator notes: {}",
                a.round,
                a.verdict,
                a.task
                    .as_ref()
                    .map_or("template defaults".into(), |t| format!(
                        "{} {}",
                        t.skill, t.label
                    )),
                super::show(a.objective),
                if notes.is_empty() {
                    "none yet"
                } else {
                    notes.as_str()
                }
            ),
            None => "none".into(),
        };
        cx
    }

    fn toolbox(&self, llm: &Llm, dir: &Path) -> Result<Toolbox, BuildError> {
        let manifest = &self.prepared.manifest;
        Ok(Toolbox {
            workspace: Workspace::new(dir).map_err(|e| io(dir, e))?,
            skills: llm.library.clone(),
            target_files: vec![
                ("Serve.toml".into(), manifest.path.clone()),
                ("workload".into(), manifest.workload.requests.clone()),
            ],
            target_dir: self.target_dir.clone(),
            hidden_env: vec![llm.agent.config().api_key_env.clone()],
            command_timeout: COMMAND_TIMEOUT,
        })
    }
}

/// What the Orchestrator is told: the attempts so far, the hints, the backlog's next.
fn orchestrator_brief(history: &History, hints: &Hints, next: Option<&Task>) -> String {
    let mut out = String::from("Attempts so far:\n");
    for a in &history.attempts {
        let task = a.task.as_ref().map_or("template defaults".into(), |t| {
            format!("{} {}", t.skill, t.label)
        });
        let _ = writeln!(
            out,
            "- round {}: {task}: {} ({})",
            a.round,
            a.verdict,
            super::show(a.objective)
        );
    }
    let _ = writeln!(
        out,
        "Evaluator hints: dominant stage {:?}; suggested {:?}",
        hints.dominant, hints.suggest
    );
    if let Some(t) = next {
        let _ = writeln!(
            out,
            "The backlog's next untried move: {} {}",
            t.skill, t.label
        );
    }
    out
}

/// The Evaluator's input: the candidate's figures and how the round ended.
fn figures(metrics: &BTreeMap<String, f64>, hints: &Hints, reason: Option<&str>) -> String {
    let mut out = String::from("Candidate medians:\n");
    for (k, v) in metrics {
        let _ = writeln!(out, "{k} = {v:.3}");
    }
    let _ = writeln!(out, "dominant stage: {:?}", hints.dominant);
    if let Some(r) = reason {
        let _ = writeln!(out, "outcome: {r}");
    }
    out
}

/// `text`'s first line, at most [`MAX_LABEL`] characters: safe for a commit trailer.
fn one_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(MAX_LABEL)
        .collect()
}

fn io(path: &Path, source: std::io::Error) -> BuildError {
    BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}
