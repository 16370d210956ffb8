//! The GPU: context and stream (cudarc, loaded at run time), device buffers, and the
//! cuBLAS matrix products.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaStream, result as drv, sys as drv_sys};

use super::{CudaError, ffi};
use crate::plan_cuda;

/// The device a model (or one tensor-parallel rank) runs on: one context, one stream,
/// one cuBLAS handle.
pub struct Gpu {
    /// The device's primary context.
    pub ctx: Arc<CudaContext>,
    /// The stream every kernel and copy goes to.
    pub stream: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    /// cuBLAS workspace, set once so graph capture never allocates.
    _workspace: DevBuf,
    /// How the GEMV kernel launches on this device.
    gemv_launch: ffi::vs_gemv_launch,
}

impl Gpu {
    /// Opens device `ordinal` and checks it is the architecture the kernels were built for.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        // cudarc panics on first use of a library it cannot load: ask first.
        // SAFETY: only tries to dlopen the libraries.
        if !unsafe { drv_sys::is_culib_present() } {
            return Err(CudaError::NoDevice(
                "the CUDA driver library (libcuda.so) is not installed".into(),
            ));
        }
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(CudaError::NoDevice(
                "cuBLAS (libcublas.so.13) is not on the library path".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice(e.to_string()))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| CudaError::NoDevice(e.to_string()))?;
        let have = format!("sm_{major}{minor}");
        if !plan_cuda::CUDA_ARCH.starts_with(&have) {
            let name = ctx.name().unwrap_or_default();
            return Err(CudaError::WrongArch {
                device: name,
                have,
                want: plan_cuda::CUDA_ARCH,
            });
        }
        // One stream and no other users: cudarc's per-buffer event tracking is not needed.
        // SAFETY: called before any buffer exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(CudaError::driver)?;
        let blas = cudarc::cublas::CudaBlas::new(stream.clone())
            .map_err(|e| CudaError::Blas(e.to_string()))?;
        let workspace = DevBuf::new(plan_cuda::CUBLAS_WORKSPACE_BYTES)?;
        // SAFETY: the handle and the workspace are live; the workspace outlives the handle
        // (fields drop in order: blas before _workspace).
        unsafe {
            blas_sys::cublasSetWorkspace_v2(
                *blas.handle(),
                workspace.ptr as *mut c_void,
                workspace.bytes,
            )
            .result()
            .map_err(|e| CudaError::Blas(e.to_string()))?;
        }
        let sm_count = ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(CudaError::driver)?;
        let gemv_launch = ffi::vs_gemv_launch {
            rows_per_warp: plan_cuda::CUDA_GEMV_ROWS_PER_WARP as i32,
            warps: plan_cuda::CUDA_GEMV_WARPS as i32,
            k_split_max: plan_cuda::CUDA_GEMV_K_SPLIT_MAX as i32,
            warps_per_sm: plan_cuda::CUDA_GEMV_WARPS_PER_SM as i32,
            sm_count,
            mma_min_tokens: plan_cuda::CUDA_GEMV_MMA_MIN_TOKENS as i32,
            mma_warps: plan_cuda::CUDA_GEMV_MMA_WARPS as i32,
            mma_k_split_max: plan_cuda::CUDA_GEMV_MMA_K_SPLIT_MAX as i32,
            early: plan_cuda::CUDA_GEMV_EARLY_LAUNCH.into(),
        };
        Ok(Self {
            ctx,
            stream,
            blas,
            _workspace: workspace,
            gemv_launch,
        })
    }

    /// The raw stream handle the launchers take.
    pub fn raw_stream(&self) -> *mut c_void {
        self.stream.cu_stream() as *mut c_void
    }

    /// Waits for every queued operation.
    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(CudaError::driver)
    }

    /// `y[n, m] (+)= x[n, k] · w[m, k]ᵀ` on bf16 operands with f32 accumulation; `y` is
    /// bf16, or f32 when `y_f32`, and with `accumulate` the product is added to it (the
    /// residual add of o_proj and down_proj). Up to `CUDA_GEMV_MAX_TOKENS` tokens it is
    /// the hand-written GEMV kernel, above that cuBLAS.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        w: u64,
        x: u64,
        y: u64,
        m: usize,
        n: usize,
        k: usize,
        y_f32: bool,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        if gemv_takes(w, x, n, k) {
            return self.gemv(&Gemv {
                w,
                x: GemvInput::Bf16(x),
                y,
                rows: m,
                n,
                k,
                out: if y_f32 { GemvOut::F32 } else { GemvOut::Bf16 },
                accumulate,
            });
        }
        let (alpha, beta) = (1f32, if accumulate { 1f32 } else { 0f32 });
        let bf = blas_sys::cudaDataType::CUDA_R_16BF;
        let c_type = if y_f32 {
            blas_sys::cudaDataType::CUDA_R_32F
        } else {
            bf
        };
        let dim = |v: usize| {
            i32::try_from(v)
                .map_err(|_| CudaError::Model(format!("matrix dimension {v} too large")))
        };
        // Column-major view: yᵀ[m, n] = op(w)[m, k] · xᵀ[k, n], w stored as [k, m] column-major.
        // SAFETY: the pointers are live device buffers of the stated shapes (callers size them
        // from the same config).
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                dim(m)?,
                dim(n)?,
                dim(k)?,
                (&alpha as *const f32).cast(),
                w as *const c_void,
                bf,
                dim(k)?,
                x as *const c_void,
                bf,
                dim(k)?,
                (&beta as *const f32).cast(),
                y as *mut c_void,
                c_type,
                dim(m)?,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Blas(e.to_string()))
    }

    /// Runs `p` on the GEMV kernel with its fusions (the caller checked [`gemv_fits`];
    /// operands must be 16-byte aligned).
    pub fn gemv(&self, p: &Gemv) -> Result<(), CudaError> {
        let (x, x_rows, norm, eps) = match p.x {
            GemvInput::Bf16(x) => (x, std::ptr::null(), 0, 0.0),
            GemvInput::Normed {
                resid,
                rows_of,
                weight,
                eps,
            } => (resid, rows_of, weight, eps),
        };
        let rope = match &p.out {
            GemvOut::RopeKv(r) => r as *const ffi::vs_rope_kv_out,
            _ => std::ptr::null(),
        };
        // SAFETY: the pointers are live device buffers of the stated shapes (callers size
        // them from the same config); the launcher refuses shapes the kernel cannot take.
        check("gemv", unsafe {
            ffi::vs_gemv(
                self.raw_stream(),
                p.w as *const u16,
                x as *const c_void,
                x_rows,
                norm as *const u16,
                eps,
                p.y as *mut c_void,
                p.rows as i32,
                p.n as i32,
                p.k as i32,
                matches!(p.out, GemvOut::F32).into(),
                p.accumulate.into(),
                matches!(p.out, GemvOut::SwiGlu).into(),
                rope,
                &self.gemv_launch,
            )
        })
    }

    /// Copies host values into a device buffer (ordered on the stream; the host slice
    /// must stay alive and unchanged until the stream reaches the copy).
    pub fn upload<T>(&self, dst: u64, src: &[T]) -> Result<(), CudaError> {
        // SAFETY: dst holds at least size_of_val(src) bytes (callers' sizing).
        unsafe { drv::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(CudaError::driver)
    }

    /// Copies a device buffer into host values and waits for it.
    pub fn download<T>(&self, dst: &mut [T], src: u64) -> Result<(), CudaError> {
        // SAFETY: src holds at least size_of_val(dst) bytes (callers' sizing).
        unsafe { drv::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(CudaError::driver)?;
        self.sync()
    }

    /// Enqueues a copy of a device buffer into the first `len` values of `dst` without
    /// waiting: they hold the copy once the stream has been waited for, so the copy rides
    /// on the wait the caller makes anyway.
    pub fn download_later<T: Copy>(
        &self,
        dst: &mut Pinned<T>,
        len: usize,
        src: u64,
    ) -> Result<(), CudaError> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: src holds at least `len` values (callers' sizing); `dst` is pinned and
        // owned by the caller, who reads it only after waiting for the stream.
        unsafe { drv::memcpy_dtoh_async(&mut dst[..len], src, self.stream.cu_stream()) }
            .map_err(CudaError::driver)
    }
}

/// Page-locked host memory. Copies from and to it are plain DMA the driver queues as
/// they are, where pageable memory costs a staging copy (and a wait, device to host):
/// a step's inputs go up in one copy and its tokens come back with the step's own wait.
/// The host must not touch it while a queued copy may still be using it.
pub struct Pinned<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: an owned allocation like a Vec's; the model that holds it moves to the engine
// thread before first use.
unsafe impl<T: Send> Send for Pinned<T> {}

impl<T: Copy + Default> Pinned<T> {
    /// Allocates `len` values, set to the default.
    pub fn new(len: usize) -> Result<Self, CudaError> {
        let bytes = (len * std::mem::size_of::<T>()).max(1);
        // SAFETY: plain allocation in the current context.
        let ptr = unsafe { drv::malloc_host(bytes, 0) }.map_err(|e| {
            if e.0 == drv_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                CudaError::Model(format!("cannot pin {bytes} bytes of host memory"))
            } else {
                CudaError::driver(e)
            }
        })? as *mut T;
        // SAFETY: the allocation holds `len` values of T, suitably aligned (page-aligned).
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }.fill(T::default());
        Ok(Self { ptr, len })
    }
}

impl<T> std::ops::Deref for Pinned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised values live at `ptr` until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T> std::ops::DerefMut for Pinned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed uniquely through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T> Drop for Pinned<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host and freed once; errors at teardown are moot.
        let _ = unsafe { drv::free_host(self.ptr.cast()) };
    }
}

/// What a fused GEMV reads as its token vectors.
#[derive(Debug, Clone, Copy)]
pub enum GemvInput {
    /// bf16 rows `[n][k]` at this address.
    Bf16(u64),
    /// RMSNorm of f32 residual rows, computed inside the product (no bf16 copy of the
    /// normalised rows, no norm kernel).
    Normed {
        /// The residual rows `[.][k]` (f32).
        resid: u64,
        /// Token t reads residual row `rows_of[t]` (a device array); null: row t.
        rows_of: *const i32,
        /// The norm's weight, bf16 `[k]`.
        weight: u64,
        /// The norm's epsilon.
        eps: f32,
    },
}

/// What a fused GEMV writes.
#[derive(Debug, Clone, Copy)]
pub enum GemvOut {
    /// bf16 `[n][rows]`.
    Bf16,
    /// f32 `[n][rows]`.
    F32,
    /// bf16 `silu(gate) * up` `[n][rows]`, the weight holding `rows` gate rows then
    /// `rows` up rows.
    SwiGlu,
    /// The q/k/v rows of a layer with RoPE and the K/V cache write in the epilogue:
    /// rotated q into bf16 `[n][rows]` (its k and v columns unwritten), rotated k and v
    /// into the caches. Needs an even `CUDA_GEMV_ROWS_PER_WARP` ([`rope_fits`]).
    RopeKv(ffi::vs_rope_kv_out),
}

/// Whether the GEMV's rows per warp hold whole RoPE pairs, so it can take the RoPE in.
pub const fn rope_fits() -> bool {
    plan_cuda::CUDA_GEMV_ROWS_PER_WARP.is_multiple_of(2)
}

/// One product on the GEMV kernel: `y[n, rows] = x[n, k] · w[rows, k]ᵀ` with the fusions
/// `x` and `out` name.
#[derive(Debug, Clone, Copy)]
pub struct Gemv {
    /// The weight, bf16 row-major (`2 * rows` rows for [`GemvOut::SwiGlu`]).
    pub w: u64,
    /// The token vectors.
    pub x: GemvInput,
    /// The output.
    pub y: u64,
    /// Output rows.
    pub rows: usize,
    /// Tokens.
    pub n: usize,
    /// Inputs per row.
    pub k: usize,
    /// What is written.
    pub out: GemvOut,
    /// Add to what `y` holds ([`GemvOut::F32`] or [`GemvOut::Bf16`] only): the residual
    /// add of o_proj and down_proj.
    pub accumulate: bool,
}

/// Whether a product of `n` tokens over `k` inputs runs the hand-written GEMV: few enough
/// tokens for the plan, rows of whole 16-byte chunks, 16-byte aligned operands.
fn gemv_takes(w: u64, x: u64, n: usize, k: usize) -> bool {
    gemv_fits(n, k) && (w | x).is_multiple_of(16)
}

/// Whether a product of `n` tokens over `k` inputs can run the GEMV kernel, with or
/// without its fusions ([`Gpu::gemv`]): few enough tokens for the plan, and a shape the
/// kernel takes (rows of whole 16-byte chunks, or 32-input steps on the tensor cores).
pub fn gemv_fits(n: usize, k: usize) -> bool {
    let (Ok(n32), Ok(k32)) = (i32::try_from(n), i32::try_from(k)) else {
        return false;
    };
    // SAFETY: a pure function of its arguments (no memory is read).
    n <= plan_cuda::CUDA_GEMV_MAX_TOKENS
        && unsafe { ffi::vs_gemv_takes(n32, k32, plan_cuda::CUDA_GEMV_MMA_MIN_TOKENS as i32) } != 0
}

/// A device allocation, freed on drop.
pub struct DevBuf {
    /// Device address.
    pub ptr: u64,
    /// Size in bytes.
    pub bytes: usize,
}

impl DevBuf {
    /// Allocates `bytes` of device memory (uninitialised); out of memory is `CudaError::OutOfMemory`.
    pub fn new(bytes: usize) -> Result<Self, CudaError> {
        // SAFETY: plain allocation in the current context.
        match unsafe { drv::malloc_sync(bytes.max(1)) } {
            Ok(ptr) => Ok(Self { ptr, bytes }),
            Err(e) if e.0 == drv_sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let free = drv::mem_get_info().map(|(f, _)| f).unwrap_or(0);
                Err(CudaError::OutOfMemory {
                    wanted: bytes,
                    free,
                })
            }
            Err(e) => Err(CudaError::driver(e)),
        }
    }

    /// Allocates and zeroes.
    pub fn zeroed(bytes: usize) -> Result<Self, CudaError> {
        let buf = Self::new(bytes)?;
        // SAFETY: the buffer holds `bytes` bytes.
        unsafe { drv::memset_d8_sync(buf.ptr, 0, bytes) }.map_err(CudaError::driver)?;
        Ok(buf)
    }

    /// The address `offset` bytes in.
    pub fn at(&self, offset: usize) -> u64 {
        self.ptr + offset as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync and freed once; errors at teardown are moot.
        let _ = unsafe { drv::free_sync(self.ptr) };
    }
}

/// Turns a launcher's return code into an error naming the kernel.
pub fn check(kernel: &'static str, rc: i32) -> Result<(), CudaError> {
    match rc {
        0 => Ok(()),
        2 => Err(CudaError::OutOfMemory {
            wanted: 0,
            free: drv::mem_get_info().map(|(f, _)| f).unwrap_or(0),
        }),
        code => Err(CudaError::Kernel { kernel, code }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_without_a_usable_gpu_is_an_error_not_a_panic() {
        match Gpu::open(0) {
            Ok(_) | Err(CudaError::WrongArch { .. }) => {}
            Err(CudaError::NoDevice(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("unexpected error opening the GPU: {e}"),
        }
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn upload_and_download_round_trip() {
        let gpu = Gpu::open(0).expect("a CUDA device");
        let data: Vec<f32> = (0..4096).map(|i| i as f32 * 0.5 - 7.0).collect();
        let buf = DevBuf::new(data.len() * 4).expect("device memory");
        gpu.upload(buf.ptr, &data).expect("upload");
        let mut back = vec![0f32; data.len()];
        gpu.download(&mut back, buf.ptr).expect("download");
        assert_eq!(back, data);
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn pinned_copies_arrive_once_the_stream_is_waited_for() {
        let gpu = Gpu::open(0).expect("a CUDA device");
        let mut up = Pinned::<i32>::new(1000).expect("pinned memory");
        for (i, v) in up.iter_mut().enumerate() {
            *v = i as i32 * 3 - 500;
        }
        let buf = DevBuf::new(up.len() * 4).expect("device memory");
        gpu.upload(buf.ptr, &up).expect("upload");
        let mut back = Pinned::<i32>::new(up.len()).expect("pinned memory");
        gpu.download_later(&mut back, 600, buf.ptr)
            .expect("queued download");
        gpu.sync().expect("wait");
        assert_eq!(back[..600], up[..600]);
        assert!(
            back[600..].iter().all(|&v| v == 0),
            "only `len` values are copied"
        );
    }
}
