//! Plain-Rust block dot products: any CPU, and the behaviour the SIMD
//! variants must reproduce.

use super::matmul::OutRows;
use super::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK, f16_to_f32};
use std::ops::Range;

/// Σ over blocks of `Q4_1 · Q8_1`: d_w·d_a·Σ q_w q_a + m_w · s_a.
fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += i32::from(wb.qs[j] & 0x0F) * i32::from(ab.qs[j]);
            isum += i32::from(wb.qs[j] >> 4) * i32::from(ab.qs[j + QK / 2]);
        }
        sum += f16_to_f32(wb.d) * ab.d * isum as f32 + f16_to_f32(wb.m) * ab.s;
    }
    sum
}

/// Σ over blocks of `Q4_0 · Q8_0`: d_w·d_a·Σ (q_w − 8) q_a.
fn dot_q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += (i32::from(wb.qs[j] & 0x0F) - 8) * i32::from(ab.qs[j]);
            isum += (i32::from(wb.qs[j] >> 4) - 8) * i32::from(ab.qs[j + QK / 2]);
        }
        sum += f16_to_f32(wb.d) * f16_to_f32(ab.d) * isum as f32;
    }
    sum
}

/// Σ over blocks of `Q8_0 · Q8_0`.
fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let isum: i32 = wb
            .qs
            .iter()
            .zip(&ab.qs)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum();
        sum += f16_to_f32(wb.d) * f16_to_f32(ab.d) * isum as f32;
    }
    sum
}

/// Output rows `rows` of `W (rows × kb blocks) · Aᵀ` for every activation row.
fn gemm<W, A>(
    w: &[W],
    kb: usize,
    rows: Range<usize>,
    a: &[A],
    n_act: usize,
    out: &OutRows,
    dot: fn(&[W], &[A]) -> f32,
) {
    for r in rows {
        let wr = &w[r * kb..(r + 1) * kb];
        for b in 0..n_act {
            // SAFETY: the caller hands each thread a disjoint range of rows.
            unsafe { out.set(b, r, dot(wr, &a[b * kb..(b + 1) * kb])) };
        }
    }
}

/// `Q4_1` weights × `Q8_1` activations for output rows `rows`.
pub fn gemm_q4_1(
    w: &[BlockQ4_1],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_1],
    n: usize,
    out: &OutRows,
) {
    gemm(w, kb, rows, a, n, out, dot_q4_1);
}

/// `Q4_0` weights × `Q8_0` activations for output rows `rows`.
pub fn gemm_q4_0(
    w: &[BlockQ4_0],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_0],
    n: usize,
    out: &OutRows,
) {
    gemm(w, kb, rows, a, n, out, dot_q4_0);
}

/// `Q8_0` weights × `Q8_0` activations for output rows `rows`.
pub fn gemm_q8_0(
    w: &[BlockQ8_0],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_0],
    n: usize,
    out: &OutRows,
) {
    gemm(w, kb, rows, a, n, out, dot_q8_0);
}
