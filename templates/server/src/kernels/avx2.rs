//! AVX2 block dot products (`_mm256_maddubs_epi16`: u8 × i8 pairs into i16).
//!
//! Each weight block is unpacked once into a register and dotted against up
//! to [`ACT_TILE`] activation rows, so a batched step reads every weight once.

use super::matmul::OutRows;
use super::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use crate::plan::{ACT_TILE, PREFETCH_ROWS, ROW_TILE};

/// Weight rows of one interleaved group of [`gemm_q4_1_groups`]: one `i32` lane each.
pub const GROUP: usize = 8;
use std::arch::x86_64::*;
use std::ops::Range;

/// Unpacks 16 bytes of nibbles into 32 u8 lanes: low nibbles, then high.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn unpack_nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes.
    let q = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// Σ of u8 × i8 products, as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_u8_i8(w: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
}

/// Horizontal sum of 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// f16 bits to f32 (F16C).
#[inline]
#[target_feature(enable = "f16c")]
fn h2f(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Asks for `data`'s cache lines ahead of use: weight rows stream from L3
/// (or DRAM), and the hardware prefetcher loses the stream at every chunk
/// boundary between threads.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch<T>(data: &[T]) {
    let bytes = size_of_val(data);
    let base = data.as_ptr().cast::<i8>();
    for off in (0..bytes).step_by(64) {
        // SAFETY: `off` is inside `data`; prefetching never faults.
        _mm_prefetch::<_MM_HINT_T0>(unsafe { base.add(off) });
    }
}

/// Loads 32 i8 quants.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load32(qs: &[i8; 32]) -> __m256i {
    // SAFETY: `qs` is 32 readable bytes.
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// The row/tile loop shared by every format: `$tile::<T>(args.., r, b0, t)`
/// returns the sums of weight row `r` with activation rows `b0..b0 + t`.
/// Batch 1 (decode) gets its own instance (`T = 1`) so the accumulators
/// live in registers; full tiles use `T = ACT_TILE`.
macro_rules! tiles {
    ($rows:expr, $n_act:expr, $out:expr, $w:expr, $kb:expr, $tile:ident($($arg:expr),*)) => {
        let n_rows = $w.len() / $kb;
        for r in $rows {
            if PREFETCH_ROWS > 0 {
                let ahead = (r + PREFETCH_ROWS).min(n_rows - 1);
                prefetch(&$w[ahead * $kb..(ahead + 1) * $kb]);
            }
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

/// The row-tile loop of the formats with a multi-row tile: [`ROW_TILE`] weight rows
/// at a time against full activation tiles with `$rows_tile(w, kb, a, r, b0)`, the
/// leftover activation rows of each group and the last rows (fewer than a tile)
/// through the one-row `$tile`. A row tile of 1 is the one-row loop alone.
macro_rules! row_tiles {
    ($rows:expr, $n_act:expr, $out:expr, $w:expr, $kb:expr, $a:expr, $rows_tile:ident, $tile:ident) => {
        let full = $n_act / ACT_TILE * ACT_TILE;
        let mut r = $rows.start;
        while ROW_TILE > 1 && ACT_TILE > 1 && full > 0 && r + ROW_TILE <= $rows.end {
            if PREFETCH_ROWS > 0 {
                // The group `PREFETCH_ROWS` rows ahead: every row is asked for once.
                let ahead = (r + ROW_TILE - 1 + PREFETCH_ROWS).min($w.len() / $kb - 1);
                let first = ahead.saturating_sub(ROW_TILE - 1);
                prefetch(&$w[first * $kb..(ahead + 1) * $kb]);
            }
            for b in (0..full).step_by(ACT_TILE) {
                let s = $rows_tile($w, $kb, $a, r, b);
                for (k, sk) in s.iter().enumerate() {
                    for (j, &v) in sk.iter().enumerate() {
                        // SAFETY: the caller hands each thread a disjoint range of rows.
                        unsafe { $out.set(b + j, r + k, v) };
                    }
                }
            }
            for row in r..r + ROW_TILE {
                for b in full..$n_act {
                    let v = $tile::<1>($w, $kb, $a, row, b, 1)[0];
                    // SAFETY: as above.
                    unsafe { $out.set(b, row, v) };
                }
            }
            r += ROW_TILE;
        }
        tiles!(r..$rows.end, $n_act, $out, $w, $kb, $tile($w, $kb, $a));
    };
}

/// One tile of [`gemm_q4_1`]: weight row `r` against activation rows `b0..b0 + t` (`t <= T`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4_1<const T: usize>(
    w: &[BlockQ4_1],
    kb: usize,
    a: &[BlockQ8_1],
    r: usize,
    b0: usize,
    t: usize,
) -> [f32; T] {
    // One accumulator, blocks in order: the same summation order as
    // llama.cpp's AVX2 `vec_dot_q4_1_q8_1`, so near-ties break the same way
    // as in the accuracy goldens (two chains measured 0.5% lower agreement).
    let mut acc = [_mm256_setzero_ps(); T];
    // Lanes [d·da, m·sa, ..]: lane 1 sums the minimum terms.
    let mut mins = [_mm_setzero_ps(); T];
    for (i, wb) in w[r * kb..(r + 1) * kb].iter().enumerate() {
        // SAFETY: AVX2 is enabled on this function; the block is in bounds.
        let wv = unsafe { unpack_nibbles(&wb.qs) };
        // [d, m] in one conversion.
        let bits = (u32::from(wb.d) | (u32::from(wb.m) << 16)) as i32;
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        for j in 0..t {
            let ab = &a[(b0 + j) * kb + i];
            // SAFETY: as above.
            let p = dot_u8_i8(wv, unsafe { load32(&ab.qs) });
            let prod = _mm_mul_ps(dm, _mm_set_ps(0.0, 0.0, ab.s, ab.d));
            mins[j] = _mm_add_ps(mins[j], prod);
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcastss_ps(prod), acc[j]);
        }
    }
    std::array::from_fn(|j| hsum(acc[j]) + _mm_cvtss_f32(_mm_movehdup_ps(mins[j])))
}

/// Weight rows `r..r + ROW_TILE` against activation rows `b0..b0 + ACT_TILE`: per
/// (row, activation) pair exactly the operations of [`tile_q4_1`], in the same
/// order (so the same sums, bit for bit), but each activation block is loaded
/// once for all the weight rows and its scales once for all of them. Batched steps
/// are compute-bound, and this divides the loads and scale set-up per product by
/// the row tile, at the price of `ROW_TILE × ACT_TILE` accumulator registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q4_1(
    w: &[BlockQ4_1],
    kb: usize,
    a: &[BlockQ8_1],
    r: usize,
    b0: usize,
) -> [[f32; ACT_TILE]; ROW_TILE] {
    let mut acc = [[_mm256_setzero_ps(); ACT_TILE]; ROW_TILE];
    let mut mins = [[0.0f32; ACT_TILE]; ROW_TILE];
    let rows = &w[r * kb..(r + ROW_TILE) * kb];
    for i in 0..kb {
        let mut wv = [_mm256_setzero_si256(); ROW_TILE];
        let mut dm = [(0.0f32, 0.0f32); ROW_TILE];
        for k in 0..ROW_TILE {
            let wb = &rows[k * kb + i];
            // SAFETY: AVX2 is enabled on this function; the block is in bounds.
            wv[k] = unsafe { unpack_nibbles(&wb.qs) };
            dm[k] = (h2f(wb.d), h2f(wb.m));
        }
        for j in 0..ACT_TILE {
            let ab = &a[(b0 + j) * kb + i];
            // SAFETY: as above.
            let av = unsafe { load32(&ab.qs) };
            for k in 0..ROW_TILE {
                let p = dot_u8_i8(wv[k], av);
                mins[k][j] += dm[k].1 * ab.s;
                let scale = _mm256_set1_ps(dm[k].0 * ab.d);
                acc[k][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k][j]);
            }
        }
    }
    std::array::from_fn(|k| std::array::from_fn(|j| hsum(acc[k][j]) + mins[k][j]))
}

/// `Q4_1` weights × `Q8_1` activations for output rows `rows`: groups of
/// [`ROW_TILE`] weight rows against full activation tiles, the rest one row at a time.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; slices hold `kb` blocks per row.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q4_1(
    w: &[BlockQ4_1],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_1],
    n_act: usize,
    out: &OutRows,
) {
    row_tiles!(rows, n_act, out, w, kb, a, rows_q4_1, tile_q4_1);
}

/// One tile of [`gemm_q4_0`]: weight row `r` against activation rows `b0..b0 + t` (`t <= T`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4_0<const T: usize>(
    w: &[BlockQ4_0],
    kb: usize,
    a: &[BlockQ8_0],
    r: usize,
    b0: usize,
    t: usize,
) -> [f32; T] {
    let eight = _mm256_set1_epi8(8);
    let mut acc = [_mm256_setzero_ps(); T];
    for (i, wb) in w[r * kb..(r + 1) * kb].iter().enumerate() {
        // SAFETY: AVX2 is enabled on this function; the block is in bounds.
        let wv = unsafe { unpack_nibbles(&wb.qs) };
        let dw = h2f(wb.d);
        for j in 0..t {
            let ab = &a[(b0 + j) * kb + i];
            // SAFETY: as above.
            let av = unsafe { load32(&ab.qs) };
            // Σ (q − 8)·a = Σ q·a − Σ 8·a, both with unsigned first operands.
            let p = _mm256_sub_epi32(dot_u8_i8(wv, av), dot_u8_i8(eight, av));
            let scale = _mm256_set1_ps(dw * h2f(ab.d));
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[j]);
        }
    }
    std::array::from_fn(|j| hsum(acc[j]))
}

/// `Q4_0` weights × `Q8_0` activations for output rows `rows`.
///
/// # Safety
/// As [`gemm_q4_1`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q4_0(
    w: &[BlockQ4_0],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_0],
    n_act: usize,
    out: &OutRows,
) {
    tiles!(rows, n_act, out, w, kb, tile_q4_0(w, kb, a));
}

/// One tile of [`gemm_q8_0`]: weight row `r` against activation rows `b0..b0 + t` (`t <= T`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q8_0<const T: usize>(
    w: &[BlockQ8_0],
    kb: usize,
    a: &[BlockQ8_0],
    r: usize,
    b0: usize,
    t: usize,
) -> [f32; T] {
    // One accumulator, blocks in order, as llama.cpp (see `tile_q4_1`).
    let mut acc = [_mm256_setzero_ps(); T];
    for (i, wb) in w[r * kb..(r + 1) * kb].iter().enumerate() {
        // SAFETY: AVX2 is enabled on this function; the block is in bounds.
        let wv = unsafe { load32(&wb.qs) };
        // maddubs wants an unsigned operand: |w| · (a with w's sign).
        let wabs = _mm256_sign_epi8(wv, wv);
        let dw = h2f(wb.d);
        for j in 0..t {
            let ab = &a[(b0 + j) * kb + i];
            // SAFETY: as above.
            let av = _mm256_sign_epi8(unsafe { load32(&ab.qs) }, wv);
            let scale = _mm256_set1_ps(dw * h2f(ab.d));
            let p = dot_u8_i8(wabs, av);
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[j]);
        }
    }
    std::array::from_fn(|j| hsum(acc[j]))
}

/// Weight rows `r..r + ROW_TILE` against activation rows `b0..b0 + ACT_TILE`: per
/// pair exactly the operations of [`tile_q8_0`], in the same order (the same sums,
/// bit for bit), each activation block loaded and its scale converted once for all
/// the weight rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q8_0(
    w: &[BlockQ8_0],
    kb: usize,
    a: &[BlockQ8_0],
    r: usize,
    b0: usize,
) -> [[f32; ACT_TILE]; ROW_TILE] {
    let mut acc = [[_mm256_setzero_ps(); ACT_TILE]; ROW_TILE];
    let rows = &w[r * kb..(r + ROW_TILE) * kb];
    for i in 0..kb {
        let mut wv = [_mm256_setzero_si256(); ROW_TILE];
        let mut wabs = [_mm256_setzero_si256(); ROW_TILE];
        let mut dw = [0.0f32; ROW_TILE];
        for k in 0..ROW_TILE {
            let wb = &rows[k * kb + i];
            // SAFETY: AVX2 is enabled on this function; the block is in bounds.
            wv[k] = unsafe { load32(&wb.qs) };
            wabs[k] = _mm256_sign_epi8(wv[k], wv[k]);
            dw[k] = h2f(wb.d);
        }
        for j in 0..ACT_TILE {
            let ab = &a[(b0 + j) * kb + i];
            // SAFETY: as above.
            let aq = unsafe { load32(&ab.qs) };
            let da = h2f(ab.d);
            for k in 0..ROW_TILE {
                let av = _mm256_sign_epi8(aq, wv[k]);
                let scale = _mm256_set1_ps(dw[k] * da);
                let p = dot_u8_i8(wabs[k], av);
                acc[k][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k][j]);
            }
        }
    }
    std::array::from_fn(|k| std::array::from_fn(|j| hsum(acc[k][j])))
}

/// `Q8_0` weights × `Q8_0` activations for output rows `rows`: groups of
/// [`ROW_TILE`] weight rows against full activation tiles, the rest one row at a time.
///
/// # Safety
/// As [`gemm_q4_1`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q8_0(
    w: &[BlockQ8_0],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_0],
    n_act: usize,
    out: &OutRows,
) {
    row_tiles!(rows, n_act, out, w, kb, a, rows_q8_0, tile_q8_0);
}

/// A block of [`GROUP`] `Q4_1` rows, interleaved: register `g` holds values
/// `4g..4g + 4` of every row, row `k` in 32-bit lane `k`, unpacked to u8.
/// The layout llama.cpp's repacked `gemm_q4_0_8x8` stores at load time, built
/// here per block from the file's layout (a 4 × 4 dword transpose per 128-bit
/// half) and reused for every activation row of the pass.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn interleave_q4_1(w: &[BlockQ4_1], kb: usize, r: usize, i: usize) -> [__m256i; 8] {
    let load = |k: usize| {
        let lo = &w[(r + k) * kb + i].qs;
        let hi = &w[(r + k + 4) * kb + i].qs;
        // SAFETY: both are 16 readable bytes.
        unsafe {
            let lo = _mm_loadu_si128(lo.as_ptr().cast());
            _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(lo),
                _mm_loadu_si128(hi.as_ptr().cast()),
            )
        }
    };
    // y[k]: row k's 16 bytes in the low half, row k + 4's in the high half.
    let y = [load(0), load(1), load(2), load(3)];
    let t0 = _mm256_unpacklo_epi32(y[0], y[1]);
    let t1 = _mm256_unpackhi_epi32(y[0], y[1]);
    let t2 = _mm256_unpacklo_epi32(y[2], y[3]);
    let t3 = _mm256_unpackhi_epi32(y[2], y[3]);
    // p[c]: dword c (bytes 4c..4c + 4) of rows 0..4 | rows 4..8.
    let p = [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ];
    let mask = _mm256_set1_epi8(0x0F);
    // Low nibbles are values 0..16, high nibbles values 16..32.
    std::array::from_fn(|g| {
        if g < 4 {
            _mm256_and_si256(p[g], mask)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(p[g - 4]), mask)
        }
    })
}

/// The scales `d` and minimums `m` of block `i` of rows `r..r + GROUP`, as 8 f32
/// lanes each: the 8 blocks' leading `[d, m]` pairs are loaded as 32-bit words and
/// split by one byte shuffle and one lane permute (16 separate f16 inserts cost
/// more than the batch-1 product's arithmetic).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scales_q4_1(w: &[BlockQ4_1], kb: usize, r: usize, i: usize) -> (__m256, __m256) {
    let dm = |k: usize| {
        let b = &w[(r + k) * kb + i];
        (u32::from(b.d) | (u32::from(b.m) << 16)) as i32
    };
    let pairs = _mm256_setr_epi32(dm(0), dm(1), dm(2), dm(3), dm(4), dm(5), dm(6), dm(7));
    // Per 128-bit half: the 4 `d`s, then the 4 `m`s.
    let split = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7,
        10, 11, 14, 15,
    );
    // Quadwords [d0..4, m0..4, d4..8, m4..8] → [d0..8, m0..8].
    let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(pairs, split));
    (
        _mm256_cvtph_ps(_mm256_castsi256_si128(v)),
        _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(v)),
    )
}

/// Weight rows `r..r + GROUP` against activation rows `b0..b0 + t` (`t <= A`),
/// prefetching `ahead` (the next group's blocks) a group's worth per block:
/// lane `k` of result `j` is row `r + k` · activation `b0 + j`. Per block and
/// activation: eight `maddubs` against a broadcast 4-byte activation group give
/// every row's 32 products in i16 pairs (at most 8 · 2 · 15 · 127 < 2¹⁵: no
/// saturation), one `madd` the exact block sums, then `acc += sum · (d·da)` and,
/// apart as llama.cpp keeps them, `mins += m · s`, for all 8 rows at once; the
/// result is `acc + mins`. The order per output is independent of `A`, `t` and
/// the batch, so a batched product equals the single-row one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_q4_1<const A: usize>(
    w: &[BlockQ4_1],
    kb: usize,
    a: &[BlockQ8_1],
    r: usize,
    b0: usize,
    t: usize,
    ahead: &[BlockQ4_1],
) -> [__m256; A] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); A];
    let mut mins = [_mm256_setzero_ps(); A];
    for i in 0..kb {
        if let Some(next) = ahead.get(i * GROUP..((i + 1) * GROUP).min(ahead.len())) {
            prefetch(next);
        }
        let wv = interleave_q4_1(w, kb, r, i);
        let (d, m) = scales_q4_1(w, kb, r, i);
        for (j, (acc, mins)) in acc.iter_mut().zip(&mut mins).enumerate().take(t) {
            let ab = &a[(b0 + j) * kb + i];
            let mut sum = _mm256_setzero_si256();
            for (g, &wg) in wv.iter().enumerate() {
                let group = i32::from_le_bytes(std::array::from_fn(|c| ab.qs[4 * g + c] as u8));
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wg, _mm256_set1_epi32(group)));
            }
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum, ones));
            *acc = _mm256_fmadd_ps(p, _mm256_mul_ps(d, _mm256_set1_ps(ab.d)), *acc);
            *mins = _mm256_add_ps(*mins, _mm256_mul_ps(m, _mm256_set1_ps(ab.s)));
        }
    }
    std::array::from_fn(|j| _mm256_add_ps(acc[j], mins[j]))
}

/// `Q4_1` weights × `Q8_1` activations for output rows `rows`, [`GROUP`] rows at a
/// time through [`group_q4_1`] in passes of up to `A` activation rows; the last rows
/// of a range (fewer than a group) through the one-row [`tile_q4_1`].
///
/// # Safety
/// As [`gemm_q4_1`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q4_1_groups<const A: usize>(
    w: &[BlockQ4_1],
    kb: usize,
    rows: Range<usize>,
    a: &[BlockQ8_1],
    n_act: usize,
    out: &OutRows,
) {
    let n_rows = w.len() / kb;
    let mut r = rows.start;
    while r + GROUP <= rows.end {
        // The next group's rows (contiguous), prefetched a slice per block during the
        // first pass: a group reads 8 short rows at once, which the hardware
        // prefetcher does not follow, and a burst of the whole group at once stalls.
        let ahead = if PREFETCH_ROWS > 0 {
            &w[(r + GROUP) * kb..(r + 2 * GROUP).min(n_rows) * kb]
        } else {
            &[]
        };
        let mut b0 = 0;
        while b0 < n_act {
            let t = A.min(n_act - b0);
            let mut lanes = [[0.0f32; GROUP]; A];
            if t == 1 {
                // Batch-1 decode: its own instance, the accumulator in a register.
                let s = group_q4_1::<1>(w, kb, a, r, b0, 1, ahead);
                // SAFETY: 8 writable f32s.
                unsafe { _mm256_storeu_ps(lanes[0].as_mut_ptr(), s[0]) };
            } else {
                let s = group_q4_1::<A>(w, kb, a, r, b0, t, if b0 == 0 { ahead } else { &[] });
                for (l, v) in lanes.iter_mut().zip(s).take(t) {
                    // SAFETY: 8 writable f32s.
                    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), v) };
                }
            }
            for (j, l) in lanes.iter().enumerate().take(t) {
                for (k, &v) in l.iter().enumerate() {
                    // SAFETY: the caller hands each thread a disjoint range of rows.
                    unsafe { out.set(b0 + j, r + k, v) };
                }
            }
            b0 += t;
        }
        r += GROUP;
    }
    tiles!(r..rows.end, n_act, out, w, kb, tile_q4_1(w, kb, a));
}
