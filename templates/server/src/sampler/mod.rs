//! Choosing each next token, and knowing when to stop.
//!
//! A request's `SamplingParams` are validated into `ValidSamplingParams`; the
//! scheduler then owns one `SequenceSampler` (seeded RNG, penalty counts, reused
//! buffers) and one `Detokenizer` (output text, stop ids and strings) per sequence.
//! Per token: `sampler.sample(&mut logits)` → `detokenizer.push(id, &mut text)`.
//!
//! The pipeline on a logits row: raw log-probabilities (if asked) → penalties →
//! greedy argmax, or temperature → min-p → top-k → top-p → seeded draw
//! (see `select.rs` for the order and its cost).

mod args;
mod logprobs;
mod math;
mod params;
mod penalties;
mod select;
mod stop;
#[cfg(test)]
mod tests;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use args::SamplingArgs;
pub use logprobs::TokenLogprob;
pub use params::{MAX_TOP_LOGPROBS, SamplingParams, ValidSamplingParams};
pub use stop::{Detokenizer, StopReason, StopStrings};

use penalties::Penalties;
use select::{Candidates, Filters};

/// What can go wrong choosing a token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A sampling option is out of range.
    #[error("`{name}` must be {rule}")]
    InvalidParam {
        /// The option's name, as in the OpenAI request.
        name: &'static str,
        /// The allowed range.
        rule: &'static str,
    },
    /// Every logit was NaN or -inf (a broken forward pass), so no token can be chosen.
    #[error("no token has a finite logit (the model produced NaN or -inf everywhere)")]
    NoFiniteLogit,
}

/// The chosen token, with log-probabilities if the request asked for them.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The token id.
    pub id: u32,
    /// Its log-probability under the model's raw distribution (`log_softmax` of the
    /// unmodified logits, as vLLM reports by default), when `logprobs` or
    /// `top_logprobs` was requested.
    pub logprob: Option<f32>,
    /// The `top_logprobs` most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<TokenLogprob>,
}

/// Log-probabilities at one position whose token is already known (a prompt token,
/// for `echo` with `logprobs`): `token`'s, and the `top_n` most likely, from the raw
/// distribution as [`SequenceSampler::sample`] reports them.
pub fn score(logits: &[f32], token: u32, top_n: usize) -> SampledToken {
    let lse = logprobs::log_sum_exp(logits);
    let mut top_logprobs = Vec::new();
    logprobs::top_n(logits, top_n, lse, &mut top_logprobs);
    let raw = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&l| select::rank(l));
    SampledToken {
        id: token,
        logprob: Some(raw - lse),
        top_logprobs,
    }
}

/// Per-sequence sampling state, owned by the scheduler for the sequence's lifetime.
#[derive(Debug, Clone)]
pub struct SequenceSampler {
    params: ValidSamplingParams,
    rng: ChaCha8Rng,
    penalties: Penalties,
    candidates: Candidates,
}

impl SequenceSampler {
    /// State for a new sequence whose prompt is `prompt` (counted by the penalties only
    /// with `penalize_prompt`).
    pub fn new(params: ValidSamplingParams, prompt: &[u32]) -> Self {
        let mut penalties = Penalties::new(&params);
        if params.params().penalize_prompt {
            for &id in prompt {
                penalties.record(id);
            }
        }
        Self {
            rng: ChaCha8Rng::seed_from_u64(params.seed()),
            penalties,
            candidates: Candidates::default(),
            params,
        }
    }

    /// The options this sequence samples with.
    pub fn params(&self) -> &ValidSamplingParams {
        &self.params
    }

    /// Whether the next token is the logits' argmax and nothing else of the row is
    /// needed (greedy, no penalties, no log-probabilities): a device may choose it.
    pub fn is_plain_greedy(&self) -> bool {
        self.params.is_greedy() && !self.params.wants_logprobs() && !self.penalties.is_active()
    }

    /// Chooses the next token from `logits` (one row, vocabulary-wide) and counts it as
    /// generated. `logits` is scratch: penalties are applied to it in place.
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<SampledToken, SamplingError> {
        let p = self.params.params();
        let mut top_logprobs = Vec::new();
        let lse = if self.params.wants_logprobs() {
            let lse = logprobs::log_sum_exp(logits);
            logprobs::top_n(logits, p.top_logprobs, lse, &mut top_logprobs);
            Some(lse)
        } else {
            None
        };
        if self.penalties.is_active() {
            self.penalties.apply(logits);
        }
        let id = if self.params.is_greedy() {
            select::argmax(logits)
        } else {
            let filters = Filters {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                min_p: p.min_p,
            };
            self.candidates.draw(logits, filters, &mut self.rng)
        }
        .ok_or(SamplingError::NoFiniteLogit)?;
        self.penalties.record(id);
        let logprob = lse.map(|lse| select::rank(self.penalties.raw_logit(logits, id)) - lse);
        Ok(SampledToken {
            id,
            logprob,
            top_logprobs,
        })
    }
}
