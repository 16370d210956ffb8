//! Choosing a token from a logits row: argmax, or a seeded draw after the filters.
//!
//! Order (vLLM's): temperature → min-p → top-k → top-p → draw. Min-p and top-k commute
//! (neither moves the most likely token, and min-p's threshold is relative to it);
//! top-p then works on what is left, renormalised.
//!
//! Cost on a V-wide row, with no sort of the vocabulary and no allocation once the
//! buffers have grown: a vectorised maximum; then either
//! * no min-p/top-k (the OpenAI default): vectorised weights `exp((l - max) / T)` with
//!   per-block sums, and a draw that scans block sums, then one block; or
//! * min-p and/or top-k: the survivors copied into a candidate buffer (top-k up to
//!   [`TOP_K_SCAN_MAX`] by one scan keeping a small sorted list, larger by
//!   `select_nth_unstable`), weighed there.
//!
//! Top-p then runs a quickselect-style partition by weight (expected O(candidates)).

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::math::{exp_blocks, exp_nonpositive, max_ranked, pick_blocks};

/// Top-k up to this size is found by one scan with a sorted list (k-way insertion,
/// cheap rejects), above it by `select_nth_unstable` on a copy of the row.
const TOP_K_SCAN_MAX: usize = 128;

/// A logit as the sampler ranks it: NaN never wins, +inf is the largest finite value
/// (so softmax arithmetic stays finite).
pub(super) fn rank(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit.min(f32::MAX)
    }
}

/// The id of the largest logit (the first on ties); `None` when every logit is NaN or -inf.
pub(super) fn argmax(logits: &[f32]) -> Option<u32> {
    let max = max_ranked(logits);
    if max == f32::NEG_INFINITY {
        return None;
    }
    logits
        .iter()
        .position(|&l| rank(l) == max)
        .map(|i| i as u32)
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

/// The reused buffers of one sequence's draws.
#[derive(Debug, Clone, Default)]
pub(super) struct Candidates {
    /// `(id, value)` pairs: a logit while filtering, a relative weight after.
    buf: Vec<(u32, f32)>,
    /// Dense path: one weight per vocabulary entry, and the sum of each block of them.
    weights: Vec<f32>,
    block_sums: Vec<f64>,
}

fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The median of the first, middle and last values of a non-empty slice.
fn median_of_three(s: &[(u32, f32)]) -> f32 {
    let (a, b, c) = (s[0].1, s[s.len() / 2].1, s[s.len() - 1].1);
    a.max(b).min(a.min(b).max(c))
}

/// Reorders `s` into values above `pivot`, equal to it, below it (weights are never
/// NaN); returns where the equal and the lower parts start.
fn partition3(s: &mut [(u32, f32)], pivot: f32) -> (usize, usize) {
    let (mut gt, mut i, mut lt) = (0, 0, s.len());
    while i < lt {
        let w = s[i].1;
        if w > pivot {
            s.swap(gt, i);
            gt += 1;
            i += 1;
        } else if w < pivot {
            lt -= 1;
            s.swap(i, lt);
        } else {
            i += 1;
        }
    }
    (gt, lt)
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
        let max = max_ranked(logits);
        if max == f32::NEG_INFINITY {
            return None;
        }
        let inv_t = 1.0 / filters.temperature;
        let total = if filters.min_p == 0.0 && filters.top_k == 0 {
            let total = exp_blocks(logits, max, inv_t, &mut self.weights, &mut self.block_sums);
            if filters.top_p >= 1.0 {
                let at = pick_blocks(&self.weights, &self.block_sums, rng.random::<f64>() * total);
                return at.map(|i| i as u32);
            }
            // Tokens lighter than (1 - top_p) · total / V weigh less than 1 - top_p all
            // together, so the nucleus is complete without them: leave them out.
            let light = f64::from(1.0 - filters.top_p) * total / self.weights.len() as f64;
            let heavy = self.weights.iter().enumerate();
            let heavy = heavy.filter(|(_, w)| **w > 0.0 && f64::from(**w) >= light);
            self.buf.clear();
            self.buf.extend(heavy.map(|(i, &w)| (i as u32, w)));
            total
        } else {
            let floor = if filters.min_p > 0.0 {
                max + filters.temperature * filters.min_p.ln()
            } else {
                f32::NEG_INFINITY
            };
            if (1..=TOP_K_SCAN_MAX).contains(&filters.top_k) {
                self.scan_top_k(logits, filters.top_k, floor);
            } else {
                self.keep_above(logits, floor);
                self.keep_top_k(filters.top_k);
            }
            self.weigh(max, inv_t)
        };
        let total = self.keep_top_p(filters.top_p, total);
        self.pick(rng.random::<f64>() * total)
    }

    /// Copies the tokens whose logit is at least `floor` (min-p: p ≥ min_p · p_max is
    /// logit ≥ max + T · ln(min_p)); tokens of zero probability are left out.
    fn keep_above(&mut self, logits: &[f32], floor: f32) {
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

    /// Top-k (and the min-p `floor`) in one scan: a list sorted by [`by_value_desc`]
    /// where most logits are rejected by one comparison with the k-th best.
    fn scan_top_k(&mut self, logits: &[f32], k: usize, floor: f32) {
        self.buf.clear();
        // `bar` is the k-th best so far (-inf until the list is full); NaN and -inf
        // fail `l > bar` always.
        let mut bar = f32::NEG_INFINITY;
        for (id, &l) in logits.iter().enumerate() {
            let passes = l > bar && l >= floor;
            if !passes {
                continue;
            }
            let l = rank(l);
            // Equal logits go after those already kept: lower ids win ties.
            let at = self.buf.partition_point(|c| c.1 >= l);
            self.buf.insert(at, (id as u32, l));
            self.buf.truncate(k);
            if self.buf.len() == k {
                bar = self.buf[k - 1].1;
            }
        }
    }

    /// Turns logits into weights `exp((logit - max) / T)`; returns their sum.
    fn weigh(&mut self, max: f32, inv_temperature: f32) -> f64 {
        let mut total = 0.0f64;
        for c in &mut self.buf {
            c.1 = exp_nonpositive((c.1 - max) * inv_temperature);
            total += f64::from(c.1);
        }
        total
    }

    /// Keeps the smallest set of heaviest candidates (ties: lower id first) holding at
    /// least `top_p` of `total`; returns the kept total. Quickselect on the weights:
    /// partition the undecided window around a pivot into heavier / equal / lighter,
    /// then keep, drop or recurse into each part by how much mass is still needed.
    fn keep_top_p(&mut self, top_p: f32, total: f64) -> f64 {
        if top_p >= 1.0 {
            return total;
        }
        let mut need = f64::from(top_p) * total;
        // buf[..lo] is kept; buf[lo..hi] is undecided; buf[hi..] is dropped.
        let (mut lo, mut hi, mut kept) = (0, self.buf.len(), 0.0f64);
        while lo < hi {
            let window = &mut self.buf[lo..hi];
            let (gt, eq) = partition3(window, median_of_three(window));
            let heavier: f64 = window[..gt].iter().map(|c| f64::from(c.1)).sum();
            if heavier >= need {
                hi = lo + gt;
                continue;
            }
            let equal: f64 = window[gt..eq].iter().map(|c| f64::from(c.1)).sum();
            if heavier + equal < need {
                need -= heavier + equal;
                kept += heavier + equal;
                lo += eq;
                continue;
            }
            // The cut falls among equal weights: take them by id until enough.
            need -= heavier;
            kept += heavier;
            window[gt..eq].sort_unstable_by_key(|c| c.0);
            let mut end = gt;
            for c in &window[gt..eq] {
                end += 1;
                kept += f64::from(c.1);
                need -= f64::from(c.1);
                if need <= 0.0 {
                    break;
                }
            }
            self.buf.truncate(lo + end);
            return kept;
        }
        // Rounding left the total a hair short of the target: keep what was kept.
        self.buf.truncate(lo);
        kept
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
