//! Matrix products on quantized blocks: `out[b][r] = W[r] · act[b]` for a
//! batch of activation rows, with the weights read once per call.
//!
//! Activations are first quantized to the 8-bit block format the weight
//! format pairs with ([`ActFormat`]), once per input and shared by every
//! matrix that reads it (q/k/v, gate/up). Output rows are split in chunks of
//! [`MATMUL_ROW_CHUNK`] that threads claim from an atomic counter.

use super::quant::{
    BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK, quantize_row_q8_0, quantize_row_q8_1,
};
use super::{KernelError, KernelVariant, Kernels, portable};
use crate::plan::{GROUP_ACT_TILE, MATMUL_ROW_CHUNK};
use bytemuck::Zeroable;
use half::{bf16, f16};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A weight matrix's elements, in the format stored in the file.
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// IEEE half floats.
    F16(&'a [f16]),
    /// bfloat16.
    BF16(&'a [bf16]),
    /// ggml `Q4_0` blocks.
    Q4_0(&'a [BlockQ4_0]),
    /// ggml `Q4_1` blocks.
    Q4_1(&'a [BlockQ4_1]),
    /// ggml `Q8_0` blocks.
    Q8_0(&'a [BlockQ8_0]),
}

/// A row-major `rows × cols` weight matrix (GGUF dims `[cols, rows]`).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: WeightData<'a>,
    rows: usize,
    cols: usize,
}

impl<'a> MatRef<'a> {
    /// Wraps `data` as `rows × cols`, checking that the sizes agree.
    pub fn new(data: WeightData<'a>, rows: usize, cols: usize) -> Result<Self, KernelError> {
        let (len, per_row) = match data {
            WeightData::F32(d) => (d.len(), cols),
            WeightData::F16(d) => (d.len(), cols),
            WeightData::BF16(d) => (d.len(), cols),
            WeightData::Q4_0(d) => (d.len(), cols / QK),
            WeightData::Q4_1(d) => (d.len(), cols / QK),
            WeightData::Q8_0(d) => (d.len(), cols / QK),
        };
        let blocked = !matches!(
            data,
            WeightData::F32(_) | WeightData::F16(_) | WeightData::BF16(_)
        );
        if (blocked && !cols.is_multiple_of(QK)) || len != rows * per_row {
            return Err(KernelError::Shape {
                what: "weight matrix",
                expected: format!("{rows} × {cols} elements"),
                found: format!("{len} units of {per_row} per row"),
            });
        }
        Ok(Self { data, rows, cols })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the stored elements occupy (what one product reads).
    pub fn bytes(&self) -> usize {
        match self.data {
            WeightData::F32(d) => size_of_val(d),
            WeightData::F16(d) => size_of_val(d),
            WeightData::BF16(d) => size_of_val(d),
            WeightData::Q4_0(d) => size_of_val(d),
            WeightData::Q4_1(d) => size_of_val(d),
            WeightData::Q8_0(d) => size_of_val(d),
        }
    }

    /// The stored elements.
    pub fn data(&self) -> WeightData<'a> {
        self.data
    }

    /// The activation format this matrix's products consume.
    pub fn act_format(&self) -> ActFormat {
        match self.data {
            WeightData::Q4_1(_) => ActFormat::Q8_1,
            WeightData::Q4_0(_) | WeightData::Q8_0(_) => ActFormat::Q8_0,
            WeightData::F32(_) | WeightData::F16(_) | WeightData::BF16(_) => ActFormat::F32,
        }
    }
}

/// How activations are held for a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    /// Plain f32 (for float weights).
    F32,
    /// `Q8_0` blocks (for `Q4_0` and `Q8_0` weights).
    Q8_0,
    /// `Q8_1` blocks, with block sums (for `Q4_1` weights).
    Q8_1,
}

/// A batch of activation rows, prepared for one weight format.
#[derive(Debug)]
pub struct Acts {
    format: ActFormat,
    rows: usize,
    cols: usize,
    f32s: Vec<f32>,
    q8_0: Vec<BlockQ8_0>,
    q8_1: Vec<BlockQ8_1>,
}

impl Acts {
    /// Buffers for up to `max_rows × max_cols` values; never reallocates below that.
    pub fn new(max_rows: usize, max_cols: usize) -> Self {
        let n = max_rows * max_cols;
        Self {
            format: ActFormat::F32,
            rows: 0,
            cols: 0,
            f32s: Vec::with_capacity(n),
            q8_0: Vec::with_capacity(n / QK),
            q8_1: Vec::with_capacity(n / QK),
        }
    }

    /// Fills from `x` (`rows × cols`, row-major) in `format`.
    pub fn quantize(
        &mut self,
        x: &[f32],
        cols: usize,
        format: ActFormat,
    ) -> Result<(), KernelError> {
        if cols == 0
            || !x.len().is_multiple_of(cols)
            || (format != ActFormat::F32 && !cols.is_multiple_of(QK))
        {
            return Err(KernelError::Shape {
                what: "activations",
                expected: format!("rows of {cols} values (a multiple of {QK} when quantized)"),
                found: format!("{} values", x.len()),
            });
        }
        self.format = format;
        self.cols = cols;
        self.rows = x.len() / cols;
        match format {
            ActFormat::F32 => {
                self.f32s.clear();
                self.f32s.extend_from_slice(x);
            }
            ActFormat::Q8_0 => {
                self.q8_0.resize(x.len() / QK, BlockQ8_0::zeroed());
                quantize_row_q8_0(x, &mut self.q8_0);
            }
            ActFormat::Q8_1 => {
                self.q8_1.resize(x.len() / QK, BlockQ8_1::zeroed());
                quantize_row_q8_1(x, &mut self.q8_1);
            }
        }
        Ok(())
    }

    /// Activation rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Output buffer shared by the threads of one product; each thread writes a
/// disjoint set of rows `r`, for every activation row `b`, at `b * ld + r`.
pub struct OutRows {
    ptr: *mut f32,
    len: usize,
    ld: usize,
}

// SAFETY: threads write disjoint indices (see `set`); the buffer outlives the job.
unsafe impl Sync for OutRows {}

impl OutRows {
    /// Rows of `ld` outputs in `out`, for a kernel called directly (tests).
    #[cfg(test)]
    pub fn new(out: &mut [f32], ld: usize) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            ld,
        }
    }

    /// Writes `v` at (`act`, `row`).
    ///
    /// # Safety
    /// No other thread may write the same (`act`, `row`) during the job.
    #[inline]
    pub unsafe fn set(&self, act: usize, row: usize, v: f32) {
        let i = act * self.ld + row;
        assert!(i < self.len, "matmul output index out of bounds");
        // SAFETY: in bounds (checked above); exclusive per the contract.
        unsafe { *self.ptr.add(i) = v };
    }
}

/// One matrix of a fused product and where its output goes (`acts.rows() × w.rows()`).
pub struct MatJob<'a, 'w> {
    /// The weights.
    pub w: &'a MatRef<'w>,
    /// The output, `acts × rows`, row-major.
    pub out: &'a mut [f32],
}

impl Kernels {
    /// Computes every job's product with the same activations in one pool
    /// dispatch (so q/k/v or gate/up share one barrier).
    pub fn matmul(&self, acts: &Acts, jobs: &mut [MatJob<'_, '_>]) -> Result<(), KernelError> {
        let _timed = super::Timed::new(&self.products_ns);
        for j in jobs.iter() {
            check_job(acts, j)?;
        }
        let outs: Vec<OutRows> = jobs
            .iter_mut()
            .map(|j| OutRows {
                ptr: j.out.as_mut_ptr(),
                len: j.out.len(),
                ld: j.w.rows,
            })
            .collect();
        let chunks: Vec<usize> = jobs
            .iter()
            .map(|j| j.w.rows.div_ceil(MATMUL_ROW_CHUNK))
            .collect();
        let total: usize = chunks.iter().sum();
        let next = AtomicUsize::new(0);
        self.pool.run(&|_| {
            loop {
                let mut c = next.fetch_add(1, Ordering::Relaxed);
                if c >= total {
                    break;
                }
                let mut k = 0;
                while c >= chunks[k] {
                    c -= chunks[k];
                    k += 1;
                }
                let w = jobs[k].w;
                let rows = c * MATMUL_ROW_CHUNK..((c + 1) * MATMUL_ROW_CHUNK).min(w.rows);
                gemm_rows(self.variant, w, rows, acts, &outs[k]);
            }
        });
        Ok(())
    }
}

/// Checks formats and sizes of one job against its activations.
fn check_job(acts: &Acts, j: &MatJob<'_, '_>) -> Result<(), KernelError> {
    if acts.format != j.w.act_format() {
        return Err(KernelError::Format {
            expected: j.w.act_format(),
            found: acts.format,
        });
    }
    if acts.cols != j.w.cols || j.out.len() != acts.rows * j.w.rows {
        return Err(KernelError::Shape {
            what: "matmul",
            expected: format!("{} inputs, {} outputs", j.w.cols, acts.rows * j.w.rows),
            found: format!("{} inputs, {} outputs", acts.cols, j.out.len()),
        });
    }
    Ok(())
}

/// Output rows `rows` of `w · actsᵀ` with the chosen kernel variant.
fn gemm_rows(
    variant: KernelVariant,
    w: &MatRef<'_>,
    rows: std::ops::Range<usize>,
    acts: &Acts,
    out: &OutRows,
) {
    let kb = w.cols / QK;
    let n = acts.rows;
    let (q8_0, q8_1) = (&acts.q8_0[..], &acts.q8_1[..]);
    match (variant, w.data) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Kernels::new` verified the CPU has this variant's features.
        (KernelVariant::Avx512Vnni, d) => unsafe {
            use super::avx512 as k;
            match d {
                WeightData::Q4_1(b) => k::gemm_q4_1(b, kb, rows, q8_1, n, out),
                WeightData::Q4_0(b) => k::gemm_q4_0(b, kb, rows, q8_0, n, out),
                WeightData::Q8_0(b) => k::gemm_q8_0(b, kb, rows, q8_0, n, out),
                _ => gemm_floats(w, rows, acts, out),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (KernelVariant::Avx2, d) => unsafe {
            use super::avx2 as k;
            match d {
                WeightData::Q4_1(b) if GROUP_ACT_TILE != 0 => {
                    // (The `else` only keeps the never-taken instance well-formed.)
                    const A: usize = if GROUP_ACT_TILE != 0 {
                        GROUP_ACT_TILE
                    } else {
                        1
                    };
                    k::gemm_q4_1_groups::<A>(b, kb, rows, q8_1, n, out)
                }
                WeightData::Q4_1(b) => k::gemm_q4_1(b, kb, rows, q8_1, n, out),
                WeightData::Q4_0(b) => k::gemm_q4_0(b, kb, rows, q8_0, n, out),
                WeightData::Q8_0(b) => k::gemm_q8_0(b, kb, rows, q8_0, n, out),
                _ => gemm_floats(w, rows, acts, out),
            }
        },
        (_, WeightData::Q4_1(b)) => portable::gemm_q4_1(b, kb, rows, q8_1, n, out),
        (_, WeightData::Q4_0(b)) => portable::gemm_q4_0(b, kb, rows, q8_0, n, out),
        (_, WeightData::Q8_0(b)) => portable::gemm_q8_0(b, kb, rows, q8_0, n, out),
        _ => gemm_floats(w, rows, acts, out),
    }
}

/// Float weights × f32 activations, converting a slice of the weight row at
/// a time into a stack buffer (never a copy of the matrix).
fn gemm_float<T>(
    d: &[T],
    cols: usize,
    rows: std::ops::Range<usize>,
    acts: &Acts,
    out: &OutRows,
    convert: fn(&[T], &mut [f32]),
) {
    const SLICE: usize = 256;
    let mut buf = [0.0f32; SLICE];
    for r in rows {
        for b in 0..acts.rows {
            let x = &acts.f32s[b * cols..(b + 1) * cols];
            let mut sum = 0.0f32;
            for start in (0..cols).step_by(SLICE) {
                let end = (start + SLICE).min(cols);
                let dst = &mut buf[..end - start];
                convert(&d[r * cols + start..r * cols + end], dst);
                sum += dst
                    .iter()
                    .zip(&x[start..end])
                    .map(|(a, b)| a * b)
                    .sum::<f32>();
            }
            // SAFETY: the caller hands each thread a disjoint range of rows.
            unsafe { out.set(b, r, sum) };
        }
    }
}

/// Float-weight products (the same code for every variant).
fn gemm_floats(w: &MatRef<'_>, rows: std::ops::Range<usize>, acts: &Acts, out: &OutRows) {
    use half::slice::HalfFloatSliceExt;
    match w.data {
        WeightData::F32(d) => gemm_float(d, w.cols, rows, acts, out, |s, o| o.copy_from_slice(s)),
        WeightData::F16(d) => {
            gemm_float(d, w.cols, rows, acts, out, |s, o| s.convert_to_f32_slice(o))
        }
        WeightData::BF16(d) => {
            gemm_float(d, w.cols, rows, acts, out, |s, o| s.convert_to_f32_slice(o))
        }
        // Block formats never reach here: `gemm_rows` handles them first.
        WeightData::Q4_0(_) | WeightData::Q4_1(_) | WeightData::Q8_0(_) => {}
    }
}

impl MatRef<'_> {
    /// Expands row `r` into `out` (`cols` values): the embedding lookup, one
    /// row at a time (the matrix itself is never expanded).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        use super::quant::{dequantize_q4_0, dequantize_q4_1, dequantize_q8_0};
        use half::slice::HalfFloatSliceExt;
        let (c, kb) = (self.cols, self.cols / QK);
        match self.data {
            WeightData::F32(d) => out.copy_from_slice(&d[r * c..(r + 1) * c]),
            WeightData::F16(d) => d[r * c..(r + 1) * c].convert_to_f32_slice(out),
            WeightData::BF16(d) => d[r * c..(r + 1) * c].convert_to_f32_slice(out),
            WeightData::Q4_0(d) => dequantize_q4_0(&d[r * kb..(r + 1) * kb], out),
            WeightData::Q4_1(d) => dequantize_q4_1(&d[r * kb..(r + 1) * kb], out),
            WeightData::Q8_0(d) => dequantize_q8_0(&d[r * kb..(r + 1) * kb], out),
        }
    }
}
