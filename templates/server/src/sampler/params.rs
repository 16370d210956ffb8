//! The sampling options of one request, and their validation.

use std::hash::{BuildHasher, Hasher};

use super::SamplingError;

/// Most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How one request wants its tokens chosen. Defaults are OpenAI's: temperature 1, every
/// filter and penalty off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`;
    /// 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// llama.cpp's repetition penalty: a seen token's logit is divided by it when
    /// positive and multiplied by it when not; 1 is off.
    pub repetition_penalty: f32,
    /// OpenAI's frequency penalty: subtracted from a token's logit once per time it was
    /// seen; 0 is off.
    pub frequency_penalty: f32,
    /// OpenAI's presence penalty: subtracted once from the logit of every seen token;
    /// 0 is off.
    pub presence_penalty: f32,
    /// Penalties look at only the last `penalty_last_n` seen tokens (llama.cpp's
    /// `repeat_last_n`); 0 looks at all of them.
    pub penalty_last_n: usize,
    /// Whether the prompt's tokens count as seen for the penalties. Off (the default),
    /// only generated tokens count, as OpenAI documents its penalties; on, the prompt
    /// counts too, as llama.cpp's server does.
    pub penalize_prompt: bool,
    /// Seed of this request's random draws; the same seed and inputs give the same
    /// tokens. `None` draws a fresh seed.
    pub seed: Option<u64>,
    /// Report the log-probability of each chosen token.
    pub logprobs: bool,
    /// Also report this many most likely alternatives per position (≤ 20).
    pub top_logprobs: usize,
    /// Stop when the generated text contains one of these; the text returned ends just
    /// before it.
    pub stop: Vec<String>,
    /// Stop when one of these ids is generated (besides the model's end-of-generation ids).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past the model's end-of-generation ids.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 0,
            penalize_prompt: false,
            seed: None,
            logprobs: false,
            top_logprobs: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every option's range and fixes the seed.
    pub fn validate(self) -> Result<ValidSamplingParams, SamplingError> {
        let check = |ok: bool, name: &'static str, rule: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(SamplingError::InvalidParam { name, rule })
            }
        };
        check(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "temperature",
            "a finite number >= 0",
        )?;
        check(self.top_p > 0.0 && self.top_p <= 1.0, "top_p", "in (0, 1]")?;
        check((0.0..=1.0).contains(&self.min_p), "min_p", "in [0, 1]")?;
        check(
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
            "repetition_penalty",
            "a finite number > 0",
        )?;
        check(
            (-2.0..=2.0).contains(&self.frequency_penalty),
            "frequency_penalty",
            "in [-2, 2]",
        )?;
        check(
            (-2.0..=2.0).contains(&self.presence_penalty),
            "presence_penalty",
            "in [-2, 2]",
        )?;
        check(
            self.top_logprobs <= MAX_TOP_LOGPROBS,
            "top_logprobs",
            "at most 20",
        )?;
        check(
            self.stop.iter().all(|s| !s.is_empty()),
            "stop",
            "non-empty strings",
        )?;
        let seed = self.seed.unwrap_or_else(fresh_seed);
        Ok(ValidSamplingParams { params: self, seed })
    }
}

/// A fresh seed from the standard library's per-process random hash keys (no extra
/// dependency, no global state).
fn fresh_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// [`SamplingParams`] that passed validation, with the seed fixed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSamplingParams {
    params: SamplingParams,
    seed: u64,
}

impl ValidSamplingParams {
    /// The options.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed the draws use (the request's, or the fresh one chosen for it).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether the choice is deterministic argmax: temperature 0 or `top_k` 1.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0 || self.params.top_k == 1
    }

    /// Whether any log-probabilities are to be reported.
    pub fn wants_logprobs(&self) -> bool {
        self.params.logprobs || self.params.top_logprobs > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_options_are_rejected_by_name() {
        let cases = [
            SamplingParams {
                temperature: -0.1,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                frequency_penalty: 2.5,
                ..Default::default()
            },
            SamplingParams {
                presence_penalty: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                top_logprobs: 21,
                ..Default::default()
            },
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            },
        ];
        let names = [
            "temperature",
            "temperature",
            "top_p",
            "min_p",
            "repetition_penalty",
            "frequency_penalty",
            "presence_penalty",
            "top_logprobs",
            "stop",
        ];
        for (params, expected) in cases.into_iter().zip(names) {
            match params.validate() {
                Err(SamplingError::InvalidParam { name, .. }) => assert_eq!(name, expected),
                other => panic!("{expected}: expected a rejection, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_given_seed_is_kept_and_a_missing_one_is_filled() {
        let v = SamplingParams {
            seed: Some(42),
            ..Default::default()
        };
        assert_eq!(v.validate().map(|v| v.seed()).ok(), Some(42));
        let a = SamplingParams::default().validate().map(|v| v.seed());
        let b = SamplingParams::default().validate().map(|v| v.seed());
        assert!(a.is_ok() && b.is_ok());
        assert_ne!(a.ok(), b.ok(), "fresh seeds differ between requests");
    }
}
