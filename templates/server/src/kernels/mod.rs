//! Compute kernels behind one small interface; the model calls only these.
//!
//! [`Kernels`] owns the persistent thread pool and the kernel variant chosen
//! at start-up, and offers the batched products on quantized weights
//! ([`Kernels::matmul`]) and attention over the paged cache
//! ([`Kernels::attention`]); [`ops`] holds the element-wise f32 steps.

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod bench;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod portable;
pub mod quant;
#[cfg(test)]
mod tests;

pub use matmul::{ActFormat, Acts, MatJob, MatRef, WeightData};
pub use pool::Pool;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Which implementation the CPU matrix products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelVariant {
    /// Pick the best the running CPU supports, at start-up.
    Auto,
    /// AVX-512 with VNNI int8 dot products.
    Avx512Vnni,
    /// AVX2 with FMA.
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl KernelVariant {
    /// CPU features this variant needs that the running CPU lacks (empty when usable).
    pub fn missing_features(self) -> Vec<&'static str> {
        let needed: &[&'static str] = match self {
            Self::Auto | Self::Portable => &[],
            Self::Avx2 => &["avx2", "fma", "f16c"],
            Self::Avx512Vnni => &[
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512vnni",
                "avx2",
                "fma",
                "f16c",
            ],
        };
        needed.iter().copied().filter(|f| !has_feature(f)).collect()
    }

    /// The variant `Auto` resolves to on this CPU. AVX2 comes first: on an
    /// AVX-512 Xeon it measured faster than the VNNI path (batch-1 decode
    /// 58 vs 52 tok/s, prefill 151 vs 147 tok/s, 2 threads) and it sums in
    /// llama.cpp's order; a plan may still pin `Avx512Vnni`.
    pub fn detect() -> Self {
        [Self::Avx2, Self::Avx512Vnni]
            .into_iter()
            .find(|v| v.missing_features().is_empty())
            .unwrap_or(Self::Portable)
    }
}

/// Whether the running CPU has `feature` (always false off x86-64).
fn has_feature(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "f16c" => std::arch::is_x86_feature_detected!("f16c"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// A kernel failure: a variant the CPU lacks, or mismatched operands.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The plan pins a variant this CPU cannot run.
    #[error(
        "kernel variant {variant:?} needs CPU features {missing:?} that this CPU lacks; use a plan with KernelVariant::Auto or Portable"
    )]
    Unsupported {
        /// The requested variant.
        variant: KernelVariant,
        /// The absent features.
        missing: Vec<&'static str>,
    },
    /// Operand sizes disagree.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        /// The operation.
        what: &'static str,
        /// Expected sizes.
        expected: String,
        /// Actual sizes.
        found: String,
    },
    /// Activations were prepared in the wrong format for a weight matrix.
    #[error("activations are {found:?} but the weights need {expected:?}")]
    Format {
        /// What the weights need.
        expected: ActFormat,
        /// What was given.
        found: ActFormat,
    },
    /// A tensor type no kernel handles.
    #[error("no kernel for ggml type id {0}")]
    UnsupportedType(u32),
}

/// The kernels in use: a resolved variant and the thread pool.
pub struct Kernels {
    variant: KernelVariant,
    pool: Pool,
    /// Attention working memory, one per pool thread.
    scratch: Vec<Mutex<attention::Scratch>>,
    /// Nanoseconds spent in [`Kernels::matmul`] since the last [`Kernels::take_times`].
    products_ns: AtomicU64,
    /// Nanoseconds spent in [`Kernels::attention`] since the last [`Kernels::take_times`].
    attention_ns: AtomicU64,
}

/// Time the two timed kernel entry points took, for the server's stage metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTimes {
    /// In the matrix products.
    pub products: Duration,
    /// In attention.
    pub attention: Duration,
}

/// Adds the time from its creation to its drop to a counter: one per timed call, so
/// the timing sits at the kernel's entry, not inside its loops (two clock reads per
/// call, about 50 ns next to a product's tens of microseconds).
struct Timed<'a> {
    into: &'a AtomicU64,
    started: Instant,
}

impl<'a> Timed<'a> {
    fn new(into: &'a AtomicU64) -> Self {
        Self {
            into,
            started: Instant::now(),
        }
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.into.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Kernels {
    /// Resolves `requested` (checking the CPU has it) and starts `threads` threads.
    pub fn new(requested: KernelVariant, threads: usize) -> Result<Self, KernelError> {
        let variant = match requested {
            KernelVariant::Auto => KernelVariant::detect(),
            v => {
                let missing = v.missing_features();
                if !missing.is_empty() {
                    return Err(KernelError::Unsupported {
                        variant: v,
                        missing,
                    });
                }
                v
            }
        };
        let pool = Pool::new(threads);
        let scratch = (0..pool.threads())
            .map(|_| attention::Scratch::new())
            .collect();
        Ok(Self {
            variant,
            pool,
            scratch,
            products_ns: AtomicU64::new(0),
            attention_ns: AtomicU64::new(0),
        })
    }

    /// The time spent in products and attention since the last call, which resets it.
    pub fn take_times(&self) -> KernelTimes {
        let take = |ns: &AtomicU64| Duration::from_nanos(ns.swap(0, Ordering::Relaxed));
        KernelTimes {
            products: take(&self.products_ns),
            attention: take(&self.attention_ns),
        }
    }

    /// The variant in use (never `Auto`).
    pub fn variant(&self) -> KernelVariant {
        self.variant
    }

    /// The thread pool (for other parallel loops).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
