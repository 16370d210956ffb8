//! Choosing a token from a logits row: argmax, or a seeded draw after the filters.
//!
//! Order (vLLM's): temperature → min-p → top-k → top-p → draw. Min-p and top-k commute
//! (neither moves the most likely token, and min-p's threshold is relative to it);
//! top-p then works on what is left, renormalised.
//!
//! Cost per call on a V-wide row: one pass for the maximum, one pass copying the tokens
//! that pass min-p into a reused candidate buffer, `select_nth_unstable` for top-k
//! (O(V)), and for top-p a sort of only a growing prefix of the candidates. No full sort
//! of the vocabulary and no allocation once the buffer has grown.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Top-p first sorts this many best candidates, then 8x more each time the mass is
/// short: most rows reach `top_p` within the first few dozen tokens.
const TOP_P_FIRST_PREFIX: usize = 64;
/// Growth factor of the sorted prefix for top-p.
const TOP_P_PREFIX_GROWTH: usize = 8;

/// A logit as the sampler ranks it: NaN never wins, +inf is the largest finite value
/// (so softmax arithmetic stays finite).
pub(super) fn rank(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit.min(f32::MAX)
    }
}

/// The id of the largest logit (the first on ties); `None` when no logit is finite or +inf.
pub(super) fn argmax(logits: &[f32]) -> Option<u32> {
    let (id, best) = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, rank(l)))
        // `max_by` keeps the last of equal elements; compare reversed ids to keep the first.
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))?;
    (best > f32::NEG_INFINITY).then_some(id as u32)
}

/// The filter settings [`Candidates::draw`] applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Filters {
    /// > 0.
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
}

/// The reused candidate buffer of one sequence: `(id, value)` pairs, where the value is
/// a logit while filtering and a relative probability weight after.
#[derive(Debug, Clone, Default)]
pub(super) struct Candidates {
    buf: Vec<(u32, f32)>,
}

fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Candidates {
    /// Draws a token from `logits` under `filters` with `rng`; `None` when no logit is
    /// finite.
    pub(super) fn draw(
        &mut self,
        logits: &[f32],
        filters: Filters,
        rng: &mut ChaCha8Rng,
    ) -> Option<u32> {
        let max = logits
            .iter()
            .map(|&l| rank(l))
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return None;
        }
        self.keep_min_p(logits, max, filters);
        self.keep_top_k(filters.top_k);
        let total = self.weigh(max, filters.temperature);
        let total = self.keep_top_p(filters.top_p, total);
        self.pick(rng.random::<f64>() * total)
    }

    /// Copies the tokens that pass min-p: p ≥ min_p · p_max, i.e. (with temperature T)
    /// logit ≥ max + T · ln(min_p). Tokens of zero probability are left out.
    fn keep_min_p(&mut self, logits: &[f32], max: f32, filters: Filters) {
        let floor = if filters.min_p > 0.0 {
            max + filters.temperature * filters.min_p.ln()
        } else {
            f32::NEG_INFINITY
        };
        self.buf.clear();
        self.buf.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, rank(l)))
                .filter(|&(_, l)| l >= floor && l > f32::NEG_INFINITY),
        );
    }

    /// Keeps the `k` largest logits (all when `k` is 0 or not smaller than the set).
    fn keep_top_k(&mut self, k: usize) {
        if k == 0 || k >= self.buf.len() {
            return;
        }
        self.buf.select_nth_unstable_by(k - 1, by_value_desc);
        self.buf.truncate(k);
    }

    /// Turns logits into weights `exp((logit - max) / T)`; returns their sum.
    fn weigh(&mut self, max: f32, temperature: f32) -> f64 {
        let mut total = 0.0f64;
        for c in &mut self.buf {
            c.1 = ((c.1 - max) / temperature).exp();
            total += f64::from(c.1);
        }
        total
    }

    /// Keeps the smallest prefix, by weight, holding at least `top_p` of `total`;
    /// returns the kept total. Sorts only as long a prefix as it needs.
    fn keep_top_p(&mut self, top_p: f32, total: f64) -> f64 {
        if top_p >= 1.0 {
            return total;
        }
        let target = f64::from(top_p) * total;
        let mut prefix = TOP_P_FIRST_PREFIX.min(self.buf.len());
        loop {
            if prefix < self.buf.len() {
                self.buf.select_nth_unstable_by(prefix - 1, by_value_desc);
            }
            self.buf[..prefix].sort_unstable_by(by_value_desc);
            let mut kept = 0.0f64;
            for (i, c) in self.buf[..prefix].iter().enumerate() {
                kept += f64::from(c.1);
                if kept >= target {
                    self.buf.truncate(i + 1);
                    return kept;
                }
            }
            if prefix == self.buf.len() {
                // Rounding left the sum a hair short of the target: keep everything.
                return kept;
            }
            prefix = (prefix * TOP_P_PREFIX_GROWTH).min(self.buf.len());
        }
    }

    /// The candidate where the running weight first exceeds `point` (in `[0, total)`).
    fn pick(&self, point: f64) -> Option<u32> {
        let mut acc = 0.0f64;
        for &(id, w) in &self.buf {
            acc += f64::from(w);
            if acc > point {
                return Some(id);
            }
        }
        // `point` fell on the rounding error past the last weight.
        self.buf.last().map(|&(id, _)| id)
    }

    /// The ids kept by the last draw (for tests of the filters).
    #[cfg(test)]
    pub(super) fn kept_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.buf.iter().map(|c| c.0).collect();
        ids.sort_unstable();
        ids
    }
}
