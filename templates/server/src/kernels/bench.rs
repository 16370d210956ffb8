//! Kernel timing for `server bench-kernels`: each matrix product's time and
//! effective GB/s at batch 1, and the machine's read bandwidth over a
//! working set the size of the weights (the batch-1 decode floor).
//! A benchmark, not a test: it prints figures and asserts nothing.

use super::{Acts, KernelError, Kernels, MatJob, MatRef};
use std::time::Instant;

/// One matrix's batch-1 product timing.
#[derive(Debug, Clone)]
pub struct MatTiming {
    /// Which matrix.
    pub name: String,
    /// Bytes of weights it reads.
    pub bytes: usize,
    /// Median seconds per product (activation quantization included).
    pub secs: f64,
}

/// Times `reps` batch-1 products of each matrix; reports the medians.
pub fn time_matrices(
    k: &Kernels,
    mats: &[(String, MatRef<'_>)],
    reps: usize,
) -> Result<Vec<MatTiming>, KernelError> {
    let mut timings = Vec::new();
    for (name, w) in mats {
        let x: Vec<f32> = (0..w.cols())
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut acts = Acts::new(1, w.cols());
        let mut out = vec![0.0f32; w.rows()];
        let mut samples = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            acts.quantize(&x, w.cols(), w.act_format())?;
            k.matmul(&acts, &mut [MatJob { w, out: &mut out }])?;
            samples.push(t.elapsed().as_secs_f64());
        }
        timings.push(MatTiming {
            name: name.clone(),
            bytes: w.bytes(),
            secs: median(&mut samples),
        });
    }
    Ok(timings)
}

/// Read bandwidth (bytes/s) of all pool threads streaming a `bytes`-sized buffer.
pub fn read_bandwidth(k: &Kernels, bytes: usize, reps: usize) -> f64 {
    let words: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let threads = k.pool().threads();
    let per = words.len().div_ceil(threads);
    let mut samples = Vec::with_capacity(reps);
    let sink = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        k.pool().run(&|id| {
            let part = &words[(id * per).min(words.len())..((id + 1) * per).min(words.len())];
            // Independent lanes so the loop vectorises and is load-bound.
            let mut acc = [0u64; 8];
            for c in part.chunks_exact(8) {
                for l in 0..8 {
                    acc[l] = acc[l].wrapping_add(c[l]);
                }
            }
            sink.fetch_add(
                acc.iter().fold(0, |a, &b| a.wrapping_add(b)),
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        samples.push(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink.into_inner());
    (words.len() * 8) as f64 / median(&mut samples)
}

/// Median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
