//! The engine loop: one thread owns the model, the KV cache and the scheduler, and
//! runs steps while there is work. The HTTP side talks to it through an
//! [`EngineHandle`]: requests go in over a channel, and each request's [`Event`]s
//! come back on its own channel (whose closing, when a client goes away, cancels
//! the sequence at the next step and frees its blocks).
//!
//! One step is a list of named steps, as TGI's `batching_task`:
//! wait → admit → drop cancelled → next batch → forward → sample → send → filter finished.
//! The time of each goes to the stage metrics ([`clock`]); a forward that runs past its
//! deadline fails every request with a 503 ([`watchdog`]).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::backend::Backend;
use crate::batch::Batch;
use crate::http::error::ApiError;
use crate::http::metrics::{Metrics, ServingStage};
use crate::http::validate::ValidParams;
use crate::kv_cache::BlockPool;
use crate::plan;
use crate::scheduler::{Logits, Scheduled, Scheduler, SeqId, Sequence, StepPlan};
use crate::tokenizer::Tokenizer;

mod clock;
mod sequence;
pub mod watchdog;
use clock::StageClock;
use sequence::Active;
use watchdog::Watch;

/// A validated, tokenized request for the engine.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids (non-empty, within the context).
    pub prompt: Vec<u32>,
    /// Most tokens to generate; prompt plus this fits the context.
    pub max_new_tokens: usize,
    /// Sampling, stop sequences, logprobs.
    pub params: ValidParams,
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// One token's log probability and the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenScore {
    /// Log probability of the token.
    pub logprob: f32,
    /// The most likely (id, log probability) pairs, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What the engine reports about one request, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Scores of prompt tokens 1.. (token 0 has no prediction), when the prompt is
    /// scored (echo with logprobs); sent once, when the prefill is done.
    PromptScores(Vec<TokenScore>),
    /// A generated token and the text it completes (possibly empty while a
    /// character or a possible stop sequence is incomplete).
    Token {
        /// The token id.
        id: u32,
        /// New visible text.
        text: String,
        /// Its score, when logprobs were requested.
        score: Option<TokenScore>,
    },
    /// The sequence ended; nothing follows.
    Done {
        /// Why.
        finish: FinishReason,
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Generated tokens.
        completion_tokens: u32,
    },
    /// The sequence failed; nothing follows.
    Failed(String),
    /// The engine cannot finish the sequence (it is hung): a 503; nothing follows.
    Unavailable(&'static str),
}

/// The engine is accepting requests.
const RUNNING: u8 = 0;
/// SIGTERM received: no new requests; in-flight ones finish.
const SHUTTING_DOWN: u8 = 1;
/// The engine thread has exited.
const STOPPED: u8 = 2;
/// A step ran past its deadline: no new requests, live ones failed.
const HUNG: u8 = 3;

/// State shared by the handle and the engine thread.
#[derive(Debug)]
struct Shared {
    /// Requests submitted and not yet admitted (or dropped).
    waiting: AtomicUsize,
    /// `RUNNING`, `SHUTTING_DOWN`, `STOPPED` or `HUNG`.
    state: AtomicU8,
    metrics: Arc<Metrics>,
    /// What the step watchdog looks at.
    watch: Watch,
}

/// A place in the admission queue; gives it back when dropped (on admission, or
/// when the request ends first).
#[derive(Debug)]
struct QueuePermit(Arc<Shared>);

impl QueuePermit {
    fn acquire(shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let take = |n: usize| (n < plan::MAX_QUEUE).then_some(n + 1);
        match shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, take)
        {
            Ok(n) => {
                shared.metrics.queue_depth.set(gauge(n + 1));
                Ok(Self(shared.clone()))
            }
            Err(queued) => Err(ApiError::QueueFull { queued }),
        }
    }
}

impl Drop for QueuePermit {
    fn drop(&mut self) {
        let before = self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0
            .metrics
            .queue_depth
            .set(gauge(before.saturating_sub(1)));
    }
}

/// What the handle sends the engine thread.
enum Command {
    /// Start a request.
    Generate(Box<Submission>),
    /// End every request now (the shutdown grace period is over).
    AbortAll,
}

/// A request on its way to the engine thread.
struct Submission {
    request: GenerateRequest,
    events: UnboundedSender<Event>,
    arrived: Instant,
    permit: QueuePermit,
}

/// The HTTP side's handle on the engine thread.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Generate(_) => "Generate",
            Self::AbortAll => "AbortAll",
        })
    }
}

impl EngineHandle {
    /// Queues a request; its events arrive on the returned channel. Refused with
    /// 429 when `MAX_QUEUE` requests already wait, 503 when shutting down.
    pub fn submit(&self, request: GenerateRequest) -> Result<UnboundedReceiver<Event>, ApiError> {
        if let Some(reason) = self.unavailable() {
            return Err(ApiError::Unavailable(reason));
        }
        let permit = QueuePermit::acquire(&self.shared)?;
        let (events, rx) = unbounded_channel();
        self.shared.watch.register(&events);
        let submission = Submission {
            request,
            events,
            arrived: Instant::now(),
            permit,
        };
        self.commands
            .send(Command::Generate(Box::new(submission)))
            .map_err(|_| ApiError::Unavailable("the engine has stopped"))?;
        Ok(rx)
    }

    /// Why requests are refused now, if they are.
    pub fn unavailable(&self) -> Option<&'static str> {
        match self.shared.state.load(Ordering::Acquire) {
            RUNNING => None,
            SHUTTING_DOWN => Some("the server is shutting down"),
            HUNG => Some(watchdog::HUNG_MESSAGE),
            _ => Some("the engine has stopped"),
        }
    }

    /// Refuses new requests from now on; running ones go on.
    pub fn begin_shutdown(&self) {
        let _ = self.shared.state.compare_exchange(
            RUNNING,
            SHUTTING_DOWN,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Ends every queued and running request with an error.
    pub fn abort_all(&self) {
        // If the engine is gone there is nothing left to abort.
        let _ = self.commands.send(Command::AbortAll);
    }
}

/// Starts the engine thread, which owns `model` (the CPU or GPU back end) until every
/// handle is dropped, and its watchdog, which fails every request once a forward runs
/// longer than `step_deadline`.
pub fn start(
    model: Box<dyn Backend>,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    step_deadline: Duration,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let shared = Arc::new(Shared {
        waiting: AtomicUsize::new(0),
        state: AtomicU8::new(RUNNING),
        metrics,
        watch: Watch::new(),
    });
    let (commands, inbox) = mpsc::channel();
    let engine = Engine {
        model,
        tokenizer,
        pool: BlockPool::new(),
        scheduler: Scheduler::new(),
        active: HashMap::new(),
        inbox,
        shared: shared.clone(),
        next_id: 0,
        logits: Vec::new(),
        clock: StageClock::default(),
        forwards: 0,
        hang_at: watchdog::injected_hang(),
    };
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine.run())?;
    watchdog::spawn(shared.clone(), step_deadline)?;
    Ok((EngineHandle { commands, shared }, thread))
}

/// The engine thread's state.
struct Engine {
    model: Box<dyn Backend>,
    tokenizer: Arc<Tokenizer>,
    pool: BlockPool,
    scheduler: Scheduler,
    /// Per-request state of every queued or running sequence.
    active: HashMap<SeqId, Active>,
    inbox: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    next_id: SeqId,
    /// Logits of the last step, `VOCAB_SIZE` per requested row.
    logits: Vec<f32>,
    /// Time per stage since the last loop turn.
    clock: StageClock,
    /// Forwards run so far.
    forwards: u64,
    /// The forward that fault injection hangs ([`watchdog::FAULT_ENV`]).
    hang_at: Option<u64>,
}

impl Engine {
    /// Runs steps until every handle is gone and no work is left.
    fn run(mut self) {
        // Marks the engine stopped however the thread ends (a panic included), so
        // `/health` and new requests see it.
        let _stopped = MarkStopped(self.shared.clone());
        while self.wait() {
            let turn = Instant::now();
            self.admit();
            self.drop_cancelled();
            let plan = self.scheduler.schedule(&mut self.pool);
            let mut stepping = Duration::ZERO;
            if !plan.is_empty() {
                let step = Instant::now();
                self.step(&plan);
                stepping = step.elapsed();
            }
            self.filter_finished();
            self.publish_metrics();
            let scheduling = turn.elapsed().saturating_sub(stepping);
            self.clock.add(ServingStage::Schedule, scheduling);
            self.clock.flush(&self.shared.metrics);
        }
    }

    /// Blocks while there is nothing to do. Returns false when the engine should exit.
    fn wait(&mut self) -> bool {
        if !self.scheduler.is_idle() {
            return true;
        }
        match self
            .inbox
            .recv_timeout(Duration::from_millis(plan::ENGINE_IDLE_TICK_MS))
        {
            Ok(command) => {
                self.handle(command);
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => true,
            Err(mpsc::RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Takes every submitted request into the scheduler's queue.
    fn admit(&mut self) {
        while let Ok(command) = self.inbox.try_recv() {
            self.handle(command);
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Generate(submission) => self.enqueue(*submission),
            Command::AbortAll => {
                let ids: Vec<SeqId> = self.active.keys().copied().collect();
                for id in ids {
                    self.fail(id, "the server shut down before the request finished");
                }
            }
        }
    }

    fn enqueue(&mut self, s: Submission) {
        let id = self.next_id;
        self.next_id += 1;
        let req = s.request;
        let score_prompt = req.params.echo && req.params.logprobs.is_some();
        let mut active = Active::new(&req, s.events, s.arrived, s.permit, &self.tokenizer);
        if req.max_new_tokens == 0 && !score_prompt {
            active.finish(FinishReason::Length, &self.shared.metrics);
            return;
        }
        let seq = Sequence::new(id, req.prompt, req.max_new_tokens, score_prompt);
        self.scheduler.enqueue(seq);
        self.active.insert(id, active);
    }

    /// Ends sequences whose client has gone away; their blocks return to the pool.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.client_gone())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.scheduler.remove(id);
            self.active.remove(&id);
            self.shared.metrics.cancelled.inc();
        }
    }

    /// Forward, sample and send for one planned step.
    fn step(&mut self, plan: &StepPlan) {
        // Admission is idempotent per request: a first slice may start past a
        // cached prefix, so every slice reports it.
        for item in &plan.items {
            if let Some(active) = self.active.get_mut(&item.id) {
                active.admitted(&self.shared.metrics);
            }
        }
        let m = &self.shared.metrics;
        m.prefix_cache_queries.inc_by(plan.prefix_queried as u64);
        m.prefix_cache_hits.inc_by(plan.prefix_hits as u64);
        let decode_tokens = self.decode_tokens(plan);
        self.forwards += 1;
        self.shared.watch.step_begins();
        if self.hang_at == Some(self.forwards) {
            watchdog::hang();
        }
        let started = Instant::now();
        let greedy = self.greedy_rows(plan);
        let mut picked = Vec::new();
        let forward = {
            let Self {
                model,
                pool,
                scheduler,
                logits,
                ..
            } = self;
            let batch = build_batch(plan, scheduler);
            batch.map_err(|e| e.to_string()).and_then(|batch| {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    model.forward_greedy(&batch, pool, logits, &greedy, &mut picked)
                }));
                match run {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err("the model panicked".to_string()),
                }
            })
        };
        self.shared.watch.step_ends();
        let kernels = self.model.take_kernel_times();
        let forward_time = started.elapsed();
        self.clock
            .forward(forward_time, kernels, decode_tokens, plan.tokens());
        match forward {
            Ok(()) => {
                let sampling = Instant::now();
                let detokenizing = self.sample(plan, &picked);
                let sample_time = sampling.elapsed().saturating_sub(detokenizing);
                self.clock.add(ServingStage::Sample, sample_time);
                self.clock.add(ServingStage::Detokenize, detokenizing);
            }
            Err(message) => {
                for item in &plan.items {
                    self.fail(item.id, &format!("the engine step failed: {message}"));
                }
            }
        }
    }

    /// Tokens of the step that extend a sequence past its prompt (decodes).
    fn decode_tokens(&self, plan: &StepPlan) -> usize {
        let decoding = |item: &&Scheduled| {
            let seq = self.scheduler.get(item.id);
            seq.is_some_and(|s| item.start >= s.prompt_len)
        };
        plan.items
            .iter()
            .filter(decoding)
            .map(|item| item.len)
            .sum()
    }

    /// Per logits row of the step: whether only its argmax is needed (a sequence's
    /// last row, sampled plainly greedily), so the model may choose it on the device.
    fn greedy_rows(&self, plan: &StepPlan) -> Vec<bool> {
        let mut greedy = Vec::new();
        for item in &plan.items {
            match item.logits {
                Logits::None => {}
                Logits::Last => greedy.push(
                    self.active
                        .get(&item.id)
                        .is_some_and(|active| active.plain_greedy()),
                ),
                Logits::All => greedy.extend(std::iter::repeat_n(false, item.len)),
            }
        }
        greedy
    }

    /// Reads each sequence's logits rows (or the token the model chose for a greedy
    /// row, `picked`): scores prompt tokens, samples new tokens, and sends the events.
    /// Returns the time spent detokenizing.
    fn sample(&mut self, plan: &StepPlan, picked: &[Option<u32>]) -> Duration {
        let mut detokenizing = Duration::ZERO;
        let mut row = 0;
        for item in &plan.items {
            self.scheduler.computed(item.id, item.len, &self.pool);
            let rows = match item.logits {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => item.len,
            };
            let logits = &mut self.logits[row * plan::VOCAB_SIZE..(row + rows) * plan::VOCAB_SIZE];
            let chosen = rows
                .checked_sub(1)
                .and_then(|last| picked.get(row + last).copied().flatten());
            row += rows;
            let (Some(seq), Some(active)) =
                (self.scheduler.get(item.id), self.active.get_mut(&item.id))
            else {
                continue;
            };
            if item.logits == Logits::All {
                active.score_prompt_rows(seq, item, logits);
            }
            if rows == 0 || !seq.prefilled() {
                continue;
            }
            if seq.generated() == 0 {
                active.send_prompt_scores();
            }
            if seq.generated() >= seq.max_new {
                active.finish(FinishReason::Length, &self.shared.metrics);
                continue;
            }
            let (tokenizer, metrics) = (&self.tokenizer, &self.shared.metrics);
            let token = match chosen {
                Some(token) => {
                    Some(active.accept_token(token, tokenizer, metrics, &mut detokenizing))
                }
                None => {
                    let last = &mut logits[(rows - 1) * plan::VOCAB_SIZE..];
                    active.next_token(last, tokenizer, metrics, &mut detokenizing)
                }
            };
            if let Some(token) = token {
                self.scheduler.push_token(item.id, token);
            }
        }
        detokenizing
    }

    /// Removes finished sequences; their blocks return to the pool.
    fn filter_finished(&mut self) {
        let done: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.is_finished())
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            self.scheduler.remove(id);
            self.active.remove(&id);
        }
    }

    /// Fails one sequence and frees it.
    fn fail(&mut self, id: SeqId, message: &str) {
        if let Some(mut active) = self.active.remove(&id) {
            active.fail(message);
        }
        self.scheduler.remove(id);
    }

    fn publish_metrics(&self) {
        let m = &self.shared.metrics;
        m.running.set(gauge(self.scheduler.running()));
        m.kv_blocks_used.set(gauge(self.pool.used_blocks()));
        m.kv_blocks_cached.set(gauge(self.pool.cached_blocks()));
    }
}

/// Sets the engine's state to `STOPPED` when dropped.
struct MarkStopped(Arc<Shared>);

impl Drop for MarkStopped {
    fn drop(&mut self) {
        self.0.state.store(STOPPED, Ordering::Release);
    }
}

/// The step's batch: each scheduled slice of each sequence. A slice that wants
/// every logit goes in as one-token chunks (each gets its own logits row; the
/// model writes all of a step's K/V before attention, so each token still sees
/// the ones before it).
fn build_batch<'a>(
    plan: &StepPlan,
    scheduler: &'a Scheduler,
) -> Result<Batch<'a>, crate::batch::BatchError> {
    let mut batch = Batch::new();
    for &Scheduled {
        id,
        start,
        len,
        logits,
    } in &plan.items
    {
        let Some(seq) = scheduler.get(id) else {
            continue;
        };
        let tokens = &seq.tokens[start..start + len];
        match logits {
            Logits::None | Logits::Last => {
                batch.push_chunk(&seq.blocks, start, tokens, logits == Logits::Last)?;
            }
            Logits::All => {
                for (i, token) in tokens.iter().enumerate() {
                    batch.push_chunk(&seq.blocks, start + i, std::slice::from_ref(token), true)?;
                }
            }
        }
    }
    Ok(batch)
}

/// A count as a gauge value.
fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
