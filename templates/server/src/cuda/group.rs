//! The model on one GPU, or split over several (tensor parallelism): one thread per
//! rank, each with its own context, stream, cuBLAS handle and NCCL communicator. The
//! scheduler, sampler and HTTP layer run once; each step's batch goes to every rank,
//! and the ranks' vocabulary slices come back as one logits matrix or one token per row.
//!
//! Every wait is bounded: a rank that errs, dies or hangs gives an error (the engine
//! fails the step's requests), and the group refuses every later step with the same
//! message instead of hanging.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use cudarc::driver::CudaContext;

use super::comm::{self, Comm};
use super::config::HfConfig;
use super::spin;
use super::{CommChoice, CudaError, CudaLlama, Rank, StepInput};
use crate::shard::{Shard, check_split};

/// How long the leader waits for a rank's answer beyond the communicator's own deadline
/// (which fires first when a peer is gone); loading the weights may take minutes.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
const LOAD_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long dropping the group waits for the ranks to abort and free their GPUs.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// What the leader asks a rank to do.
enum Job {
    Step(Arc<StepInput>),
    Sampled(usize),
    Logits(usize),
    /// Abort the communicator (collectives in flight return) and stop.
    Abort,
}

/// A rank's answer.
enum Reply {
    Loaded { weight_bytes: usize, device: String },
    Done,
    Sampled(Vec<i32>, Vec<f32>),
    Logits(Vec<f32>, usize),
}

/// One rank's thread, seen from the leader.
struct Worker {
    jobs: Sender<Job>,
    replies: Receiver<Result<Reply, String>>,
}

/// The ranks of a tensor-parallel model, seen from the leader.
pub struct Ranks {
    workers: Vec<Worker>,
    config: HfConfig,
    /// Set by the first failure: the group cannot run steps any more.
    failed: Option<String>,
}

/// A model on one GPU or split over `tensor_parallel` GPUs of this host.
pub enum ModelGroup {
    /// One GPU, driven from the caller's thread.
    One(Box<CudaLlama>),
    /// Several, one thread each.
    Split(Ranks),
}

/// Facts about a loaded model.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// Weight bytes on each rank (what a batch-1 decode step reads there).
    pub rank_weight_bytes: Vec<usize>,
    /// The name of device 0.
    pub device: String,
}

impl ModelGroup {
    /// Loads the model folder `dir` over devices `0..tensor_parallel` (1: one GPU in this
    /// thread), summing partial products as `choice` says. The split is checked against
    /// the model's shape first.
    pub fn load(
        dir: &Path,
        tensor_parallel: usize,
        choice: CommChoice,
    ) -> Result<(Self, GroupInfo), CudaError> {
        let config = HfConfig::load(dir)?;
        let c = &config;
        check_split(
            tensor_parallel,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.intermediate_size,
            c.vocab_size,
        )
        .map_err(|e| CudaError::Model(format!("tensor_parallel = {tensor_parallel}: {e}")))?;
        if tensor_parallel == 1 {
            let model = CudaLlama::load(dir, Rank::single())?;
            let info = GroupInfo {
                rank_weight_bytes: vec![model.weight_bytes()],
                device: model.gpu().ctx.name().unwrap_or_default(),
            };
            return Ok((Self::One(Box::new(model)), info));
        }
        if std::env::var("NCCL_NVLS_ENABLE").as_deref() != Ok("0") {
            comm::disable_nvls();
        }
        let id = comm::unique_id()?;
        let workers: Vec<Worker> = (0..tensor_parallel)
            .map(|r| {
                let shard = Shard::new(r, tensor_parallel);
                spawn(dir.to_path_buf(), shard, choice, id)
            })
            .collect::<Result<_, _>>()?;
        let mut ranks = Ranks {
            workers,
            config,
            failed: None,
        };
        let mut info = GroupInfo {
            rank_weight_bytes: Vec::new(),
            device: String::new(),
        };
        for reply in ranks.gather(LOAD_TIMEOUT)? {
            if let Reply::Loaded {
                weight_bytes,
                device,
            } = reply
            {
                info.rank_weight_bytes.push(weight_bytes);
                if info.device.is_empty() {
                    info.device = device;
                }
            }
        }
        Ok((Self::Split(ranks), info))
    }

    /// The model's configuration.
    pub fn config(&self) -> &HfConfig {
        match self {
            Self::One(m) => &m.config,
            Self::Split(r) => &r.config,
        }
    }

    /// Runs one step on every rank (enqueued; the results are waited for by
    /// [`Self::sampled`], [`Self::logits`] or [`Self::finish`]).
    pub fn step(&mut self, input: &StepInput) -> Result<(), CudaError> {
        match self {
            Self::One(m) => m.step(input),
            Self::Split(r) => {
                let shared = Arc::new(input.clone());
                r.send(|| Job::Step(Arc::clone(&shared)))?;
                r.gather(REPLY_TIMEOUT).map(drop)
            }
        }
    }

    /// Waits for the last step.
    pub fn finish(&mut self) -> Result<(), CudaError> {
        match self {
            Self::One(m) => m.finish(),
            Self::Split(_) => self.sampled(0).map(drop),
        }
    }

    /// The selected token of each of the first `n` logits rows of the last step: the
    /// best of the ranks' winners over their vocabulary slices (a distributed argmax).
    pub fn sampled(&mut self, n: usize) -> Result<Vec<i32>, CudaError> {
        let Self::Split(r) = self else {
            let Self::One(m) = self else { unreachable!() };
            return m.sampled(n);
        };
        r.send(|| Job::Sampled(n))?;
        let mut best: Vec<(f32, i32)> = vec![(f32::NEG_INFINITY, 0); n];
        for reply in r.gather(REPLY_TIMEOUT)? {
            if let Reply::Sampled(ids, scores) = reply {
                for (b, (id, score)) in best.iter_mut().zip(ids.into_iter().zip(scores)) {
                    // Ranks come in vocabulary order: a tie keeps the lower token id.
                    if score > b.0 {
                        *b = (score, id);
                    }
                }
            }
        }
        Ok(best.into_iter().map(|(_, id)| id).collect())
    }

    /// The f32 logits of the first `n` rows of the last step, the whole vocabulary per
    /// row (the ranks' slices gathered on the host).
    pub fn logits(&mut self, n: usize) -> Result<Vec<f32>, CudaError> {
        let Self::Split(r) = self else {
            let Self::One(m) = self else { unreachable!() };
            return m.logits(n);
        };
        let vocab = r.config.vocab_size;
        r.send(|| Job::Logits(n))?;
        let mut out = vec![0f32; n * vocab];
        for reply in r.gather(REPLY_TIMEOUT)? {
            if let Reply::Logits(part, start) = reply {
                let width = part.len() / n.max(1);
                for (row, chunk) in part.chunks_exact(width.max(1)).enumerate().take(n) {
                    out[row * vocab + start..row * vocab + start + width].copy_from_slice(chunk);
                }
            }
        }
        Ok(out)
    }
}

impl Ranks {
    /// Sends a job to every rank.
    fn send(&mut self, job: impl Fn() -> Job) -> Result<(), CudaError> {
        if let Some(why) = &self.failed {
            return Err(CudaError::Nccl(why.clone()));
        }
        for (rank, w) in self.workers.iter().enumerate() {
            if w.jobs.send(job()).is_err() {
                return Err(self.fail(format!("rank {rank}'s thread is gone")));
            }
        }
        Ok(())
    }

    /// Every rank's reply, in rank order; the first failure fails the group.
    fn gather(&mut self, timeout: Duration) -> Result<Vec<Reply>, CudaError> {
        let mut replies = Vec::with_capacity(self.workers.len());
        let mut first_error = None;
        for (rank, w) in self.workers.iter().enumerate() {
            // Wait for every rank even after one failed, so no reply is left queued.
            match spin::recv(&w.replies, Some(timeout)) {
                Ok(Ok(reply)) => replies.push(reply),
                Ok(Err(why)) => {
                    first_error.get_or_insert(why);
                }
                Err(RecvTimeoutError::Timeout) => {
                    first_error.get_or_insert(format!("rank {rank} did not answer in {timeout:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    first_error.get_or_insert(format!("rank {rank}'s thread died"));
                }
            }
        }
        match first_error {
            Some(why) => Err(self.fail(why)),
            None => Ok(replies),
        }
    }

    /// Fails the group: the ranks still alive abort their communicators, so none stays
    /// blocked in a collective whose peer is gone.
    fn fail(&mut self, why: String) -> CudaError {
        if self.failed.is_none() {
            for w in &self.workers {
                let _ = w.jobs.send(Job::Abort);
            }
        }
        let why = self.failed.get_or_insert(why).clone();
        CudaError::Nccl(why)
    }
}

impl Drop for Ranks {
    /// Stops every rank and waits (bounded) until each has freed its GPU, so the process
    /// does not exit while a rank is still tearing down.
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + TEARDOWN_TIMEOUT;
        for w in &self.workers {
            let _ = w.jobs.send(Job::Abort);
        }
        for w in &self.workers {
            // A rank's reply sender goes away when its thread has dropped its model.
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match w.replies.recv_timeout(left) {
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
    }
}

/// Starts rank `shard.rank`'s thread: device `shard.rank`, its communicator, its slice.
fn spawn(
    dir: PathBuf,
    shard: Shard,
    choice: CommChoice,
    id: cudarc::nccl::sys::ncclUniqueId,
) -> Result<Worker, CudaError> {
    let (jobs, job_rx) = mpsc::channel::<Job>();
    let (reply_tx, replies) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("tp-rank-{}", shard.rank))
        .spawn(move || {
            let model = load_rank(&dir, shard, choice, id);
            let model = match model {
                Ok(m) => {
                    let loaded = Reply::Loaded {
                        weight_bytes: m.weight_bytes(),
                        device: m.gpu().ctx.name().unwrap_or_default(),
                    };
                    let _ = reply_tx.send(Ok(loaded));
                    m
                }
                Err(e) => {
                    let _ = reply_tx.send(Err(format!("rank {}: {e}", shard.rank)));
                    return;
                }
            };
            serve_rank(model, &job_rx, &reply_tx);
        })
        .map_err(|e| CudaError::Nccl(format!("starting rank {}'s thread: {e}", shard.rank)))?;
    Ok(Worker { jobs, replies })
}

/// Joins the group and loads this rank's slice of the model.
fn load_rank(
    dir: &Path,
    shard: Shard,
    choice: CommChoice,
    id: cudarc::nccl::sys::ncclUniqueId,
) -> Result<CudaLlama, CudaError> {
    let ctx = CudaContext::new(shard.rank).map_err(|e| CudaError::NoDevice(e.to_string()))?;
    ctx.bind_to_thread().map_err(CudaError::driver)?;
    let comm = Comm::init(id, shard.rank, shard.world)?;
    let rank = Rank {
        ordinal: shard.rank,
        shard,
        comm: Some(comm),
        choice,
    };
    CudaLlama::load(dir, rank)
}

/// Fault injection for the GPU check (`VIBESERVE_TP_FAULT=RANK:STEPS`): the step at
/// which rank RANK's thread stops as if its process had died, so that the check can see
/// the others give an error, not hang.
fn fault_step(rank: usize) -> Option<usize> {
    let spec = std::env::var("VIBESERVE_TP_FAULT").ok()?;
    let (r, steps) = spec.split_once(':')?;
    (r.parse::<usize>().ok()? == rank).then(|| steps.parse().ok())?
}

/// A rank's loop: one job at a time until the leader hangs up.
fn serve_rank(mut model: CudaLlama, jobs: &Receiver<Job>, replies: &Sender<Result<Reply, String>>) {
    let (fault, mut steps) = (fault_step(model.rank()), 0);
    while let Ok(job) = spin::recv(jobs, None) {
        let reply = match job {
            Job::Step(_) if fault == Some(steps) => return,
            Job::Abort => {
                model.abort();
                return;
            }
            Job::Step(input) => {
                steps += 1;
                model.step(&input).map(|()| Reply::Done)
            }
            Job::Sampled(n) => model
                .sampled_scored(n)
                .map(|(ids, scores)| Reply::Sampled(ids, scores)),
            Job::Logits(n) => {
                let start = model.vocab_rows().start;
                model.logits(n).map(|l| Reply::Logits(l, start))
            }
        };
        let failed = reply.is_err();
        let reply = reply.map_err(|e| format!("rank {}: {e}", model.rank()));
        if replies.send(reply).is_err() || failed {
            // A failed rank stops: its communicator is aborted or its device is in an
            // unknown state; the leader fails the group.
            return;
        }
    }
}
