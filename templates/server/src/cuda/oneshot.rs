//! The one-shot all-reduces over peer memory (`all_reduce = "one-shot"` or
//! `"one-shot-push"`): one kernel per sum instead of NCCL's launch and protocol, for the
//! small messages of batch-1 decode (16 KB for an 8B model, 32 KB for a 70B one). `pull`
//! publishes, flags and reads every peer's copy; `push` writes into every peer's inbox and
//! polls its own (2, 4 or 8 ranks). Peer access is plain CUDA peer-to-peer
//! (`cuCtxEnablePeerAccess`): no NVLink multicast. Larger messages go to NCCL.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, sys as drv_sys};

use super::comm::Comm;
use super::device::{DevBuf, Gpu, check};
use super::{CudaError, ffi};
use crate::plan_cuda::{self, AllReduce};

/// Threads per block of the one-shot kernel (each moves 16 bytes per pass).
const ONE_SHOT_THREADS: usize = 256;
/// Most ranks the kernel serves (the length of the peer table's arrays).
const MAX_RANKS: usize = ffi::VS_MAX_RANKS as usize;

/// The plan's all-reduce named as on the command line: `nccl` or `one-shot`.
pub fn parse_all_reduce(s: &str) -> Result<AllReduce, String> {
    match s {
        "nccl" => Ok(AllReduce::Nccl),
        "one-shot" => Ok(AllReduce::OneShot),
        "one-shot-push" => Ok(AllReduce::OneShotPush),
        other => Err(format!(
            "all-reduce {other:?} is not nccl, one-shot or one-shot-push"
        )),
    }
}

/// The plan's wait for a peer, in nanoseconds (the kernel's clock).
fn timeout_ns() -> i64 {
    plan_cuda::ONE_SHOT_TIMEOUT_MS as i64 * 1_000_000
}

/// One rank's part of a one-shot all-reduce: its exchange slots (pull) or inboxes (push)
/// and flags, and every peer's, reachable through peer access.
pub struct PeerSum {
    /// Push (inboxes polled for arrival) rather than pull (slots read after a flag).
    push: bool,
    exchange: DevBuf,
    /// This rank's flags, which the peers set (reached through `peers`).
    _flags: DevBuf,
    epochs: DevBuf,
    error: DevBuf,
    /// Every rank's exchange and flags (this rank's own are local).
    peers: ffi::vs_peers,
    rank: usize,
    world: usize,
    /// Keeps the peers' primary contexts retained while their memory is mapped here.
    _peers: Vec<Arc<CudaContext>>,
}

// SAFETY: device addresses and retained context handles; used by the rank's thread only.
unsafe impl Send for PeerSum {}

/// Enables access from `gpu`'s context to device `peer`'s memory, retaining its context.
fn enable_peer(gpu: &Gpu, rank: usize, peer: usize) -> Result<Arc<CudaContext>, CudaError> {
    let ctx = CudaContext::new(peer).map_err(CudaError::driver)?;
    gpu.ctx.bind_to_thread().map_err(CudaError::driver)?;
    let mut can = 0;
    // SAFETY: both device handles are valid; `can` outlives the call.
    unsafe { drv_sys::cuDeviceCanAccessPeer(&mut can, gpu.ctx.cu_device(), ctx.cu_device()) }
        .result()
        .map_err(CudaError::driver)?;
    if can == 0 {
        return Err(CudaError::Nccl(format!(
            "GPU {rank} cannot access GPU {peer}'s memory (no peer-to-peer path): use \
             all_reduce = \"nccl\""
        )));
    }
    // SAFETY: this rank's context is current and the peer's is retained.
    match unsafe { drv_sys::cuCtxEnablePeerAccess(ctx.cu_ctx(), 0) } {
        drv_sys::CUresult::CUDA_SUCCESS
        | drv_sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => Ok(ctx),
        err => Err(CudaError::driver(cudarc::driver::DriverError(err))),
    }
}

impl PeerSum {
    /// Enables access to every peer's device from this rank's context and trades buffer
    /// addresses with the peers through `comm` (every rank calls this at load). `push`:
    /// the push kernel's inboxes (two of a slot per rank, empty) instead of pull's slots.
    pub fn new(gpu: &Gpu, comm: &mut Comm, push: bool) -> Result<Self, CudaError> {
        let world = comm.world;
        if !matches!(world, 2 | 4 | 8) {
            return Err(CudaError::Nccl(format!(
                "the one-shot all-reduce serves 2, 4 or 8 ranks, not {world}: use \
                 all_reduce = \"nccl\""
            )));
        }
        let peers = (0..world)
            .filter(|&p| p != comm.rank)
            .map(|p| enable_peer(gpu, comm.rank, p))
            .collect::<Result<Vec<_>, _>>()?;
        let blocks = plan_cuda::ONE_SHOT_MAX_BLOCKS;
        let exchange = if push {
            let inboxes = DevBuf::new(2 * world * plan_cuda::ONE_SHOT_MAX_BYTES)?;
            // Every element starts empty: all ones is the kernel's "not arrived" NaN.
            // SAFETY: the buffer holds `inboxes.bytes` bytes.
            unsafe { cudarc::driver::result::memset_d8_sync(inboxes.ptr, 0xff, inboxes.bytes) }
                .map_err(CudaError::driver)?;
            inboxes
        } else {
            DevBuf::zeroed(2 * plan_cuda::ONE_SHOT_MAX_BYTES)?
        };
        let flags = DevBuf::zeroed(MAX_RANKS * blocks * 4)?;
        let epochs = DevBuf::zeroed(blocks * 4)?;
        let error = DevBuf::zeroed(4)?;
        let (mine, all) = (DevBuf::new(16)?, DevBuf::new(16 * world)?);
        gpu.upload(mine.ptr, &[exchange.ptr, flags.ptr])?;
        comm.all_gather_u64(mine.ptr, all.ptr, 2, &gpu.stream)?;
        let deadline = comm.deadline();
        comm.wait(&gpu.stream, deadline)?;
        let mut addresses = vec![0u64; 2 * world];
        gpu.download(&mut addresses, all.ptr)?;
        let mut table = ffi::vs_peers {
            exchange: [std::ptr::null(); MAX_RANKS],
            flags: [std::ptr::null_mut(); MAX_RANKS],
        };
        for (p, pair) in addresses.chunks_exact(2).enumerate() {
            table.exchange[p] = pair[0] as *const f32;
            table.flags[p] = pair[1] as *mut i32;
        }
        Ok(Self {
            push,
            exchange,
            _flags: flags,
            epochs,
            error,
            peers: table,
            rank: comm.rank,
            world,
            _peers: peers,
        })
    }

    /// Whether a sum of `count` f32 is the one-shot kernel's to do.
    pub fn fits(&self, count: usize) -> bool {
        count.is_multiple_of(4) && count * 4 <= plan_cuda::ONE_SHOT_MAX_BYTES
    }

    /// Enqueues the sum of `count` f32 at `buf` with every peer's (in place) on `stream`.
    pub fn sum(&self, stream: &CudaStream, buf: u64, count: usize) -> Result<(), CudaError> {
        let max_blocks = plan_cuda::ONE_SHOT_MAX_BLOCKS;
        let cap = (plan_cuda::ONE_SHOT_MAX_BYTES / 4) as i32;
        let blocks = (count / 4).div_ceil(ONE_SHOT_THREADS).clamp(1, max_blocks);
        // SAFETY: `buf` holds `count` f32 on this device; every exchange holds two slots
        // of ONE_SHOT_MAX_BYTES (pull) or two inboxes of `world` such slots (push)
        // (checked by `fits`, and again by the launcher); the peers' addresses are mapped
        // through peer access; flags hold MAX_RANKS · max_blocks ints and epochs
        // max_blocks on every rank.
        check("allreduce_peers", unsafe {
            ffi::vs_allreduce_peers(
                stream.cu_stream() as ffi::vs_stream,
                buf as *mut f32,
                count as i32,
                self.exchange.ptr as *mut f32,
                self.peers,
                self.world as i32,
                self.rank as i32,
                cap,
                self.epochs.ptr as *mut i32,
                self.error.ptr as *mut i32,
                timeout_ns(),
                max_blocks as i32,
                blocks as i32,
                ONE_SHOT_THREADS as i32,
                i32::from(self.push),
                plan_cuda::CUDA_EARLY_LAUNCH.into(),
            )
        })
    }

    /// After a step: an error if any one-shot sum gave up waiting for a peer.
    pub fn check_peer(&self, gpu: &Gpu) -> Result<(), CudaError> {
        let mut error = [0i32];
        gpu.download(&mut error, self.error.ptr)?;
        if error[0] != 0 {
            return Err(CudaError::Nccl(format!(
                "rank {}: a peer did not join a one-shot all-reduce within {} ms",
                self.rank,
                plan_cuda::ONE_SHOT_TIMEOUT_MS
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
        assert_eq!(
            parse_all_reduce("one-shot-push"),
            Ok(AllReduce::OneShotPush)
        );
        assert!(parse_all_reduce("two-shot").is_err());
    }
}
