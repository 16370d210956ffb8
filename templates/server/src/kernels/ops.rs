//! Element-wise f32 operations of the forward pass: plain loops over rows
//! whose sizes are plan constants, written so the compiler vectorises them
//! (independent accumulator lanes instead of one serial sum).

/// Accumulator lanes for reductions (one AVX register of f32).
const LANES: usize = 8;

/// Dot product of two equal-length f32 slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `acc += w · x`.
#[inline]
pub fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += w * v;
    }
}

/// RMSNorm of each row of `x` into `out`: `out = x / sqrt(mean(x²) + eps) · weight`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    for (o, xr) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let ms = dot(xr, xr) / n as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// Rotary embedding, ggml's NORM layout: each head rotates adjacent pairs
/// `(x[2i], x[2i+1])` by angle `pos · theta^(-2i/head_dim)`. `cos_sin`
/// holds `(cos, sin)` per pair for this token's position.
pub fn rope(x: &mut [f32], head_dim: usize, cos_sin: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cos_sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

/// The `(cos, sin)` table of [`rope`] for one position.
pub fn rope_table(pos: usize, head_dim: usize, theta: f32, out: &mut [(f32, f32)]) {
    for (i, cs) in out.iter_mut().enumerate().take(head_dim / 2) {
        let freq = f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64);
        let angle = pos as f64 * freq;
        *cs = (angle.cos() as f32, angle.sin() as f32);
    }
}

/// SwiGLU: `gate = silu(gate) · up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_serial_sum_with_tail() {
        let a: Vec<f32> = (0..67).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..67).map(|i| 1.0 - i as f32 * 0.01).collect();
        let want: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-3);
    }

    #[test]
    fn rmsnorm_gives_unit_rms_with_unit_weight() {
        let x = [3.0, -4.0, 0.0, 5.0];
        let mut out = [0.0; 4];
        rmsnorm(&mut out, &x, &[1.0; 4], 0.0);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_adjacent_pairs_and_keeps_norm() {
        let mut table = [(0.0, 0.0); 2];
        rope_table(3, 4, 10000.0, &mut table);
        let mut x = [1.0, 0.0, 0.0, 1.0];
        rope(&mut x, 4, &table);
        // Pair 0 turns by 3 rad; pair 1 by 3 / 100 rad.
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
        assert!((x[2] + 0.03f32.sin()).abs() < 1e-6 && (x[3] - 0.03f32.cos()).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = [1.0, 3.0, 2.0, -50.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[2] && x[2] > x[0] && x[3] < 1e-20);
    }

    #[test]
    fn silu_mul_matches_definition() {
        let mut g = [0.0, 1.0, -2.0];
        silu_mul(&mut g, &[2.0, 2.0, 2.0]);
        let silu = |v: f32| v / (1.0 + (-v).exp());
        assert_eq!(g, [0.0, silu(1.0) * 2.0, silu(-2.0) * 2.0]);
    }
}
