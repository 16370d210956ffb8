//! The one-shot all-reduce of two ranks over peer memory (`all_reduce = "one-shot"`):
//! one kernel per sum instead of NCCL's launch and protocol, for the small messages of
//! batch-1 decode (16 KB for an 8B model). Peer access is plain CUDA peer-to-peer
//! (`cuCtxEnablePeerAccess`): no NVLink multicast. Larger messages go to NCCL.

use std::sync::Arc;

use cudarc::driver::{CudaContext, sys as drv_sys};

use super::comm::Comm;
use super::device::{DevBuf, Gpu, check};
use super::{CudaError, ffi};
use crate::plan_cuda::AllReduce;

/// Largest message (bytes) the one-shot kernel sums; above it NCCL's ring is faster and
/// the exchange buffers would grow. 512 KiB is a 32-token residual of a 4096-wide model.
const ONE_SHOT_MAX_BYTES: usize = 512 * 1024;
/// Threads per block of the one-shot kernel (each moves 16 bytes per pass).
const ONE_SHOT_THREADS: usize = 256;
/// Most blocks of the one-shot kernel (and flags per rank): enough SMs to pull 512 KiB
/// over NVLink, few enough to signal cheaply.
const ONE_SHOT_MAX_BLOCKS: usize = 32;
/// How long the kernel waits for the peer's signal before it gives up and flags an
/// error (below the communicator's deadline, so the step fails instead of hanging).
const ONE_SHOT_TIMEOUT_NS: i64 = 10_000_000_000;

/// The plan's all-reduce named as on the command line: `nccl` or `one-shot`.
pub fn parse_all_reduce(s: &str) -> Result<AllReduce, String> {
    match s {
        "nccl" => Ok(AllReduce::Nccl),
        "one-shot" => Ok(AllReduce::OneShot),
        other => Err(format!("all-reduce {other:?} is not nccl or one-shot")),
    }
}

/// One rank's half of the one-shot all-reduce: its exchange slots and flags, and the
/// peer's, reachable through peer access.
pub struct PeerSum {
    exchange: DevBuf,
    flags: DevBuf,
    epochs: DevBuf,
    error: DevBuf,
    peer_exchange: u64,
    peer_flags: u64,
    rank: usize,
    /// Keeps the peer's primary context retained while its memory is mapped here.
    _peer: Arc<CudaContext>,
}

// SAFETY: device addresses and a retained context handle; used by the rank's thread only.
unsafe impl Send for PeerSum {}

impl PeerSum {
    /// Enables access to the peer's device from this rank's context and trades buffer
    /// addresses with the peer through `comm` (both ranks call this at load).
    pub fn new(gpu: &Gpu, comm: &mut Comm) -> Result<Self, CudaError> {
        if comm.world != 2 {
            return Err(CudaError::Nccl(format!(
                "the one-shot all-reduce serves 2 ranks, not {}: use all_reduce = \"nccl\"",
                comm.world
            )));
        }
        let peer_rank = 1 - comm.rank;
        let peer = CudaContext::new(peer_rank).map_err(CudaError::driver)?;
        gpu.ctx.bind_to_thread().map_err(CudaError::driver)?;
        let mut can = 0;
        // SAFETY: both device handles are valid; `can` outlives the call.
        unsafe { drv_sys::cuDeviceCanAccessPeer(&mut can, gpu.ctx.cu_device(), peer.cu_device()) }
            .result()
            .map_err(CudaError::driver)?;
        if can == 0 {
            return Err(CudaError::Nccl(format!(
                "GPU {} cannot access GPU {peer_rank}'s memory (no peer-to-peer path): use \
                 all_reduce = \"nccl\"",
                comm.rank
            )));
        }
        // SAFETY: this rank's context is current and the peer's is retained.
        match unsafe { drv_sys::cuCtxEnablePeerAccess(peer.cu_ctx(), 0) } {
            drv_sys::CUresult::CUDA_SUCCESS
            | drv_sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {}
            err => return Err(CudaError::driver(cudarc::driver::DriverError(err))),
        }
        let cap_bytes = ONE_SHOT_MAX_BYTES;
        let flag_bytes = ONE_SHOT_MAX_BLOCKS * 4;
        let exchange = DevBuf::zeroed(2 * cap_bytes)?;
        let (flags, epochs) = (DevBuf::zeroed(flag_bytes)?, DevBuf::zeroed(flag_bytes)?);
        let error = DevBuf::zeroed(4)?;
        let (mine, all) = (DevBuf::new(16)?, DevBuf::new(32)?);
        gpu.upload(mine.ptr, &[exchange.ptr, flags.ptr])?;
        comm.all_gather_u64(mine.ptr, all.ptr, 2, &gpu.stream)?;
        let deadline = comm.deadline();
        comm.wait(&gpu.stream, deadline)?;
        let mut addresses = [0u64; 4];
        gpu.download(&mut addresses, all.ptr)?;
        Ok(Self {
            exchange,
            flags,
            epochs,
            error,
            peer_exchange: addresses[2 * peer_rank],
            peer_flags: addresses[2 * peer_rank + 1],
            rank: comm.rank,
            _peer: peer,
        })
    }

    /// Whether a sum of `count` f32 is the one-shot kernel's to do.
    pub fn fits(&self, count: usize) -> bool {
        count.is_multiple_of(4) && count * 4 <= ONE_SHOT_MAX_BYTES
    }

    /// Enqueues the sum of `count` f32 at `buf` with the peer's (in place).
    pub fn sum(&self, gpu: &Gpu, buf: u64, count: usize) -> Result<(), CudaError> {
        let blocks = (count / 4)
            .div_ceil(ONE_SHOT_THREADS)
            .clamp(1, ONE_SHOT_MAX_BLOCKS);
        // SAFETY: `buf` holds `count` f32 on this device; the exchange slots hold
        // ONE_SHOT_MAX_BYTES each (checked by `fits`, and again by the launcher); the
        // peer's addresses are mapped through peer access; flags hold MAX_BLOCKS ints.
        check("allreduce2", unsafe {
            ffi::vs_allreduce2(
                gpu.raw_stream(),
                buf as *mut f32,
                count as i32,
                self.exchange.ptr as *mut f32,
                self.peer_exchange as *const f32,
                (ONE_SHOT_MAX_BYTES / 4) as i32,
                self.flags.ptr as *mut i32,
                self.peer_flags as *mut i32,
                self.epochs.ptr as *mut i32,
                self.error.ptr as *mut i32,
                ONE_SHOT_TIMEOUT_NS,
                blocks as i32,
                ONE_SHOT_THREADS as i32,
            )
        })
    }

    /// After a step: an error if any one-shot sum gave up waiting for the peer.
    pub fn check_peer(&self, gpu: &Gpu) -> Result<(), CudaError> {
        let mut error = [0i32];
        gpu.download(&mut error, self.error.ptr)?;
        if error[0] != 0 {
            return Err(CudaError::Nccl(format!(
                "rank {}: the peer did not join a one-shot all-reduce within {} s",
                self.rank,
                ONE_SHOT_TIMEOUT_NS / 1_000_000_000
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_names_parse_and_others_are_refused() {
        assert_eq!(parse_all_reduce("nccl"), Ok(AllReduce::Nccl));
        assert_eq!(parse_all_reduce("one-shot"), Ok(AllReduce::OneShot));
        assert!(parse_all_reduce("two-shot").is_err());
    }
}
