//! AVX-512 VNNI block dot products (`_mm512_dpbusd_epi32`: u8 × i8 quads
//! summed straight into i32), two blocks per 512-bit register.
//!
//! Like the AVX2 path, each pair of weight blocks is unpacked once and dotted
//! against up to [`ACT_TILE`] activation rows.

use super::matmul::OutRows;
use super::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use crate::plan::ACT_TILE;
use std::arch::x86_64::*;
use std::ops::Range;

/// Unpacks two blocks' nibbles: block 0 low, block 0 high, block 1 low, block 1 high.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack2(q0: &[u8; 16], q1: &[u8; 16]) -> __m512i {
    // SAFETY: both arrays are 16 readable bytes.
    let (a, b) = unsafe {
        (
            _mm_loadu_si128(q0.as_ptr().cast()),
            _mm_loadu_si128(q1.as_ptr().cast()),
        )
    };
    let both = _mm256_set_m128i(b, a);
    let mask = _mm256_set1_epi8(0x0F);
    let lo = _mm256_and_si256(both, mask); // lo0 | lo1
    let hi = _mm256_and_si256(_mm256_srli_epi16(both, 4), mask); // hi0 | hi1
    let blk0 = _mm256_permute2x128_si256(lo, hi, 0x20); // lo0 | hi0
    let blk1 = _mm256_permute2x128_si256(lo, hi, 0x31); // lo1 | hi1
    _mm512_inserti64x4(_mm512_castsi256_si512(blk0), blk1, 1)
}

/// Loads two 32-byte quant arrays into one register.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load2(q0: &[i8; 32], q1: &[i8; 32]) -> __m512i {
    // SAFETY: both arrays are 32 readable bytes.
    let (a, b) = unsafe {
        (
            _mm256_loadu_si256(q0.as_ptr().cast()),
            _mm256_loadu_si256(q1.as_ptr().cast()),
        )
    };
    _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1)
}

/// Per-half scale: lanes 0..8 get `s0`, lanes 8..16 get `s1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales(s0: f32, s1: f32) -> __m512 {
    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1))
}

/// f16 bits to f32 (F16C).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn h2f(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The row/tile loop shared by every format: `$tile::<T>(args.., r, b0, t)`
/// returns the sums of weight row `r` with activation rows `b0..b0 + t`.
/// Batch 1 (decode) gets its own instance (`T = 1`) so the accumulators
/// live in registers; full tiles use `T = ACT_TILE`.
macro_rules! tiles {
    ($rows:expr, $n_act:expr, $out:expr, $tile:ident($($arg:expr),*)) => {
        for r in $rows {
            let mut b = 0;
            while b < $n_act {
                let t = ACT_TILE.min($n_act - b);
                if t == 1 {
                    let s = $tile::<1>($($arg,)* r, b, 1);
                    // SAFETY: the caller hands each thread a disjoint range of rows.
                    unsafe { $out.set(b, r, s[0]) };
                } else {
                    let s = $tile::<ACT_TILE>($($arg,)* r, b, t);
                    for (j, &v) in s.iter().enumerate().take(t) {
                        // SAFETY: as above.
                        unsafe { $out.set(b + j, r, v) };
                    }
                }
                b += t;
            }
        }
    };
}

/// Index of the second block of the pair starting at `i`, and the scale
/// factor applied to it (0 when `i` is the odd last block, so it counts once).
#[inline]
fn partner(i: usize, kb: usize) -> (usize, f32) {
    if i + 1 < kb { (i + 1, 1.0) } else { (i, 0.0) }
}

/// `Q4_1` weights × `Q8_1` activations for output rows `rows`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; slices hold
/// One tile of [`gemm_q4_1`]: weight row `r` against activation rows `b0..b0 + t` (`t <= T`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q4_1<const T: usize>(
    w: &[BlockQ4_1],
    kb: usize,
    a: &[BlockQ8_1],
    r: usize,
    b0: usize,
    t: usize,
) -> [f32; T] {
    let wr = &w[r * kb..(r + 1) * kb];
    let mut acc = [_mm512_setzero_ps(); T];
    // Lanes [d0·da0, m0·sa0, d1·da1, m1·sa1], summed: lanes 1 and 3 are the minimum terms.
    let mut mins = [_mm_setzero_ps(); T];
    // Spreads lane 0 over the low 8 lanes and lane 2 over the high 8.
    let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    for i in (0..kb).step_by(2) {
        let (i1, k1) = partner(i, kb);
        // SAFETY: the features are enabled on this function; blocks are in bounds.
        let wv = unsafe { unpack2(&wr[i].qs, &wr[i1].qs) };
        // [d0, m0, d1, m1] in one conversion; the odd last block counts once.
        let dm = _mm_mul_ps(
            _mm_cvtph_ps(_mm_set_epi32(0, 0, dm_bits(&wr[i1]), dm_bits(&wr[i]))),
            _mm_set_ps(k1, k1, 1.0, 1.0),
        );
        for j in 0..t {
            let row = &a[(b0 + j) * kb..(b0 + j + 1) * kb];
            // SAFETY: as above.
            let av = unsafe { load2(&row[i].qs, &row[i1].qs) };
            let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, av);
            let prod = _mm_mul_ps(dm, _mm_set_ps(row[i1].s, row[i1].d, row[i].s, row[i].d));
            mins[j] = _mm_add_ps(mins[j], prod);
            let s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(prod));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[j]);
        }
    }
    std::array::from_fn(|j| {
        let m = _mm_add_ps(mins[j], _mm_movehl_ps(mins[j], mins[j]));
        _mm512_reduce_add_ps(acc[j]) + _mm_cvtss_f32(_mm_movehdup_ps(m))
    })
}

/// A `Q4_1` block's scale and minimum as one 32-bit lane of f16 bits (`d` low).
#[inline]
fn dm_bits(b: &BlockQ4_1) -> i32 {
    (u32::from(b.d) | (u32::from(b.m) << 16)) as i32
}

/// `kb` blocks per row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q4_1(
    w: &[BlockQ4_1],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_1],
    n_act: usize,
    out: &OutRows,
) {
    tiles!(rows, n_act, out, tile_q4_1(w, kb, a));
}

/// One tile of [`gemm_q4_0`]: weight row `r` against activation rows `b0..b0 + t` (`t <= T`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q4_0<const T: usize>(
    w: &[BlockQ4_0],
    kb: usize,
    a: &[BlockQ8_0],
    r: usize,
    b0: usize,
    t: usize,
) -> [f32; T] {
    let eight = _mm512_set1_epi8(8);
    let wr = &w[r * kb..(r + 1) * kb];
    let mut acc = [_mm512_setzero_ps(); T];
    for i in (0..kb).step_by(2) {
        let (i1, k1) = partner(i, kb);
        // SAFETY: the features are enabled on this function; blocks are in bounds.
        let wv = unsafe { unpack2(&wr[i].qs, &wr[i1].qs) };
        let (d0, d1) = (h2f(wr[i].d), h2f(wr[i1].d) * k1);
        for j in 0..t {
            let row = &a[(b0 + j) * kb..(b0 + j + 1) * kb];
            // SAFETY: as above.
            let av = unsafe { load2(&row[i].qs, &row[i1].qs) };
            // Σ (q − 8)·a = Σ q·a − Σ 8·a.
            let p = _mm512_sub_epi32(
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, av),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, av),
            );
            let s = scales(d0 * h2f(row[i].d), d1 * h2f(row[i1].d));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[j]);
        }
    }
    std::array::from_fn(|j| _mm512_reduce_add_ps(acc[j]))
}

/// `Q4_0` weights × `Q8_0` activations for output rows `rows`.
///
/// # Safety
/// As [`gemm_q4_1`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q4_0(
    w: &[BlockQ4_0],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_0],
    n_act: usize,
    out: &OutRows,
) {
    tiles!(rows, n_act, out, tile_q4_0(w, kb, a));
}

/// One tile of [`gemm_q8_0`]: weight row `r` against activation rows `b0..b0 + t` (`t <= T`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q8_0<const T: usize>(
    w: &[BlockQ8_0],
    kb: usize,
    a: &[BlockQ8_0],
    r: usize,
    b0: usize,
    t: usize,
) -> [f32; T] {
    let wr = &w[r * kb..(r + 1) * kb];
    let mut acc = [_mm512_setzero_ps(); T];
    for i in (0..kb).step_by(2) {
        let (i1, k1) = partner(i, kb);
        // SAFETY: the features are enabled on this function; blocks are in bounds.
        let wv = unsafe { load2(&wr[i].qs, &wr[i1].qs) };
        // dpbusd wants an unsigned operand: |w| · (a negated where w < 0).
        let wabs = _mm512_abs_epi8(wv);
        let neg = _mm512_movepi8_mask(wv);
        let (d0, d1) = (h2f(wr[i].d), h2f(wr[i1].d) * k1);
        for j in 0..t {
            let row = &a[(b0 + j) * kb..(b0 + j + 1) * kb];
            // SAFETY: as above.
            let av = unsafe { load2(&row[i].qs, &row[i1].qs) };
            let av = _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av);
            let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wabs, av);
            let s = scales(d0 * h2f(row[i].d), d1 * h2f(row[i1].d));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[j]);
        }
    }
    std::array::from_fn(|j| _mm512_reduce_add_ps(acc[j]))
}

/// `Q8_0` weights × `Q8_0` activations for output rows `rows`.
///
/// # Safety
/// As [`gemm_q4_1`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q8_0(
    w: &[BlockQ8_0],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_0],
    n_act: usize,
    out: &OutRows,
) {
    tiles!(rows, n_act, out, tile_q8_0(w, kb, a));
}
