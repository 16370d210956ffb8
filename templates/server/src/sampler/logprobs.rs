//! Log-probabilities of the model's raw distribution: `log_softmax(logits)` before any
//! penalty, temperature or filter. This is what vLLM reports by default
//! (`logprobs_mode = "raw_logprobs"`); OpenAI documents its `logprobs` as the model's
//! log-probability of each token, likewise unaffected by sampling settings.

use super::math::{max_ranked, sum_exp};
use super::select::rank;

/// One token with its log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    /// The token id.
    pub id: u32,
    /// Its natural-log probability under the model's raw distribution.
    pub logprob: f32,
}

/// `log Σ exp(logits)`, computed stably; NaN entries count as probability 0.
pub(super) fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = max_ranked(logits);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    max + sum_exp(logits, max).ln() as f32
}

/// The `n` most likely tokens, most likely first (ties: lower id first), as
/// log-probabilities given `lse` = [`log_sum_exp`]. One read-only pass keeping a small
/// sorted list, so no copy of the row.
pub(super) fn top_n(logits: &[f32], n: usize, lse: f32, out: &mut Vec<TokenLogprob>) {
    out.clear();
    if n == 0 {
        return;
    }
    // Logits are kept while scanning and turned into log-probabilities at the end.
    // `bar` is the n-th best so far (-inf until the list is full): most logits are
    // rejected by this one comparison, which NaN and -inf always fail.
    let mut bar = f32::NEG_INFINITY;
    for (id, &l) in logits.iter().enumerate() {
        if l.partial_cmp(&bar) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let l = rank(l);
        let at = out.partition_point(|t| t.logprob >= l);
        out.insert(
            at,
            TokenLogprob {
                id: id as u32,
                logprob: l,
            },
        );
        out.truncate(n);
        if out.len() == n {
            bar = out[n - 1].logprob;
        }
    }
    for t in out.iter_mut() {
        t.logprob -= lse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_is_stable_and_skips_nan() {
        let lse = log_sum_exp(&[1000.0, 1000.0, f32::NAN]);
        assert!((lse - (1000.0 + 2f32.ln())).abs() < 1e-3, "{lse}");
        assert_eq!(
            log_sum_exp(&[f32::NAN, f32::NEG_INFINITY]),
            f32::NEG_INFINITY
        );
    }

    #[test]
    fn top_n_lists_the_best_in_order_with_normalised_logprobs() {
        let logits = [0.0, 3.0, f32::NAN, 2.0, 3.0, -1.0];
        let lse = log_sum_exp(&logits);
        let mut out = Vec::new();
        top_n(&logits, 3, lse, &mut out);
        let ids: Vec<u32> = out.iter().map(|t| t.id).collect();
        assert_eq!(
            ids,
            [1, 4, 3],
            "ties keep the lower id first; NaN never listed"
        );
        let probs: f32 = logits
            .iter()
            .filter(|l| !l.is_nan())
            .map(|&l| (l - lse).exp())
            .sum();
        assert!((probs - 1.0).abs() < 1e-5);
        assert!((out[0].logprob - (3.0 - lse)).abs() < 1e-6);
    }
}
