//! Every kernel variant the CPU supports against a straightforward f64
//! reference (dequantize, then dot), on random data, for every weight format
//! and odd batch sizes and block counts.

use super::quant::*;
use super::*;
use bytemuck::Zeroable;
use half::{bf16, f16};

/// SplitMix64: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Stored weights of one format, built from random values.
enum Owned {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

impl Owned {
    fn quantize(kind: usize, x: &[f32]) -> Self {
        let nb = x.len() / QK;
        match kind {
            0 => Self::F32(x.to_vec()),
            1 => Self::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
            2 => Self::BF16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
            3 => {
                let mut b = vec![BlockQ4_0::zeroed(); nb];
                quantize_row_q4_0(x, &mut b);
                Self::Q4_0(b)
            }
            4 => {
                let mut b = vec![BlockQ4_1::zeroed(); nb];
                quantize_row_q4_1(x, &mut b);
                Self::Q4_1(b)
            }
            _ => {
                let mut b = vec![BlockQ8_0::zeroed(); nb];
                quantize_row_q8_0(x, &mut b);
                Self::Q8_0(b)
            }
        }
    }

    fn data(&self) -> WeightData<'_> {
        match self {
            Self::F32(d) => WeightData::F32(d),
            Self::F16(d) => WeightData::F16(d),
            Self::BF16(d) => WeightData::BF16(d),
            Self::Q4_0(d) => WeightData::Q4_0(d),
            Self::Q4_1(d) => WeightData::Q4_1(d),
            Self::Q8_0(d) => WeightData::Q8_0(d),
        }
    }
}

/// The activations exactly as the kernels see them, expanded to f64.
fn act_values(x: &[f32], format: ActFormat) -> Vec<f64> {
    let mut out = vec![0.0f32; x.len()];
    match format {
        ActFormat::F32 => out.copy_from_slice(x),
        ActFormat::Q8_0 => {
            let mut b = vec![BlockQ8_0::zeroed(); x.len() / QK];
            quantize_row_q8_0(x, &mut b);
            dequantize_q8_0(&b, &mut out);
        }
        ActFormat::Q8_1 => {
            let mut b = vec![BlockQ8_1::zeroed(); x.len() / QK];
            quantize_row_q8_1(x, &mut b);
            dequantize_q8_1(&b, &mut out);
        }
    }
    out.into_iter().map(f64::from).collect()
}

/// Per output, the error the f16 rounding of `Q8_1`'s block sums `s` may add
/// to a `Q4_1` product (the kernels use `m · s` where the reference has
/// `m · d · Σq`): Σ over blocks of |m| · |s − d·Σq|. Zero for other formats.
fn q4_1_sum_slack(w: &Owned, x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let batch = x.len() / cols;
    let Owned::Q4_1(wb) = w else {
        return vec![0.0; batch * rows];
    };
    let kb = cols / QK;
    let mut ab = vec![BlockQ8_1::zeroed(); x.len() / QK];
    quantize_row_q8_1(x, &mut ab);
    let err: Vec<f64> = ab
        .iter()
        .map(|b| {
            let exact = f64::from(b.d) * b.qs.iter().map(|&q| f64::from(q)).sum::<f64>();
            (f64::from(b.s) - exact).abs()
        })
        .collect();
    let mut out = vec![0.0; batch * rows];
    for b in 0..batch {
        for r in 0..rows {
            out[b * rows + r] = (0..kb)
                .map(|i| f64::from(f16_to_f32(wb[r * kb + i].m)).abs() * err[b * kb + i])
                .sum();
        }
    }
    out
}

/// Variants this CPU can run; the others are reported, not silently dropped.
fn runnable() -> Vec<KernelVariant> {
    let all = [
        KernelVariant::Portable,
        KernelVariant::Avx2,
        KernelVariant::Avx512Vnni,
    ];
    let (ok, missing): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|v| v.missing_features().is_empty());
    for v in missing {
        eprintln!(
            "kernel variant {v:?} NOT tested: this CPU lacks {:?}",
            v.missing_features()
        );
    }
    ok
}

/// Checks one (variant, format, shape, batch) case; returns the worst error.
fn check(k: &Kernels, rng: &mut Rng, kind: usize, rows: usize, cols: usize, batch: usize) {
    let w_f32 = rng.vec(rows * cols);
    let owned = Owned::quantize(kind, &w_f32);
    let w = MatRef::new(owned.data(), rows, cols).expect("test matrix shape");
    let x = rng.vec(batch * cols);
    let mut acts = Acts::new(batch, cols);
    acts.quantize(&x, cols, w.act_format())
        .expect("activation shape");
    let mut out = vec![0.0f32; batch * rows];
    k.matmul(
        &acts,
        &mut [MatJob {
            w: &w,
            out: &mut out,
        }],
    )
    .expect("matmul");
    let a = act_values(&x, w.act_format());
    let slack = q4_1_sum_slack(&owned, &x, rows, cols);
    let mut row = vec![0.0f32; cols];
    for r in 0..rows {
        w.dequantize_row(r, &mut row);
        for b in 0..batch {
            let xs = &a[b * cols..(b + 1) * cols];
            let want: f64 = row.iter().zip(xs).map(|(&p, &q)| f64::from(p) * q).sum();
            let scale: f64 = row
                .iter()
                .zip(xs)
                .map(|(&p, &q)| (f64::from(p) * q).abs())
                .sum();
            let got = f64::from(out[b * rows + r]);
            // f32 accumulation over `cols` terms: relative to Σ|terms|.
            assert!(
                (got - want).abs() <= 2e-5 * scale + 1e-6 + slack[b * rows + r],
                "{:?} kind {kind} rows {rows} cols {cols} batch {batch}: [{b},{r}] got {got}, want {want}",
                k.variant()
            );
        }
    }
}

#[test]
fn every_variant_matches_the_f64_reference_for_every_format() {
    let mut rng = Rng(7);
    for variant in runnable() {
        for threads in [1, 2, 3] {
            let k = Kernels::new(variant, threads).expect("runnable variant");
            for kind in 0..6 {
                // Odd and even block counts; batches across and beyond the act tile.
                for (rows, cols) in [(1, 32), (37, 96), (70, 64), (65, 576)] {
                    for batch in [1, 3, 4, 5, 9] {
                        check(&k, &mut rng, kind, rows, cols, batch);
                    }
                }
            }
        }
    }
}

#[test]
fn quantized_activations_stay_close_to_float_products() {
    let mut rng = Rng(11);
    let k = Kernels::new(KernelVariant::Auto, 2).expect("auto");
    let (rows, cols) = (16, 576);
    let w_f32 = rng.vec(rows * cols);
    let x = rng.vec(cols);
    let owned = Owned::quantize(4, &w_f32);
    let w = MatRef::new(owned.data(), rows, cols).expect("shape");
    let mut acts = Acts::new(1, cols);
    acts.quantize(&x, cols, w.act_format()).expect("shape");
    let mut out = vec![0.0f32; rows];
    k.matmul(
        &acts,
        &mut [MatJob {
            w: &w,
            out: &mut out,
        }],
    )
    .expect("matmul");
    let mut row = vec![0.0f32; cols];
    for (r, &got) in out.iter().enumerate() {
        w.dequantize_row(r, &mut row);
        let want: f64 = row
            .iter()
            .zip(&x)
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum();
        let scale: f64 = row
            .iter()
            .zip(&x)
            .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
            .sum();
        // 8-bit activations: about 1/254 relative error per term, mostly cancelling.
        assert!((f64::from(got) - want).abs() <= 0.01 * scale, "row {r}");
    }
}

#[test]
fn mismatched_operands_are_errors_not_panics() {
    let k = Kernels::new(KernelVariant::Portable, 1).expect("portable");
    let owned = Owned::quantize(4, &[0.5; 64]);
    let w = MatRef::new(owned.data(), 2, 32).expect("shape");
    let mut acts = Acts::new(1, 64);
    acts.quantize(&[0.5; 32], 32, ActFormat::Q8_0)
        .expect("shape");
    let mut out = [0.0; 2];
    let err = k
        .matmul(
            &acts,
            &mut [MatJob {
                w: &w,
                out: &mut out,
            }],
        )
        .unwrap_err();
    assert!(matches!(err, KernelError::Format { .. }), "{err}");
    assert!(MatRef::new(owned.data(), 3, 32).is_err());
}

#[test]
fn a_pinned_variant_the_cpu_lacks_is_a_start_up_error() {
    for v in [KernelVariant::Avx2, KernelVariant::Avx512Vnni] {
        let missing = v.missing_features();
        match Kernels::new(v, 1) {
            Ok(k) => assert!(missing.is_empty() && k.variant() == v),
            Err(e) => assert!(
                !missing.is_empty() && e.to_string().contains("lacks"),
                "{e}"
            ),
        }
    }
    assert_ne!(
        Kernels::new(KernelVariant::Auto, 1)
            .expect("auto")
            .variant(),
        KernelVariant::Auto
    );
}

/// A batched product gives every activation row exactly (bit for bit) what it gets
/// alone: the tiled kernels keep one summation order per (row, activation) pair, as
/// the engine's batching invariance and the llama.cpp accuracy goldens need.
#[test]
fn batched_products_equal_single_row_products_bit_for_bit() {
    let mut rng = Rng(11);
    for variant in runnable() {
        let k = Kernels::new(variant, 2).expect("runnable variant");
        for kind in 3..6 {
            let (rows, cols, batch) = (67, 576, 11);
            let owned = Owned::quantize(kind, &rng.vec(rows * cols));
            let w = MatRef::new(owned.data(), rows, cols).expect("test matrix shape");
            let x = rng.vec(batch * cols);
            let product = |x: &[f32]| {
                let mut acts = Acts::new(batch, cols);
                acts.quantize(x, cols, w.act_format())
                    .expect("activation shape");
                let mut out = vec![0.0f32; x.len() / cols * rows];
                let mut jobs = [MatJob {
                    w: &w,
                    out: &mut out,
                }];
                k.matmul(&acts, &mut jobs).expect("matmul");
                out
            };
            let batched = product(&x);
            for (b, row) in x.chunks_exact(cols).enumerate() {
                let alone = product(row);
                assert_eq!(
                    alone,
                    batched[b * rows..(b + 1) * rows],
                    "{variant:?} kind {kind} activation row {b}"
                );
            }
        }
    }
}

/// The summation order of the AVX2 8-row-group `Q4_1` kernel, in scalar code:
/// per block the exact integer sum of the 32 products, then `acc += sum · (d·da)`
/// (one rounding, a fused multiply-add) and `mins += m · s`; then `acc + mins`.
fn q4_1_group_order(w: &[BlockQ4_1], a: &[BlockQ8_1], kb: usize, r: usize, b: usize) -> f32 {
    let (mut acc, mut mins) = (0.0f32, 0.0f32);
    for i in 0..kb {
        let (wb, ab) = (&w[r * kb + i], &a[b * kb + i]);
        let sum: i32 = (0..QK)
            .map(|v| {
                let q = if v < QK / 2 {
                    wb.qs[v] & 0x0F
                } else {
                    wb.qs[v - QK / 2] >> 4
                };
                i32::from(q) * i32::from(ab.qs[v])
            })
            .sum();
        acc = (sum as f32).mul_add(f16_to_f32(wb.d) * ab.d, acc);
        mins += f16_to_f32(wb.m) * ab.s;
    }
    acc + mins
}

/// Runs the 8-row-group kernel with activation passes of `A` over rows `from..rows`
/// and checks each output: bit for bit against [`q4_1_group_order`] for rows in full
/// groups, and within f32 rounding of the f64 reference for all of them.
#[cfg(target_arch = "x86_64")]
fn check_groups<const A: usize>(
    rng: &mut Rng,
    rows: usize,
    from: usize,
    cols: usize,
    batch: usize,
) {
    let kb = cols / QK;
    let owned = Owned::quantize(4, &rng.vec(rows * cols));
    let Owned::Q4_1(wb) = &owned else {
        unreachable!("kind 4 is Q4_1")
    };
    let x = rng.vec(batch * cols);
    let mut ab = vec![BlockQ8_1::zeroed(); batch * kb];
    quantize_row_q8_1(&x, &mut ab);
    let mut out = vec![f32::NAN; batch * rows];
    let sink = matmul::OutRows::new(&mut out, rows);
    // SAFETY: the caller checked that the CPU has AVX2, FMA and F16C.
    unsafe { avx2::gemm_q4_1_groups::<A>(wb, kb, from..rows, &ab, batch, &sink) };
    let w = MatRef::new(owned.data(), rows, cols).expect("test matrix shape");
    let a = act_values(&x, ActFormat::Q8_1);
    let slack = q4_1_sum_slack(&owned, &x, rows, cols);
    let grouped = from + (rows - from) / avx2::GROUP * avx2::GROUP;
    let mut row = vec![0.0f32; cols];
    for r in from..rows {
        w.dequantize_row(r, &mut row);
        for b in 0..batch {
            let got = out[b * rows + r];
            let case = format!("A {A} rows {from}..{rows} cols {cols} batch {batch}: [{b},{r}]");
            if r < grouped {
                assert_eq!(
                    got.to_bits(),
                    q4_1_group_order(wb, &ab, kb, r, b).to_bits(),
                    "{case}"
                );
            }
            let xs = &a[b * cols..(b + 1) * cols];
            let want: f64 = row.iter().zip(xs).map(|(&p, &q)| f64::from(p) * q).sum();
            let scale: f64 = row
                .iter()
                .zip(xs)
                .map(|(&p, &q)| (f64::from(p) * q).abs())
                .sum();
            let err = (f64::from(got) - want).abs();
            assert!(
                err <= 2e-6 * scale + 1e-6 + slack[b * rows + r],
                "{case}: got {got}, want {want}"
            );
        }
    }
    assert!(
        out[..from].iter().all(|v| v.is_nan()),
        "rows outside the range were written"
    );
}

/// The interleaved registers hold exactly the nibbles of the 8 rows, in place.
#[cfg(target_arch = "x86_64")]
#[test]
fn q4_1_groups_interleave_every_nibble_in_place() {
    if !KernelVariant::Avx2.missing_features().is_empty() {
        eprintln!("AVX2 8-row-group kernel NOT tested: this CPU lacks AVX2");
        return;
    }
    let (rows, kb) = (11, 3);
    let owned = Owned::quantize(4, &Rng(5).vec(rows * kb * QK));
    let Owned::Q4_1(wb) = &owned else {
        unreachable!("kind 4 is Q4_1")
    };
    let mut vals = vec![0.0f32; kb * QK];
    for (r, i) in [(0, 0), (3, 2), (2, 1)] {
        // SAFETY: AVX2 is present (checked above).
        let regs = unsafe { avx2::interleave_q4_1(wb, kb, r, i) };
        for (g, reg) in regs.iter().enumerate() {
            let bytes: [u8; 32] = bytemuck::cast(*reg);
            for k in 0..avx2::GROUP {
                dequantize_q4_1(&wb[(r + k) * kb..(r + k + 1) * kb], &mut vals);
                let (d, m) = (
                    f16_to_f32(wb[(r + k) * kb + i].d),
                    f16_to_f32(wb[(r + k) * kb + i].m),
                );
                for c in 0..4 {
                    let want = vals[i * QK + 4 * g + c];
                    let got = d * f32::from(bytes[4 * k + c]) + m;
                    assert_eq!(got, want, "row {} block {i} value {}", r + k, 4 * g + c);
                }
            }
        }
    }
}

/// The 8-row-group kernel for rows that are not a multiple of 8, ranges that do not
/// start at 0, every batch size from 1 to 17 and several activation passes.
#[cfg(target_arch = "x86_64")]
#[test]
fn q4_1_groups_match_their_order_and_the_f64_reference() {
    if !KernelVariant::Avx2.missing_features().is_empty() {
        eprintln!("AVX2 8-row-group kernel NOT tested: this CPU lacks AVX2");
        return;
    }
    let mut rng = Rng(13);
    for (rows, from, cols) in [
        (8, 0, 32),
        (13, 0, 96),
        (37, 3, 576),
        (67, 0, 64),
        (5, 0, 64),
    ] {
        for batch in 1..=17 {
            check_groups::<1>(&mut rng, rows, from, cols, batch);
            check_groups::<4>(&mut rng, rows, from, cols, batch);
            check_groups::<16>(&mut rng, rows, from, cols, batch);
        }
    }
}

/// Times one layer's `Q4_1` products of SmolLM2-135M's shapes (q, k, v, o, gate, up,
/// down) on one thread with the row-tile kernel and the 8-row-group kernel, at batch 1
/// and at a 16-token decode step, and checks they agree. A measurement, so ignored by
/// default: `cargo test --release -p vibeserve-server --lib q4_1_layouts -- --ignored
/// --nocapture` (holding the benchmark lock).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "a timing, run by hand"]
fn time_q4_1_layouts() {
    use std::time::Instant;
    if !KernelVariant::Avx2.missing_features().is_empty() {
        eprintln!("AVX2 NOT timed: this CPU lacks AVX2");
        return;
    }
    let shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let mut rng = Rng(17);
    let mats: Vec<Vec<BlockQ4_1>> = shapes
        .iter()
        .map(|&(r, c)| {
            let mut b = vec![BlockQ4_1::zeroed(); r * c / QK];
            quantize_row_q4_1(&rng.vec(r * c), &mut b);
            b
        })
        .collect();
    for batch in [1, 16] {
        let acts: Vec<Vec<BlockQ8_1>> = shapes
            .iter()
            .map(|&(_, c)| {
                let mut a = vec![BlockQ8_1::zeroed(); batch * c / QK];
                quantize_row_q8_1(&rng.vec(batch * c), &mut a);
                a
            })
            .collect();
        let mut outs: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
        let mut best = [f64::INFINITY; 2];
        for _ in 0..30 {
            for (kind, out) in outs.iter_mut().enumerate() {
                out.clear();
                let t = Instant::now();
                for ((&(r, c), w), a) in shapes.iter().zip(&mats).zip(&acts) {
                    let mut o = vec![0.0f32; batch * r];
                    let sink = matmul::OutRows::new(&mut o, r);
                    // SAFETY: AVX2, FMA and F16C are present (checked above).
                    unsafe {
                        if kind == 0 {
                            avx2::gemm_q4_1(w, c / QK, 0..r, a, batch, &sink);
                        } else {
                            avx2::gemm_q4_1_groups::<16>(w, c / QK, 0..r, a, batch, &sink);
                        }
                    }
                    out.extend_from_slice(&o);
                }
                best[kind] = best[kind].min(t.elapsed().as_secs_f64());
            }
        }
        let macs = shapes.iter().map(|&(r, c)| r * c).sum::<usize>() * batch;
        for (kind, name) in ["row tiles", "8-row groups"].iter().enumerate() {
            println!(
                "batch {batch:2} {name:12}: {:8.1} µs per layer, {:5.1} GMAC/s (1 thread)",
                best[kind] * 1e6,
                macs as f64 / best[kind] / 1e9
            );
        }
        for (x, y) in outs[0].iter().zip(&outs[1]) {
            assert!((x - y).abs() <= 1e-3 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
}
