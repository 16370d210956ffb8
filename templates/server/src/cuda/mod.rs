//! The CUDA back end (template part `cuda`): kernels in `cuda/*.cu` built by nvcc
//! (see `build.rs`), cuBLAS for the matrix products and CUDA graphs for decode steps,
//! all through cudarc loaded at run time, so the binary builds without a GPU.

pub mod backend;
pub mod bench;
pub mod comm;
pub mod config;
pub mod device;
mod ffi;
pub mod group;
pub mod model;
pub mod oneshot;
pub mod overlap;
pub mod serve;
mod spin;
pub mod step;
pub mod weights;

pub use crate::plan_cuda::AllReduce;
pub use group::ModelGroup;
pub use model::{CudaLlama, Rank, StepInput};
pub use overlap::CommChoice;

/// What can go wrong on the GPU.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable CUDA device or driver.
    #[error("no CUDA device is usable: {0} (this server needs an NVIDIA GPU and its driver)")]
    NoDevice(String),
    /// The GPU is not the architecture the kernels were compiled for.
    #[error("the GPU {device} is {have}, but this server was built for {want}")]
    WrongArch {
        /// The device's name.
        device: String,
        /// Its architecture.
        have: String,
        /// The plan's.
        want: &'static str,
    },
    /// A device allocation failed.
    #[error("out of GPU memory: asked for {wanted} bytes with {free} free")]
    OutOfMemory {
        /// Bytes requested (0 when a kernel launch ran out).
        wanted: usize,
        /// Bytes free on the device.
        free: usize,
    },
    /// A kernel launch failed.
    #[error("CUDA kernel {kernel} failed with error {code}")]
    Kernel {
        /// Which launcher.
        kernel: &'static str,
        /// The cudaError_t.
        code: i32,
    },
    /// A driver call failed.
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0}")]
    Blas(String),
    /// A collective failed, timed out, or a rank is gone: the model cannot run steps.
    #[error("tensor parallelism: {0}")]
    Nccl(String),
    /// The model folder is unusable.
    #[error("model: {0}")]
    Model(String),
}

impl CudaError {
    /// Wraps a driver error, telling out-of-memory apart.
    pub fn driver(e: cudarc::driver::DriverError) -> Self {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let free = cudarc::driver::result::mem_get_info()
                .map(|(f, _)| f)
                .unwrap_or(0);
            return Self::OutOfMemory { wanted: 0, free };
        }
        Self::Driver(e.to_string())
    }
}
