//! The outer loop's planner: which change to try next, one task per round.
//!
//! A [`Policy`] reads the [`History`] of attempts and the Evaluator's [`Hints`] and
//! returns the next [`Task`]: a skill, the move it tries, and the concrete plan changes,
//! always relative to the best plan so far. The built-in Implementer ([`apply`]) makes
//! those changes. Policies are pure and deterministic for a seed.

/// The `backlog` policy: skills by priority, re-ordered by hints.
pub mod backlog;
/// The `evolutionary` policy: mutate and recombine the best plans, seeded.
pub mod evolutionary;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use backlog::Backlog;
pub use evolutionary::Evolutionary;

use crate::manifest::Direction;
use crate::plan::Plan;
use crate::skills::{Change, ChangeError, Choice, Facts, Library, Stage, change};

/// One round's work: a skill's move, made concrete against the best plan so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The skill's id (`serving/prefill-chunk`), or a policy's own operator
    /// (`evolutionary/recombine`).
    pub skill: String,
    /// The move as a reader sees it: `serving.prefill_chunk = 128`.
    pub label: String,
    /// The changes to the best plan, in order.
    pub changes: Vec<Change>,
}

/// The built-in Implementer: `plan` with the task's changes made. Deterministic.
pub fn apply(plan: &Plan, task: &Task) -> Result<Plan, ChangeError> {
    change::apply_all(plan, &task.changes)
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Round 0: the template's defaults, measured as the first best.
    Baseline,
    /// Built, judged correct, and better than the best beyond the noise.
    Accepted,
    /// The candidate crate did not build.
    RejectedBuild,
    /// The Accuracy Judge rejected it.
    RejectedJudge,
    /// Correct, but not better than the best beyond the noise.
    RejectedRegression,
    /// Correct and measured, but a benchmark constraint failed.
    RejectedConstraint,
    /// The round ran out of time or tokens before a verdict.
    BudgetExhausted,
    /// The LLM agent ended without a change to try: the endpoint failed, or it made none.
    AgentFailed,
}

/// Every verdict, for parsing and listings.
pub const VERDICTS: [Verdict; 8] = [
    Verdict::Baseline,
    Verdict::Accepted,
    Verdict::RejectedBuild,
    Verdict::RejectedJudge,
    Verdict::RejectedRegression,
    Verdict::RejectedConstraint,
    Verdict::BudgetExhausted,
    Verdict::AgentFailed,
];

impl Verdict {
    /// The verdict as trailers and Serve.lock spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Baseline => "baseline",
            Verdict::Accepted => "accepted",
            Verdict::RejectedBuild => "rejected-build",
            Verdict::RejectedJudge => "rejected-judge",
            Verdict::RejectedRegression => "rejected-regression",
            Verdict::RejectedConstraint => "rejected-constraint",
            Verdict::BudgetExhausted => "budget-exhausted",
            Verdict::AgentFailed => "agent-failed",
        }
    }

    /// Whether the attempt became the best (round 0 or accepted).
    pub fn is_kept(self) -> bool {
        matches!(self, Verdict::Baseline | Verdict::Accepted)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verdict name no [`Verdict`] has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown verdict `{0}`")]
pub struct UnknownVerdict(pub String);

impl FromStr for Verdict {
    type Err = UnknownVerdict;

    fn from_str(text: &str) -> Result<Verdict, UnknownVerdict> {
        VERDICTS
            .into_iter()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| UnknownVerdict(text.to_string()))
    }
}

/// One past round.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The round number (0 is the baseline).
    pub round: u32,
    /// What was tried; `None` for round 0.
    pub task: Option<Task>,
    /// The candidate's plan.
    pub plan: Plan,
    /// How it ended.
    pub verdict: Verdict,
    /// The objective's value, when the candidate was measured.
    pub objective: Option<f64>,
}

/// Every attempt so far, round 0 first.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Whether the objective is maximised or minimised.
    pub direction: Direction,
    /// The attempts in round order; the first is round 0.
    pub attempts: Vec<Attempt>,
}

impl History {
    /// A history holding round 0 only.
    pub fn new(direction: Direction, round0: Plan, objective: Option<f64>) -> History {
        History {
            direction,
            attempts: vec![Attempt {
                round: 0,
                task: None,
                plan: round0,
                verdict: Verdict::Baseline,
                objective,
            }],
        }
    }

    /// The last attempt that was kept (accepted, or round 0).
    pub fn best(&self) -> Option<&Attempt> {
        self.attempts.iter().rev().find(|a| a.verdict.is_kept())
    }

    /// The plan of the best attempt; `None` only for an empty history.
    pub fn best_plan(&self) -> Option<&Plan> {
        self.best().map(|a| &a.plan)
    }

    /// The next round's number.
    pub fn next_round(&self) -> u32 {
        self.attempts.last().map_or(0, |a| a.round + 1)
    }

    /// Whether a task with this skill and label was attempted.
    pub fn tried(&self, skill: &str, label: &str) -> bool {
        self.attempts
            .iter()
            .filter_map(|a| a.task.as_ref())
            .any(|t| t.skill == skill && t.label == label)
    }

    /// Whether some attempt already had this plan.
    pub fn has_plan(&self, plan: &Plan) -> bool {
        self.attempts.iter().any(|a| &a.plan == plan)
    }

    /// Appends an attempt.
    pub fn push(&mut self, attempt: Attempt) {
        self.attempts.push(attempt);
    }
}

/// What the Evaluator learned this round, for the planner's next choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hints {
    /// The stage that dominates the measured time, if one does.
    #[serde(default)]
    pub dominant: Option<Stage>,
    /// Skill ids worth trying next, most promising first.
    #[serde(default)]
    pub suggest: Vec<String>,
}

/// An outer-loop policy.
pub trait Policy {
    /// The policy's name, as Serve.toml spells it.
    fn name(&self) -> &'static str;

    /// The next task, or `None` when the policy has nothing left to try.
    fn next(&mut self, history: &History, hints: &Hints) -> Option<Task>;
}

/// One value of one move of an applicable skill: what policies choose from.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The skill's id.
    pub skill: String,
    /// The move's value.
    pub choice: Choice,
    /// The skill's prior.
    pub priority: u32,
    /// The stages the skill speeds up.
    pub addresses: Vec<Stage>,
}

impl Candidate {
    /// The task this candidate makes from `base`, unless it cannot be made there, changes
    /// nothing, or leads to a plan already attempted.
    pub fn task(&self, base: &Plan, history: &History) -> Option<Task> {
        let changes = self.choice.resolve(base).ok()?;
        let plan = change::apply_all(base, &changes).ok()?;
        if &plan == base || history.has_plan(&plan) {
            return None;
        }
        Some(Task {
            skill: self.skill.clone(),
            label: self.choice.to_string(),
            changes,
        })
    }
}

/// Every choice of every skill of `library` that applies to `facts`, in library order.
pub fn candidates(library: &Library, facts: &Facts) -> Vec<Candidate> {
    library
        .applicable(facts)
        .flat_map(|skill| {
            skill.choices().into_iter().map(|choice| Candidate {
                skill: skill.id.clone(),
                choice,
                priority: skill.front.priority,
                addresses: skill.front.addresses.clone(),
            })
        })
        .collect()
}

/// The policy Serve.toml names, over the skills that apply to the target.
pub fn policy(
    kind: crate::manifest::Policy,
    library: &Library,
    facts: &Facts,
    seed: u64,
) -> Result<Box<dyn Policy>, SearchError> {
    let candidates = candidates(library, facts);
    match kind {
        crate::manifest::Policy::Backlog => Ok(Box::new(Backlog::new(candidates))),
        crate::manifest::Policy::Evolutionary => Ok(Box::new(Evolutionary::new(candidates, seed))),
        // The Orchestrator picks each task itself; the backlog is what it falls back on.
        crate::manifest::Policy::Llm => Ok(Box::new(Backlog::new(candidates))),
    }
}

/// What went wrong choosing a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum SearchError {
    /// The policy needs an LLM back end.
    #[error("search policy `{0}` is not built in")]
    #[diagnostic(help("use `policy = \"backlog\"` or `policy = \"evolutionary\"`"))]
    NotBuiltin(&'static str),
}
