//! The `evolutionary` policy: a small population of the best measured plans, mutated
//! (one random applicable move) and recombined (each field group from one of two
//! parents), seeded.
//!
//! The population is rebuilt from the history each round: the [`POPULATION`] best
//! distinct plans that passed the Judge and were measured (a regression still carries
//! useful genes; a plan that broke a constraint or the build does not). Parents are
//! picked by binary tournament. The child is returned as the changes that turn the best
//! plan into it, so the Implementer and Serve.lock see it like any other task.
//!
//! The random stream is seeded from the search seed and the round number, so the policy
//! is a pure function of (seed, history, hints): a resumed run chooses what an
//! uninterrupted one would have.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Attempt, Candidate, Hints, History, Policy, Task, Verdict};
use crate::plan::Plan;
use crate::skills::change;

/// Plans kept as parents: small, as each costs a build and a benchmark to evaluate.
pub const POPULATION: usize = 4;

/// Chance that a round recombines two parents instead of mutating one.
pub const RECOMBINE_PROBABILITY: f64 = 0.3;

/// Extra weight of a move whose skill addresses the dominant stage (base weight 1).
pub const STAGE_WEIGHT: u32 = 2;

/// Extra weight of a move whose skill the Evaluator suggested.
pub const SUGGEST_WEIGHT: u32 = 4;

/// Draws per round before giving up on finding a child not seen before.
pub const MAX_DRAWS: usize = 64;

/// The skill name recorded for a recombination.
pub const RECOMBINE_SKILL: &str = "evolutionary/recombine";

/// The `evolutionary` policy.
#[derive(Debug, Clone)]
pub struct Evolutionary {
    /// The moves mutation draws from.
    moves: Vec<Candidate>,
    /// The search seed.
    seed: u64,
}

impl Evolutionary {
    /// A policy drawing mutations from `moves`, seeded with `seed`.
    pub fn new(moves: Vec<Candidate>, seed: u64) -> Evolutionary {
        Evolutionary { moves, seed }
    }

    /// The parents: the best distinct plans that passed the Judge and were measured.
    pub fn population(history: &History) -> Vec<&Attempt> {
        let mut measured: Vec<&Attempt> = history
            .attempts
            .iter()
            .filter(|a| {
                a.objective.is_some_and(f64::is_finite)
                    && matches!(
                        a.verdict,
                        Verdict::Baseline | Verdict::Accepted | Verdict::RejectedRegression
                    )
            })
            .collect();
        let better = |x: f64, y: f64| history.direction.improves(x, y);
        // Best first; the earlier round wins a tie, so the order is total and stable.
        measured.sort_by(|a, b| {
            let (x, y) = (a.objective.unwrap_or(0.0), b.objective.unwrap_or(0.0));
            if better(x, y) {
                std::cmp::Ordering::Less
            } else if better(y, x) {
                std::cmp::Ordering::Greater
            } else {
                a.round.cmp(&b.round)
            }
        });
        let mut population: Vec<&Attempt> = Vec::new();
        for a in measured {
            if population.len() < POPULATION && !population.iter().any(|p| p.plan == a.plan) {
                population.push(a);
            }
        }
        population
    }

    /// Binary tournament: the better of two random members (the population is best first).
    fn pick<'a>(rng: &mut ChaCha8Rng, population: &[&'a Attempt]) -> &'a Attempt {
        let i = rng.random_range(0..population.len());
        let j = rng.random_range(0..population.len());
        population[i.min(j)]
    }

    /// `parent` with one random move, weighted by the hints.
    fn mutate(
        &self,
        rng: &mut ChaCha8Rng,
        parent: &Plan,
        hints: &Hints,
    ) -> Option<(String, String, Plan)> {
        let weight = |c: &Candidate| {
            let stage = hints.dominant.is_some_and(|s| c.addresses.contains(&s));
            let named = hints.suggest.contains(&c.skill);
            1 + if stage { STAGE_WEIGHT } else { 0 } + if named { SUGGEST_WEIGHT } else { 0 }
        };
        let total: u32 = self.moves.iter().map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rng.random_range(0..total);
        let chosen = self.moves.iter().find(|c| {
            let w = weight(c);
            if ticket < w {
                true
            } else {
                ticket -= w;
                false
            }
        })?;
        let changes = chosen.choice.resolve(parent).ok()?;
        let child = change::apply_all(parent, &changes).ok()?;
        Some((chosen.skill.clone(), chosen.choice.to_string(), child))
    }

    /// Each top-level field group of the child from `a` or `b`, by a fair coin each.
    fn recombine(rng: &mut ChaCha8Rng, a: &Plan, b: &Plan) -> Option<Plan> {
        let mut from_b: Vec<(String, bool)> = Vec::new();
        let mut changes = Vec::new();
        for c in change::diff(a, b) {
            let group = c.field.split('.').next().unwrap_or_default().to_string();
            let take = match from_b.iter().find(|(g, _)| *g == group) {
                Some((_, take)) => *take,
                None => {
                    let take = rng.random_bool(0.5);
                    from_b.push((group, take));
                    take
                }
            };
            if take {
                changes.push(c);
            }
        }
        change::apply_all(a, &changes).ok()
    }
}

impl Policy for Evolutionary {
    fn name(&self) -> &'static str {
        "evolutionary"
    }

    fn next(&mut self, history: &History, hints: &Hints) -> Option<Task> {
        let best = history.best_plan()?;
        let population = Evolutionary::population(history);
        let seeds = if population.is_empty() {
            vec![history.best()?]
        } else {
            population
        };
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(u64::from(history.next_round()));
        for _ in 0..MAX_DRAWS {
            let (skill, label, child) = if seeds.len() >= 2
                && rng.random_bool(RECOMBINE_PROBABILITY)
            {
                let (a, b) = (Self::pick(&mut rng, &seeds), Self::pick(&mut rng, &seeds));
                let Some(child) = Self::recombine(&mut rng, &a.plan, &b.plan) else {
                    continue;
                };
                let label = format!("recombine rounds {} and {}", a.round, b.round);
                (RECOMBINE_SKILL.to_string(), label, child)
            } else {
                let parent = Self::pick(&mut rng, &seeds);
                let Some((skill, mut label, child)) = self.mutate(&mut rng, &parent.plan, hints)
                else {
                    continue;
                };
                if &parent.plan != best {
                    label = format!("{label} on round {}", parent.round);
                }
                (skill, label, child)
            };
            if &child == best || history.has_plan(&child) {
                continue;
            }
            return Some(Task {
                skill,
                label,
                changes: change::diff(best, &child),
            });
        }
        None
    }
}
