//! Communication overlapped with compute (`OVERLAP_COMM`): a step of several tokens is
//! split into two micro-batches of rows, and each half's all-reduces run on a second
//! stream of the rank while the compute stream works on the other half. Events order the
//! two streams (a fork before each sum, a join before its rows are read again), so a
//! decode graph captures both streams. Every sum runs on the side stream in the same
//! order on every rank, as NCCL and the one-shot kernel need.

use std::cell::Cell;
use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream};

use super::device::Gpu;
use super::{AllReduce, CudaError};
use crate::plan_cuda;

/// Halves a step may be split into.
const PARTS: usize = 2;

/// How a split model's ranks sum their partial products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommChoice {
    /// NCCL's all-reduce or the one-shot kernel.
    pub all_reduce: AllReduce,
    /// Split steps of several tokens in two and overlap one half's all-reduce with the
    /// other half's products.
    pub overlap: bool,
}

impl CommChoice {
    /// The plan's choice.
    pub fn planned() -> Self {
        Self {
            all_reduce: plan_cuda::ALL_REDUCE,
            overlap: plan_cuda::OVERLAP_COMM,
        }
    }
}

/// `on` or `off`, as on the command line.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is not on or off")),
    }
}

/// The row ranges a step of `n` tokens runs as: two halves when `split` and there are
/// two rows to split, else the whole step.
pub fn parts(n: usize, split: bool) -> Vec<Range<usize>> {
    if split && n >= PARTS {
        let half = n.div_ceil(PARTS);
        vec![0..half, half..n]
    } else {
        // One part: the whole step (a struct literal, not `vec![0..n]`, which reads as
        // a typo for `(0..n).collect()`).
        vec![Range { start: 0, end: n }]
    }
}

/// A rank's second stream for the sums of split steps, and the events that order it
/// against the compute stream.
pub struct SideStream {
    stream: Arc<CudaStream>,
    /// Recorded on the compute stream when a half's partial products are written.
    fork: [CudaEvent; PARTS],
    /// Recorded on the side stream when a half's sum is done.
    join: [CudaEvent; PARTS],
    /// Which halves have a sum in flight the compute stream has not waited for (a wait
    /// on an event recorded outside the step would break a graph capture).
    pending: Cell<[bool; PARTS]>,
}

impl SideStream {
    /// A second stream on `gpu`'s context.
    pub fn new(gpu: &Gpu) -> Result<Self, CudaError> {
        let stream = gpu.stream.fork().map_err(CudaError::driver)?;
        let event = || gpu.ctx.new_event(None).map_err(CudaError::driver);
        Ok(Self {
            stream,
            fork: [event()?, event()?],
            join: [event()?, event()?],
            pending: Cell::new([false; PARTS]),
        })
    }

    /// Starts half `part`'s sum: the side stream waits for what the compute stream has
    /// queued so far, and is returned to enqueue the sum on (then call [`Self::forked`]).
    pub fn fork(&self, main: &CudaStream, part: usize) -> Result<&CudaStream, CudaError> {
        self.fork[part].record(main).map_err(CudaError::driver)?;
        self.stream
            .wait(&self.fork[part])
            .map_err(CudaError::driver)?;
        Ok(&self.stream)
    }

    /// Marks half `part`'s sum as enqueued on the side stream.
    pub fn forked(&self, part: usize) -> Result<(), CudaError> {
        self.join[part]
            .record(&self.stream)
            .map_err(CudaError::driver)?;
        let mut pending = self.pending.get();
        pending[part] = true;
        self.pending.set(pending);
        Ok(())
    }

    /// Makes the compute stream wait for half `part`'s sum, if one is in flight.
    pub fn join(&self, main: &CudaStream, part: usize) -> Result<(), CudaError> {
        let mut pending = self.pending.get();
        if pending[part] {
            main.wait(&self.join[part]).map_err(CudaError::driver)?;
            pending[part] = false;
            self.pending.set(pending);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_splits_in_two_halves_only_when_asked_and_possible() {
        assert_eq!(parts(1, true), vec![0..1]);
        assert_eq!(parts(7, false), vec![0..7]);
        assert_eq!(parts(7, true), vec![0..4, 4..7]);
        assert_eq!(parts(128, true), vec![0..64, 64..128]);
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("yes").is_err());
    }
}
