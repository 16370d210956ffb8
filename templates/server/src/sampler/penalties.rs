//! Repetition (llama.cpp), frequency and presence (OpenAI) penalties over seen tokens.
//!
//! For a token seen `c > 0` times, as llama.cpp's `llama_sampler_penalties_apply` does:
//! `logit = logit > 0 ? logit / repetition : logit * repetition`, then
//! `logit -= c * frequency + presence`. The counts are kept incrementally (a map of the
//! seen tokens, plus the window's history when `penalty_last_n` is set), so applying
//! costs one step per distinct seen token, not per vocabulary entry.

use std::collections::{HashMap, VecDeque};

use super::ValidSamplingParams;

/// Per-sequence penalty state.
#[derive(Debug, Clone)]
pub(super) struct Penalties {
    repetition: f32,
    frequency: f32,
    presence: f32,
    /// 0: every seen token counts; else only the last `window`.
    window: usize,
    counts: HashMap<u32, u32>,
    /// The seen tokens in order, kept only when `window > 0`.
    history: VecDeque<u32>,
    /// Logits as they were before the last `apply`, for reporting raw log-probabilities.
    saved: Vec<(u32, f32)>,
}

impl Penalties {
    pub(super) fn new(params: &ValidSamplingParams) -> Self {
        let p = params.params();
        Self {
            repetition: p.repetition_penalty,
            frequency: p.frequency_penalty,
            presence: p.presence_penalty,
            window: p.penalty_last_n,
            counts: HashMap::new(),
            history: VecDeque::new(),
            saved: Vec::new(),
        }
    }

    /// Whether any penalty changes logits.
    pub(super) fn is_active(&self) -> bool {
        self.repetition != 1.0 || self.frequency != 0.0 || self.presence != 0.0
    }

    /// Counts `id` as seen.
    pub(super) fn record(&mut self, id: u32) {
        if !self.is_active() {
            return;
        }
        *self.counts.entry(id).or_insert(0) += 1;
        if self.window == 0 {
            return;
        }
        self.history.push_back(id);
        if self.history.len() > self.window
            && let Some(old) = self.history.pop_front()
            && let Some(c) = self.counts.get_mut(&old)
        {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&old);
            }
        }
    }

    /// Penalises the seen tokens' logits in place, remembering their previous values.
    pub(super) fn apply(&mut self, logits: &mut [f32]) {
        self.saved.clear();
        for (&id, &count) in &self.counts {
            let Some(logit) = logits.get_mut(id as usize) else {
                continue;
            };
            self.saved.push((id, *logit));
            *logit = if *logit > 0.0 {
                *logit / self.repetition
            } else {
                *logit * self.repetition
            };
            *logit -= count as f32 * self.frequency + self.presence;
        }
    }

    /// `logits[id]` as it was before the last [`Penalties::apply`].
    pub(super) fn raw_logit(&self, logits: &[f32], id: u32) -> f32 {
        self.saved
            .iter()
            .find(|(saved, _)| *saved == id)
            .map_or_else(
                || {
                    logits
                        .get(id as usize)
                        .copied()
                        .unwrap_or(f32::NEG_INFINITY)
                },
                |&(_, raw)| raw,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::super::SamplingParams;
    use super::*;

    fn penalties(rep: f32, freq: f32, pres: f32, window: usize) -> Penalties {
        let params = SamplingParams {
            repetition_penalty: rep,
            frequency_penalty: freq,
            presence_penalty: pres,
            penalty_last_n: window,
            ..Default::default()
        };
        Penalties::new(&params.validate().expect("valid"))
    }

    #[test]
    fn repetition_divides_positive_and_multiplies_negative_logits() {
        let mut p = penalties(2.0, 0.0, 0.0, 0);
        p.record(0);
        p.record(1);
        p.record(1);
        let mut logits = [3.0, -3.0, 5.0];
        p.apply(&mut logits);
        assert_eq!(logits, [1.5, -6.0, 5.0]);
    }

    #[test]
    fn frequency_scales_with_count_and_presence_does_not() {
        let mut p = penalties(1.0, 0.5, 0.25, 0);
        for id in [0, 0, 0, 2] {
            p.record(id);
        }
        let mut logits = [1.0, 1.0, 1.0];
        p.apply(&mut logits);
        assert_eq!(logits, [1.0 - 1.5 - 0.25, 1.0, 1.0 - 0.5 - 0.25]);
    }

    #[test]
    fn window_forgets_tokens_that_left_it() {
        let mut p = penalties(1.0, 1.0, 0.0, 2);
        for id in [0, 1, 1] {
            p.record(id);
        }
        let mut logits = [0.0, 0.0];
        p.apply(&mut logits);
        assert_eq!(
            logits,
            [0.0, -2.0],
            "token 0 fell out of the 2-token window"
        );
    }

    #[test]
    fn raw_logit_reports_the_value_before_penalties() {
        let mut p = penalties(1.0, 0.0, 1.0, 0);
        p.record(1);
        let mut logits = [0.5, 2.0];
        p.apply(&mut logits);
        assert_eq!(logits[1], 1.0);
        assert_eq!(p.raw_logit(&logits, 1), 2.0);
        assert_eq!(p.raw_logit(&logits, 0), 0.5);
    }

    #[test]
    fn ids_outside_the_logits_are_ignored() {
        let mut p = penalties(1.0, 1.0, 0.0, 0);
        p.record(7);
        let mut logits = [1.0];
        p.apply(&mut logits);
        assert_eq!(logits, [1.0]);
    }
}
