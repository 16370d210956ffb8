//! GGML block formats: the weight blocks stored in GGUF files and the 8-bit
//! activation blocks the integer dot products consume.
//!
//! Every block covers [`QK`] consecutive values of one row. Layouts follow
//! ggml (`ggml-common.h`) byte for byte, so a GGUF tensor is read in place.
//! The reference (scalar) quantize and dequantize routines here are what the
//! SIMD kernels are tested against.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values per quantized block (all formats used here).
pub const QK: usize = 32;

/// `Q4_0`: 32 signed 4-bit values with one scale; value = d · (q − 8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Nibbles: value `j` in the low nibble of `qs[j]`, value `j + 16` in the high one.
    pub qs: [u8; QK / 2],
}

/// `Q4_1`: 32 unsigned 4-bit values with scale and minimum; value = d · q + m.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Minimum (f16 bits).
    pub m: u16,
    /// Nibbles, laid out as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}

/// `Q8_0`: 32 signed 8-bit values with one scale; value = d · q.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// `Q8_1`: `Q8_0` plus `s = d · Σ q`, which the `Q4_1` dot product needs for
/// its minimum term. Only used for activations: the scales are held as f32
/// (no conversion in the hot loop) but rounded to f16 values, as ggml stores them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f32,
    /// Scale times the sum of the quantized values.
    pub s: f32,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// f16 bits to f32.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Rounds half to even for |x| < 2^22 (quants are within ±127): adding and
/// subtracting 1.5·2^23 leaves the FPU's round-to-nearest-even result.
/// `f32::round_ties_even` would be a libm call per value on baseline x86-64.
#[inline]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// `x` rounded to the nearest f16 value.
#[inline]
fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Scale and inverse scale mapping a block's largest magnitude to 127.
/// As ggml's SIMD quantizers: the inverse is `127 / amax` (not `1 / d`) and
/// quants round half to even, so our 8-bit activations equal llama.cpp's.
#[inline]
fn q8_scale(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    (amax / 127.0, id)
}

/// Quantizes one row to `Q8_0` blocks (`x.len() == out.len() * QK`).
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d, id) = q8_scale(xb);
        ob.d = f16::from_f32(d).to_bits();
        for (q, v) in ob.qs.iter_mut().zip(xb) {
            *q = round_even(v * id) as i8;
        }
    }
}

/// Quantizes one row to `Q8_1` blocks (`x.len() == out.len() * QK`).
pub fn quantize_row_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d, id) = q8_scale(xb);
        let mut sum = 0i32;
        for (q, v) in ob.qs.iter_mut().zip(xb) {
            *q = round_even(v * id) as i8;
            sum += i32::from(*q);
        }
        // ggml stores both as f16; rounding them the same way keeps our
        // products bit-compatible with llama.cpp's (the accuracy reference).
        ob.d = round_f16(d);
        ob.s = round_f16(d * sum as f32);
    }
}

/// Quantizes one row to `Q4_0` blocks (for tests and tools; weights come from the file).
pub fn quantize_row_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        // ggml maps the signed extreme to -8 so both signs use the full range.
        let max = xb
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob.d = f16::from_f32(d).to_bits();
        for j in 0..QK / 2 {
            let lo = ((xb[j] * id + 8.5) as i32).clamp(0, 15) as u8;
            let hi = ((xb[j + QK / 2] * id + 8.5) as i32).clamp(0, 15) as u8;
            ob.qs[j] = lo | (hi << 4);
        }
    }
}

/// Quantizes one row to `Q4_1` blocks (for tests and tools).
pub fn quantize_row_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let min = xb.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let max = xb.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob.d = f16::from_f32(d).to_bits();
        ob.m = f16::from_f32(min).to_bits();
        for j in 0..QK / 2 {
            let lo = (((xb[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            let hi = (((xb[j + QK / 2] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            ob.qs[j] = lo | (hi << 4);
        }
    }
}

/// Expands `Q4_0` blocks to f32 values.
pub fn dequantize_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for j in 0..QK / 2 {
            o[j] = d * (f32::from(b.qs[j] & 0x0F) - 8.0);
            o[j + QK / 2] = d * (f32::from(b.qs[j] >> 4) - 8.0);
        }
    }
}

/// Expands `Q4_1` blocks to f32 values.
pub fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for j in 0..QK / 2 {
            o[j] = d * f32::from(b.qs[j] & 0x0F) + m;
            o[j + QK / 2] = d * f32::from(b.qs[j] >> 4) + m;
        }
    }
}

/// Expands `Q8_0` blocks to f32 values.
pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (v, q) in o.iter_mut().zip(b.qs) {
            *v = d * f32::from(q);
        }
    }
}

/// Expands `Q8_1` blocks to f32 values.
pub fn dequantize_q8_1(blocks: &[BlockQ8_1], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        for (v, q) in o.iter_mut().zip(b.qs) {
            *v = b.d * f32::from(q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect()
    }

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!(size_of::<BlockQ4_0>(), 18);
        assert_eq!(size_of::<BlockQ4_1>(), 20);
        assert_eq!(size_of::<BlockQ8_0>(), 34);
    }

    #[test]
    fn q8_1_sum_is_scale_times_sum_of_quants() {
        let x = ramp(64);
        let mut q = [BlockQ8_1::zeroed(); 2];
        quantize_row_q8_1(&x, &mut q);
        for b in q {
            let s: i32 = b.qs.iter().map(|&v| i32::from(v)).sum();
            // Both rounded to f16 (11 significant bits), as ggml stores them.
            let exact = b.d * s as f32;
            assert!(
                (b.s - exact).abs() <= exact.abs() / 2048.0 + 1e-6,
                "{} vs {exact}",
                b.s
            );
        }
    }

    #[test]
    fn round_trips_stay_within_half_a_step() {
        let x = ramp(64);
        let mut back = vec![0.0; 64];
        let mut q8 = [BlockQ8_0::zeroed(); 2];
        quantize_row_q8_0(&x, &mut q8);
        dequantize_q8_0(&q8, &mut back);
        let step = 50.0 / 7.0 / 127.0;
        assert!(
            x.iter()
                .zip(&back)
                .all(|(a, b)| (a - b).abs() <= step * 0.51)
        );
        let mut q4 = [BlockQ4_1::zeroed(); 2];
        quantize_row_q4_1(&x, &mut q4);
        dequantize_q4_1(&q4, &mut back);
        let step = 100.0 / 7.0 / 15.0;
        assert!(
            x.iter()
                .zip(&back)
                .all(|(a, b)| (a - b).abs() <= step * 0.51)
        );
        let mut q40 = [BlockQ4_0::zeroed(); 2];
        quantize_row_q4_0(&x, &mut q40);
        dequantize_q4_0(&q40, &mut back);
        // ggml's Q4_0 maps the signed extreme to -8, so the opposite extreme
        // may clamp at +7: up to one full step there.
        let step = 50.0 / 7.0 / 8.0;
        assert!(
            x.iter()
                .zip(&back)
                .all(|(a, b)| (a - b).abs() <= step * 1.01)
        );
    }
}
