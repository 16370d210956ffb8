//! Finding the CUDA toolkit, for the tests that compile CUDA targets' crates.

use std::path::PathBuf;

/// Where the CUDA toolkit's nvcc is: `$CUDA_HOME/bin/nvcc`, else `nvcc` on PATH (the
/// generated build.rs looks in the same places).
pub fn nvcc() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let nvcc = PathBuf::from(home).join("bin/nvcc");
        return nvcc.is_file().then_some(nvcc);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("nvcc"))
        .find(|nvcc| nvcc.is_file())
}
