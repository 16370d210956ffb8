//! Compute kernels behind one small interface; the model calls only these.

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
