//! The `backlog` policy: every move of every applicable skill, tried in order of the
//! skills' priorities, re-ordered each round by the Evaluator's hints.
//!
//! Each round the backlog is scored afresh: a skill's prior, plus a bonus when it
//! addresses the stage the Evaluator found dominant, plus a larger one when the Evaluator
//! named it. Ties keep library order (skills by id, moves and values as written). The
//! first item that was not tried, makes a change to the best plan, and leads to a plan
//! not seen before is the round's task. Deterministic: no randomness at all.

use super::{Candidate, Hints, History, Policy, Task};

/// Score added to a skill that addresses the dominant stage: enough to move a
/// middle-priority skill ahead of a high-priority one that doesn't.
pub const STAGE_BONUS: u32 = 30;

/// Score added to a skill the Evaluator suggests by name: more than [`STAGE_BONUS`],
/// because a named suggestion is the more specific hint.
pub const SUGGEST_BONUS: u32 = 60;

/// The `backlog` policy.
#[derive(Debug, Clone)]
pub struct Backlog {
    /// The candidates in library order.
    items: Vec<Candidate>,
}

impl Backlog {
    /// A backlog over these candidates (see [`super::candidates`]).
    pub fn new(items: Vec<Candidate>) -> Backlog {
        Backlog { items }
    }

    /// A candidate's score under `hints`.
    pub fn score(item: &Candidate, hints: &Hints) -> u32 {
        let mut score = item.priority;
        if hints
            .dominant
            .is_some_and(|stage| item.addresses.contains(&stage))
        {
            score += STAGE_BONUS;
        }
        if hints.suggest.contains(&item.skill) {
            score += SUGGEST_BONUS;
        }
        score
    }

    /// The candidates in the order this round would try them.
    pub fn ordered(&self, hints: &Hints) -> Vec<&Candidate> {
        let mut order: Vec<&Candidate> = self.items.iter().collect();
        // A stable sort keeps library order among equal scores.
        order.sort_by_key(|item| std::cmp::Reverse(Backlog::score(item, hints)));
        order
    }
}

impl Policy for Backlog {
    fn name(&self) -> &'static str {
        "backlog"
    }

    fn next(&mut self, history: &History, hints: &Hints) -> Option<Task> {
        let base = history.best_plan()?;
        self.ordered(hints)
            .into_iter()
            .filter(|item| !history.tried(&item.skill, &item.choice.to_string()))
            .find_map(|item| item.task(base, history))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skills::{Choice, Stage};

    fn item(skill: &str, priority: u32, addresses: Vec<Stage>) -> Candidate {
        Candidate {
            skill: skill.into(),
            choice: Choice::EnablePart {
                part: "core".into(),
            },
            priority,
            addresses,
        }
    }

    #[test]
    fn hints_add_stage_and_suggestion_bonuses() {
        let decode = item("a", 40, vec![Stage::Decode]);
        assert_eq!(Backlog::score(&decode, &Hints::default()), 40);
        let dominant = Hints {
            dominant: Some(Stage::Decode),
            suggest: vec![],
        };
        assert_eq!(Backlog::score(&decode, &dominant), 40 + STAGE_BONUS);
        let named = Hints {
            dominant: Some(Stage::Prefill),
            suggest: vec!["a".into()],
        };
        assert_eq!(Backlog::score(&decode, &named), 40 + SUGGEST_BONUS);
    }

    #[test]
    fn equal_scores_keep_library_order() {
        let backlog = Backlog::new(vec![
            item("b", 50, vec![]),
            item("a", 50, vec![]),
            item("c", 60, vec![]),
        ]);
        let order: Vec<&str> = backlog
            .ordered(&Hints::default())
            .iter()
            .map(|c| c.skill.as_str())
            .collect();
        assert_eq!(order, ["c", "b", "a"]);
    }
}
