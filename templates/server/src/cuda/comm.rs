//! NCCL for tensor parallelism (cudarc's `nccl`, loaded at run time): one communicator
//! per rank, created non-blocking from a unique id, so that no NCCL call and no wait on
//! a collective can hang. Every wait polls the stream and the communicator's error state
//! against a deadline and aborts the communicator when the deadline passes.
//!
//! The unique id comes from `VIBESERVE_NCCL_ID` (256 hex digits) or the file named by
//! `VIBESERVE_NCCL_ID_FILE` (created by the first process that finds it missing), else it
//! is drawn fresh: a multi-process or multi-host launch shares it the same way.

use std::ffi::{CStr, c_void};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaStream, result as drv, sys as drv_sys};
use cudarc::nccl::sys as nccl;

use super::CudaError;
use super::spin::Spin;

/// How long a collective (or a step holding one) may take before the communicator is
/// aborted; `VIBESERVE_NCCL_TIMEOUT_S` overrides it. A correctness bound, not a tuning
/// knob: a healthy step takes milliseconds, a first step with lazy connection setup
/// well under a second.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sleeps between checks of a running step once the plan's spin is over (short: a
/// decode step is a few milliseconds).
const POLL: Duration = Duration::from_micros(20);

/// NCCL's `NCCL_CONFIG_UNDEF_INT`: "use the default".
const UNDEF: i32 = i32::MIN;

/// NVLink multicast (NVLS) can take a shared host's GPUs out of service: it stays off
/// for this process, set before NCCL reads its environment.
pub fn disable_nvls() {
    // SAFETY: called before any thread of this process reads the environment through
    // NCCL (the first communicator is created after this returns).
    unsafe { std::env::set_var("NCCL_NVLS_ENABLE", "0") };
}

/// The group's unique id: from `VIBESERVE_NCCL_ID`, `VIBESERVE_NCCL_ID_FILE`, or fresh.
pub fn unique_id() -> Result<nccl::ncclUniqueId, CudaError> {
    if let Ok(hex) = std::env::var("VIBESERVE_NCCL_ID") {
        return parse_id(&hex);
    }
    let Some(path) = std::env::var_os("VIBESERVE_NCCL_ID_FILE") else {
        return fresh_id();
    };
    if let Ok(hex) = std::fs::read_to_string(&path) {
        return parse_id(&hex);
    }
    let id = fresh_id()?;
    let hex: String = id
        .internal
        .iter()
        .map(|&b| format!("{:02x}", b as u8))
        .collect();
    std::fs::write(&path, hex)
        .map_err(|e| CudaError::Nccl(format!("writing the NCCL id file: {e}")))?;
    Ok(id)
}

fn fresh_id() -> Result<nccl::ncclUniqueId, CudaError> {
    check_library()?;
    cudarc::nccl::result::get_uniqueid().map_err(|e| CudaError::Nccl(describe(e.0)))
}

/// 128 bytes as 256 hex digits.
fn parse_id(hex: &str) -> Result<nccl::ncclUniqueId, CudaError> {
    let hex = hex.trim();
    let bad = || CudaError::Nccl(format!("an NCCL id is 256 hex digits, got {:?}", hex));
    if hex.len() != 256 {
        return Err(bad());
    }
    let mut internal = [0 as std::ffi::c_char; 128];
    for (i, byte) in internal.iter_mut().enumerate() {
        let v = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        *byte = v as std::ffi::c_char;
    }
    Ok(nccl::ncclUniqueId { internal })
}

/// cudarc panics on first use of a library it cannot load: ask first.
fn check_library() -> Result<(), CudaError> {
    // SAFETY: only tries to dlopen the library.
    if unsafe { nccl::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::Nccl(
            "libnccl.so is not on the library path (the nvidia-nccl-cu13 wheel ships \
             libnccl.so.2: link it as libnccl.so in a folder of LD_LIBRARY_PATH)"
                .into(),
        ))
    }
}

/// NCCL's words for a result code.
fn describe(rc: nccl::ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static string for any code.
    let text = unsafe { CStr::from_ptr(nccl::ncclGetErrorString(rc)) };
    format!("{rc:?}: {}", text.to_string_lossy())
}

/// One rank's communicator.
pub struct Comm {
    raw: nccl::ncclComm_t,
    /// This rank.
    pub rank: usize,
    /// Ranks in the group.
    pub world: usize,
    timeout: Duration,
    aborted: bool,
}

// SAFETY: the communicator is used by the one thread that owns its rank's model; moving
// it there after creation is what needs Send, and NCCL allows a communicator to be used
// from any thread when calls are serialised.
unsafe impl Send for Comm {}

impl Comm {
    /// Joins the group as `rank` of `world` on the current thread's CUDA context; every
    /// rank must call this (concurrently) with the same id. Waits at most the timeout.
    pub fn init(id: nccl::ncclUniqueId, rank: usize, world: usize) -> Result<Self, CudaError> {
        check_library()?;
        let timeout = std::env::var("VIBESERVE_NCCL_TIMEOUT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_TIMEOUT);
        // NCCL_CONFIG_INITIALIZER with `blocking = 0`: a copy of the config's size and
        // version lets an older libnccl read the fields it knows.
        let mut config = nccl::ncclConfig_t {
            size: std::mem::size_of::<nccl::ncclConfig_t>(),
            magic: 0xcafe_beef,
            version: 22800,
            blocking: 0,
            cgaClusterSize: UNDEF,
            minCTAs: UNDEF,
            maxCTAs: UNDEF,
            netName: std::ptr::null(),
            splitShare: UNDEF,
            trafficClass: UNDEF,
            commName: std::ptr::null(),
            collnetEnable: UNDEF,
            CTAPolicy: UNDEF,
            shrinkShare: UNDEF,
            nvlsCTAs: UNDEF,
            nChannelsPerNetPeer: UNDEF,
            nvlinkCentricSched: UNDEF,
            graphUsageMode: UNDEF,
            numRmaCtx: UNDEF,
            maxP2pPeers: UNDEF,
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` and `config` are live for the call; the id is by value.
        let rc = unsafe {
            nccl::ncclCommInitRankConfig(&mut raw, world as i32, id, rank as i32, &mut config)
        };
        let mut comm = Self {
            raw,
            rank,
            world,
            timeout,
            aborted: false,
        };
        comm.settle(rc, "ncclCommInitRankConfig")?;
        Ok(comm)
    }

    /// The deadline of an operation started now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Sums `count` f32 at `buf` across the ranks, in place, on `stream` (also while the
    /// stream is being captured into a graph).
    pub fn all_reduce_f32(
        &mut self,
        buf: u64,
        count: usize,
        stream: &CudaStream,
    ) -> Result<(), CudaError> {
        self.healthy()?;
        // SAFETY: `buf` holds `count` f32 on this rank's device; the stream is this rank's.
        let rc = unsafe {
            nccl::ncclAllReduce(
                buf as *const c_void,
                buf as *mut c_void,
                count,
                nccl::ncclDataType_t::ncclFloat32,
                nccl::ncclRedOp_t::ncclSum,
                self.raw,
                stream.cu_stream() as nccl::cudaStream_t,
            )
        };
        self.settle(rc, "ncclAllReduce")
    }

    /// Gathers `count` u64 from every rank at `send` into `recv` (`world · count`, in
    /// rank order) on `stream`.
    pub fn all_gather_u64(
        &mut self,
        send: u64,
        recv: u64,
        count: usize,
        stream: &CudaStream,
    ) -> Result<(), CudaError> {
        self.healthy()?;
        // SAFETY: `send` holds `count` and `recv` `world · count` u64 on this device.
        let rc = unsafe {
            nccl::ncclAllGather(
                send as *const c_void,
                recv as *mut c_void,
                count,
                nccl::ncclDataType_t::ncclUint64,
                self.raw,
                stream.cu_stream() as nccl::cudaStream_t,
            )
        };
        self.settle(rc, "ncclAllGather")
    }

    /// Waits for everything queued on `stream` by `deadline`, watching the communicator:
    /// an NCCL error or the deadline aborts it (no later call can hang on a dead peer).
    pub fn wait(&mut self, stream: &CudaStream, deadline: Instant) -> Result<(), CudaError> {
        self.healthy()?;
        let event = stream
            .record_event(Some(drv_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(CudaError::driver)?;
        let spin = Spin::start();
        loop {
            // SAFETY: the event is live until the end of this function.
            match unsafe { drv::event::query(event.cu_event()) } {
                Ok(()) => return Ok(()),
                Err(e) if e.0 == drv_sys::CUresult::CUDA_ERROR_NOT_READY => {}
                Err(e) => return Err(CudaError::driver(e)),
            }
            self.async_error()?;
            if Instant::now() > deadline {
                return Err(self.abort(format!(
                    "rank {} of {}: a step with collectives did not finish within {:?} \
                     (a peer rank died or hangs); the communicator was aborted",
                    self.rank, self.world, self.timeout
                )));
            }
            spin.pause(POLL);
        }
    }

    /// Aborts the communicator (any collective in flight returns) and says why.
    pub fn abort(&mut self, why: String) -> CudaError {
        if !self.aborted {
            self.aborted = true;
            // SAFETY: the communicator is live; abort is safe with operations in flight.
            unsafe { nccl::ncclCommAbort(self.raw) };
        }
        CudaError::Nccl(why)
    }

    fn healthy(&self) -> Result<(), CudaError> {
        if self.aborted {
            return Err(CudaError::Nccl(format!(
                "rank {}'s communicator was aborted after an earlier failure",
                self.rank
            )));
        }
        Ok(())
    }

    /// The communicator's asynchronous state: an error aborts it.
    fn async_error(&mut self) -> Result<bool, CudaError> {
        let mut state = nccl::ncclResult_t::ncclSuccess;
        // SAFETY: the communicator is live and `state` outlives the call.
        let rc = unsafe { nccl::ncclCommGetAsyncError(self.raw, &mut state) };
        for r in [rc, state] {
            match r {
                nccl::ncclResult_t::ncclSuccess => {}
                nccl::ncclResult_t::ncclInProgress => return Ok(false),
                err => {
                    let why = format!("rank {}: NCCL error {}", self.rank, describe(err));
                    return Err(self.abort(why));
                }
            }
        }
        Ok(true)
    }

    /// Turns a non-blocking call's result into done or an error, polling while it is in
    /// progress, up to the timeout.
    fn settle(&mut self, rc: nccl::ncclResult_t, call: &str) -> Result<(), CudaError> {
        match rc {
            nccl::ncclResult_t::ncclSuccess | nccl::ncclResult_t::ncclInProgress => {}
            err => {
                let why = format!("rank {}: {call} failed: {}", self.rank, describe(err));
                return Err(if self.raw.is_null() {
                    CudaError::Nccl(why)
                } else {
                    self.abort(why)
                });
            }
        }
        let deadline = self.deadline();
        while !self.async_error()? {
            if Instant::now() > deadline {
                let why = format!(
                    "rank {} of {}: {call} did not complete within {:?} (are all ranks up?)",
                    self.rank, self.world, self.timeout
                );
                return Err(self.abort(why));
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if !self.aborted && !self.raw.is_null() {
            // Abort, not destroy: destroy would wait for peers that may be gone.
            // SAFETY: the communicator is live and used by no one else.
            unsafe { nccl::ncclCommAbort(self.raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_survives_its_hex_form() {
        let hex: String = (0..128u32)
            .map(|i| format!("{:02x}", (i * 37 % 256) as u8))
            .collect();
        let id = parse_id(&format!("{hex}\n")).expect("a valid id");
        let back: String = id
            .internal
            .iter()
            .map(|&b| format!("{:02x}", b as u8))
            .collect();
        assert_eq!(back, hex);
        assert!(parse_id("abc").is_err(), "too short");
        assert!(parse_id(&"zz".repeat(128)).is_err(), "not hex");
    }
}
