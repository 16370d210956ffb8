//! Vocabulary-wide reductions written so the compiler vectorises them: the sampler runs
//! them on every 49152-wide logits row, where libm's scalar `expf` alone costs ~260 µs.

/// Lanes of the partial sums and maxima (two SSE or one AVX register of f32).
const LANES: usize = 8;
/// Weights per block of [`exp_blocks`]: the draw scans block sums first, then one block.
pub(super) const BLOCK: usize = 64;

/// Below this, `exp` underflows f32: the result is exactly 0.
const EXP_MIN: f32 = -87.3;

/// The largest value of `xs` ignoring NaN, with +inf clamped to `f32::MAX` (the
/// sampler's ranking, see `select::rank`); -inf when nothing else is there.
pub(super) fn max_ranked(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            // A NaN `x` compares false and is skipped.
            *a = if x > *a { x } else { *a };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in acc.iter().chain(tail) {
        max = if x > max { x } else { max };
    }
    max.min(f32::MAX)
}

/// `exp(x)` for `x <= 0` (larger inputs are treated as 0), within 2 ulp, branch-free
/// so loops over it vectorise: exp(x) = 2^n · exp(r) with |r| ≤ ln2/2 and Cephes'
/// `expf` polynomial for exp(r). Exactly 0 below the f32 range, including -inf.
/// (Comparisons rather than `min`/`max`/`as i32`, which block vectorisation.)
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so n · LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < 0.0 { x } else { 0.0 };
    let clamped = if x > EXP_MIN { x } else { EXP_MIN };
    let z = clamped * LOG2E + ROUND;
    let n = z - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n (in [-126, 0]) sits in z's low bits.
    let scale = f32::from_bits(z.to_bits().wrapping_add(127) << 23);
    if x < EXP_MIN { 0.0 } else { y * scale }
}

/// The sampler's ranking of a logit (`select::rank`), in a form that vectorises: NaN
/// (which fails the comparison) and -inf become -inf, +inf becomes `f32::MAX`.
fn ranked(l: f32) -> f32 {
    if l >= -f32::MAX {
        if l < f32::MAX { l } else { f32::MAX }
    } else {
        f32::NEG_INFINITY
    }
}

/// Sum of `xs` in f32 lanes (one block: short enough for f32), then in f64.
fn lane_sum(xs: &[f32]) -> f64 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().chain(tail).map(|&a| f64::from(a)).sum()
}

/// `Σ exp(logit - max)` over the ranked logits (`max` = [`max_ranked`]).
pub(super) fn sum_exp(logits: &[f32], max: f32) -> f64 {
    let mut scratch = [0.0f32; BLOCK];
    logits
        .chunks(BLOCK)
        .map(|block| {
            let weights = &mut scratch[..block.len()];
            for (w, &l) in weights.iter_mut().zip(block) {
                *w = exp_nonpositive(ranked(l) - max);
            }
            lane_sum(weights)
        })
        .sum()
}

/// Fills `weights` with `exp((logit - max) * inv_temperature)` for the ranked logits,
/// and `block_sums` with the sum of each [`BLOCK`] of them; returns the total.
pub(super) fn exp_blocks(
    logits: &[f32],
    max: f32,
    inv_temperature: f32,
    weights: &mut Vec<f32>,
    block_sums: &mut Vec<f64>,
) -> f64 {
    weights.clear();
    weights.resize(logits.len(), 0.0);
    block_sums.clear();
    for (src, dst) in logits.chunks(BLOCK).zip(weights.chunks_mut(BLOCK)) {
        for (w, &l) in dst.iter_mut().zip(src) {
            *w = exp_nonpositive((ranked(l) - max) * inv_temperature);
        }
        block_sums.push(lane_sum(dst));
    }
    block_sums.iter().sum()
}

/// The index where the running weight first exceeds `point`, scanning the block sums
/// and then one block; rounding past the end falls on the last non-zero weight.
pub(super) fn pick_blocks(weights: &[f32], block_sums: &[f64], point: f64) -> Option<usize> {
    let mut acc = 0.0f64;
    for (b, &sum) in block_sums.iter().enumerate() {
        if acc + sum > point {
            let start = b * BLOCK;
            let block = &weights[start..weights.len().min(start + BLOCK)];
            let mut last = None;
            for (i, &w) in block.iter().enumerate() {
                if w > 0.0 {
                    last = Some(start + i);
                    acc += f64::from(w);
                    if acc > point {
                        return last;
                    }
                }
            }
            return last;
        }
        acc += sum;
    }
    weights.iter().rposition(|&w| w > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_two_ulp() {
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, std {want}");
            x += 0.001_37;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
    }

    #[test]
    fn max_skips_nan_and_clamps_infinity() {
        assert_eq!(max_ranked(&[1.0, f32::NAN, 3.0, 2.0]), 3.0);
        assert_eq!(max_ranked(&[f32::NAN; 20]), f32::NEG_INFINITY);
        let mut long = vec![0.0f32; 1001];
        long[1000] = f32::INFINITY;
        assert_eq!(max_ranked(&long), f32::MAX);
    }

    #[test]
    fn blocks_sum_to_the_total_and_pick_walks_them() {
        let logits: Vec<f32> = (0..200).map(|i| -(i as f32) / 50.0).collect();
        let (mut w, mut sums) = (Vec::new(), Vec::new());
        let total = exp_blocks(&logits, 0.0, 1.0, &mut w, &mut sums);
        assert_eq!(sums.len(), 4);
        let direct: f64 = logits.iter().map(|&l| f64::from(l.exp())).sum();
        assert!((total - direct).abs() < 1e-4, "{total} vs {direct}");
        assert_eq!(pick_blocks(&w, &sums, 0.0), Some(0));
        assert_eq!(pick_blocks(&w, &sums, 0.5), Some(0));
        assert_eq!(pick_blocks(&w, &sums, 1.5), Some(1));
        assert_eq!(pick_blocks(&w, &sums, total * 2.0), Some(199));
        let masked = [f32::NAN, 0.0, f32::NEG_INFINITY];
        exp_blocks(&masked, 0.0, 1.0, &mut w, &mut sums);
        assert_eq!(w, [0.0, 1.0, 0.0]);
        assert_eq!(pick_blocks(&w, &sums, 5.0), Some(1));
    }
}
