//! The Llama model on the GPU: fixed device buffers sized for the largest step, the
//! step's inputs packed and uploaded, the forward pass enqueued ([`forward`]), and CUDA
//! graphs of the decode step per batch-size bucket (so a decode step is one graph
//! launch, not ~150 launches).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use cudarc::driver::{CudaEvent, CudaGraph, CudaStream, sys as drv_sys};

use super::comm::Comm;
use super::config::HfConfig;
use super::device::{DevBuf, Gpu, Pinned};
use super::oneshot::PeerSum;
use super::overlap::{CommChoice, SideStream};
use super::step::Layout;
pub use super::step::StepInput;
use super::weights::Weights;
use super::{CudaError, ffi};
use crate::plan_cuda::AllReduce;
use crate::shard::Shard;
use crate::{plan, plan_cuda};

mod forward;

/// Activations and step inputs on the device, sized for `max_tokens`.
struct Buffers {
    input: DevBuf,
    resid: DevBuf,
    xb: DevBuf,
    qkv: DevBuf,
    attn: DevBuf,
    gate_up: DevBuf,
    ff: DevBuf,
    partial: DevBuf,
    logits: DevBuf,
    /// Each logits row's best token of every token-selection part (score, then id).
    part_score: DevBuf,
    part_id: DevBuf,
    sampled: DevBuf,
    scores: DevBuf,
    rope: DevBuf,
    k_cache: DevBuf,
    v_cache: DevBuf,
}

/// A captured decode graph.
struct Graph(CudaGraph);

// SAFETY: a graph is only used by the thread that owns the model (`&mut self` in
// `step`); moving the model to the engine thread before first use is what needs Send,
// and CUDA graph handles may be used from any thread when access is serialised.
unsafe impl Send for Graph {}

/// Which GPU a model (or one rank of a tensor-parallel model) runs on and what it holds.
pub struct Rank {
    /// The CUDA device ordinal.
    pub ordinal: usize,
    /// Its slice of the model.
    pub shard: Shard,
    /// Its communicator (none for a model on one GPU).
    pub comm: Option<Comm>,
    /// How the ranks' partial sums are added, and whether they overlap compute.
    pub choice: CommChoice,
}

impl Rank {
    /// The whole model on device 0.
    pub fn single() -> Self {
        Self {
            ordinal: 0,
            shard: Shard::new(0, 1),
            comm: None,
            choice: CommChoice {
                all_reduce: AllReduce::Nccl,
                overlap: false,
            },
        }
    }
}

/// The model on the GPU (or one tensor-parallel rank's slice of it), ready to run steps.
pub struct CudaLlama {
    gpu: Gpu,
    /// The model's configuration.
    pub config: HfConfig,
    /// This rank's shapes: its heads, FFN columns and vocabulary rows.
    local: HfConfig,
    /// First vocabulary row this rank holds.
    vocab_start: usize,
    shard: Shard,
    /// Borrowed mutably while a step is enqueued (`enqueue` takes `&self`).
    comm: Option<RefCell<Comm>>,
    /// The one-shot all-reduce, when chosen (small sums; NCCL does the rest).
    peer_sum: Option<PeerSum>,
    /// The second stream of overlapped sums, when overlap is on (and there are ranks).
    side: Option<SideStream>,
    weights: Weights,
    buf: Buffers,
    layout: Layout,
    max_tokens: usize,
    max_blocks: usize,
    /// Bytes of one layer's K (or V) cache.
    layer_cache_bytes: usize,
    /// Captured decode graphs by batch-size bucket.
    graphs: BTreeMap<usize, Graph>,
    /// The packed step input on the host ([`Layout`]), uploaded in one copy.
    staging: Pinned<i32>,
    /// Recorded after each upload: the staging may be rewritten once it has passed.
    staging_free: CudaEvent,
    /// Where the selected tokens and their scores come back to.
    sampled_host: Pinned<i32>,
    scores_host: Pinned<f32>,
}

/// Elements of f32 per (token, head, split) attention partial: the sums, then max and sum.
fn partial_floats(c: &HfConfig) -> usize {
    c.head_dim() + 2
}

/// Parts the attention of a step of `n_tokens` over `kv_heads` KV heads splits each
/// context into: enough for `ATTN_TARGET_BLOCKS` blocks, at most `ATTN_SPLITS`, so wide
/// batches take one part (no partial sums, no merge kernel).
fn attention_splits(n_tokens: usize, kv_heads: usize) -> usize {
    let blocks = (n_tokens * kv_heads).max(1);
    let most = plan_cuda::ATTN_SPLITS.clamp(1, ffi::VS_ATTN_MAX_SPLITS as usize);
    plan_cuda::ATTN_TARGET_BLOCKS
        .div_ceil(blocks)
        .clamp(1, most)
}

/// Floats of attention partials the largest split step of up to `max_tokens` needs.
fn partial_len(c: &HfConfig, max_tokens: usize) -> usize {
    let rows = (1..=max_tokens)
        .map(|n| match attention_splits(n, c.num_key_value_heads) {
            1 => 0,
            s => n * s,
        })
        .max()
        .unwrap_or(0);
    rows.max(1) * c.num_attention_heads * partial_floats(c)
}

impl CudaLlama {
    /// Opens the rank's GPU, loads its slice of the model folder (config.json,
    /// model*.safetensors) and allocates its KV cache (`plan::KV_BLOCKS` blocks plus one
    /// scratch block, of its KV heads).
    pub fn load(dir: &Path, rank: Rank) -> Result<Self, CudaError> {
        let gpu = Gpu::open(rank.ordinal)?;
        let config = HfConfig::load(dir)?;
        if config.vocab_size != plan::VOCAB_SIZE {
            return Err(CudaError::Model(format!(
                "vocabulary of {} tokens; this server was built for {}",
                config.vocab_size,
                plan::VOCAB_SIZE
            )));
        }
        let local = config.shard(rank.shard);
        let vocab_start = rank.shard.vocab(config.vocab_size).start;
        let weights = Weights::load(&gpu, dir, &config, rank.shard)?;
        let max_tokens = plan::MAX_BATCH_TOKENS.max(
            plan_cuda::CUDA_GRAPH_BATCH_SIZES
                .iter()
                .copied()
                .max()
                .unwrap_or(1),
        );
        let max_blocks = plan::CONTEXT_LENGTH.div_ceil(plan::KV_BLOCK_SIZE);
        let layout = Layout::new(max_tokens, max_blocks);
        let c = &local;
        let (d, hd, m) = (c.hidden_size, c.head_dim(), max_tokens);
        let block_bytes = c.num_key_value_heads * plan::KV_BLOCK_SIZE * hd * 2;
        let layer_cache_bytes = (plan::KV_BLOCKS + 1) * block_bytes;
        let rope = DevBuf::new(plan::CONTEXT_LENGTH * hd * 4)?;
        gpu.upload(rope.ptr, &c.rope_table(plan::CONTEXT_LENGTH))?;
        let buf = Buffers {
            input: DevBuf::zeroed(layout.total * 4)?,
            resid: DevBuf::new(m * d * 4)?,
            xb: DevBuf::new(m * d * 2)?,
            qkv: DevBuf::new(m * c.qkv_dim() * 2)?,
            attn: DevBuf::new(m * c.num_attention_heads * hd * 2)?,
            gate_up: DevBuf::new(m * 2 * c.intermediate_size * 2)?,
            ff: DevBuf::new(m * c.intermediate_size * 2)?,
            partial: DevBuf::new(partial_len(c, m) * 4)?,
            logits: DevBuf::new(m * c.vocab_size * 4)?,
            part_score: DevBuf::new(m * plan_cuda::CUDA_SAMPLE_PARTS * 4)?,
            part_id: DevBuf::new(m * plan_cuda::CUDA_SAMPLE_PARTS * 4)?,
            sampled: DevBuf::zeroed(m * 4)?,
            scores: DevBuf::zeroed(m * 4)?,
            rope,
            k_cache: DevBuf::zeroed(layer_cache_bytes * c.num_hidden_layers)?,
            v_cache: DevBuf::zeroed(layer_cache_bytes * c.num_hidden_layers)?,
        };
        gpu.sync()?;
        let staging = Pinned::new(layout.total)?;
        let staging_free = gpu
            .ctx
            .new_event(Some(drv_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(CudaError::driver)?;
        let mut model = Self {
            gpu,
            config,
            local,
            vocab_start,
            shard: rank.shard,
            comm: rank.comm.map(RefCell::new),
            peer_sum: None,
            side: None,
            weights,
            buf,
            layout,
            max_tokens,
            max_blocks,
            layer_cache_bytes,
            graphs: BTreeMap::new(),
            staging,
            staging_free,
            sampled_host: Pinned::new(max_tokens)?,
            scores_host: Pinned::new(max_tokens)?,
        };
        // A first collective outside any graph capture sets up NCCL's connections.
        model.all_reduce(&model.gpu.stream, model.buf.scores.ptr, max_tokens)?;
        model.finish()?;
        if let Some(comm) = &model.comm {
            let push = match rank.choice.all_reduce {
                AllReduce::Nccl => None,
                AllReduce::OneShot => Some(false),
                AllReduce::OneShotPush => Some(true),
            };
            if let Some(push) = push {
                model.peer_sum = Some(PeerSum::new(&model.gpu, &mut comm.borrow_mut(), push)?);
            }
        }
        if model.comm.is_some() && rank.choice.overlap {
            model.side = Some(SideStream::new(&model.gpu)?);
        }
        Ok(model)
    }

    /// Aborts this rank's communicator (collectives in flight return): the group failed
    /// or is being torn down.
    pub fn abort(&self) {
        if let Some(comm) = &self.comm {
            comm.borrow_mut().abort("the group was stopped".into());
        }
    }

    /// This model's rank in its tensor-parallel group (0 on one GPU).
    pub fn rank(&self) -> usize {
        self.shard.rank
    }

    /// Bytes of weights on the device (what a batch-1 decode step must read).
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes
    }

    /// The device block id of the engine's KV block `block` (device block 0 is the
    /// scratch block that padded graph rows write to).
    pub fn device_block(block: u32) -> i32 {
        block as i32 + 1
    }

    /// The GPU this model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Runs one step: K/V of every token into the cache, then logits and a selected token
    /// per logits row. A decode step of at most the largest bucket replays a graph.
    pub fn step(&mut self, input: &StepInput) -> Result<(), CudaError> {
        self.gpu.ctx.bind_to_thread().map_err(CudaError::driver)?;
        let n = input.tokens.len();
        if n > self.max_tokens || input.tables.len() > self.max_tokens {
            return Err(CudaError::Model(format!(
                "a step of {n} tokens exceeds the limit of {}",
                self.max_tokens
            )));
        }
        let bucket = input
            .is_decode()
            .then(|| {
                plan_cuda::CUDA_GRAPH_BATCH_SIZES
                    .iter()
                    .copied()
                    .find(|&b| b >= n)
            })
            .flatten();
        match bucket {
            Some(b) if plan_cuda::CUDA_GRAPHS => {
                self.pack(input, b)?;
                if !self.graphs.contains_key(&b) {
                    let graph = self.capture(b)?;
                    self.graphs.insert(b, Graph(graph));
                }
                self.graphs[&b].0.launch().map_err(CudaError::driver)
            }
            _ => {
                self.pack(input, n)?;
                self.enqueue(n, input.logit_rows.len())
            }
        }
    }

    /// Waits for the last step; with collectives, under the communicator's deadline
    /// (a dead peer gives an error and an aborted communicator, not a hang).
    pub fn finish(&self) -> Result<(), CudaError> {
        match &self.comm {
            Some(comm) => {
                let mut comm = comm.borrow_mut();
                let deadline = comm.deadline();
                comm.wait(&self.gpu.stream, deadline)?;
                match &self.peer_sum {
                    Some(p) => p.check_peer(&self.gpu),
                    None => Ok(()),
                }
            }
            None => self.gpu.sync(),
        }
    }

    /// The selected token (a global id) of each of the first `n` logits rows of the last
    /// step, with its score: a rank's winner over its vocabulary slice.
    pub fn sampled_scored(&mut self, n: usize) -> Result<(Vec<i32>, Vec<f32>), CudaError> {
        self.gpu
            .download_later(&mut self.scores_host, n, self.buf.scores.ptr)?;
        let ids = self.sampled(n)?;
        Ok((ids, self.scores_host[..n].to_vec()))
    }

    /// The selected token of each of the first `n` logits rows of the last step: the
    /// copy is queued behind the step and arrives with the one wait.
    pub fn sampled(&mut self, n: usize) -> Result<Vec<i32>, CudaError> {
        if n > self.max_tokens {
            return Err(CudaError::Model(format!(
                "{n} rows asked of a step of at most {}",
                self.max_tokens
            )));
        }
        self.gpu
            .download_later(&mut self.sampled_host, n, self.buf.sampled.ptr)?;
        self.finish()?;
        Ok(self.sampled_host[..n].to_vec())
    }

    /// The f32 logits of the first `n` rows of the last step, this rank's vocabulary
    /// slice ([`CudaLlama::vocab_rows`]) per row.
    pub fn logits(&self, n: usize) -> Result<Vec<f32>, CudaError> {
        self.finish()?;
        let mut out = vec![0f32; n * self.local.vocab_size];
        self.gpu.download(&mut out, self.buf.logits.ptr)?;
        Ok(out)
    }

    /// The vocabulary rows this rank scores.
    pub fn vocab_rows(&self) -> std::ops::Range<usize> {
        self.vocab_start..self.vocab_start + self.local.vocab_size
    }

    /// Sums `count` f32 at `buf` over the ranks on `stream` (nothing on one GPU).
    fn all_reduce(&self, stream: &CudaStream, buf: u64, count: usize) -> Result<(), CudaError> {
        if let Some(p) = self.peer_sum.as_ref().filter(|p| p.fits(count)) {
            return p.sum(stream, buf, count);
        }
        match &self.comm {
            Some(comm) => comm.borrow_mut().all_reduce_f32(buf, count, stream),
            None => Ok(()),
        }
    }

    /// Sums the residual `rows` (half `part` of a step split in `parts` parts) over the
    /// ranks: on the compute stream, or on the side stream when the step is split.
    fn sum_rows(&self, part: usize, parts: usize, rows: &Range<usize>) -> Result<(), CudaError> {
        let d = self.local.hidden_size;
        let (buf, count) = (self.buf.resid.at(rows.start * d * 4), rows.len() * d);
        match self.side.as_ref().filter(|_| parts > 1) {
            Some(side) => {
                let stream = side.fork(&self.gpu.stream, part)?;
                self.all_reduce(stream, buf, count)?;
                side.forked(part)
            }
            None => self.all_reduce(&self.gpu.stream, buf, count),
        }
    }

    /// Makes the compute stream wait for the sum of half `part`, if one is in flight.
    fn join(&self, part: usize) -> Result<(), CudaError> {
        match &self.side {
            Some(side) => side.join(&self.gpu.stream, part),
            None => Ok(()),
        }
    }

    /// Writes the step input into the staging buffer and uploads it in one copy; rows
    /// `n..padded` are padding (token 0 at position 0 of the scratch block, greedy).
    fn pack(&mut self, input: &StepInput, padded: usize) -> Result<(), CudaError> {
        // The last step's upload reads the staging until the stream reaches it (already
        // past when its results were waited for).
        self.staging_free.synchronize().map_err(CudaError::driver)?;
        let (l, bs) = (&self.layout, plan::KV_BLOCK_SIZE);
        let s = &mut self.staging;
        let n = input.tokens.len();
        for i in 0..padded {
            let real = i < n;
            let pos = if real { input.positions[i] } else { 0 };
            let seq = if real { input.seq[i] } else { i as i32 };
            let table: &[i32] = if real {
                &input.tables[seq as usize]
            } else {
                &[]
            };
            let block = table.get(pos as usize / bs).copied().unwrap_or(0);
            if real && table.len() * bs <= pos as usize {
                return Err(CudaError::Model(format!(
                    "position {pos} is beyond its block table"
                )));
            }
            s[l.tokens + i] = if real { input.tokens[i] } else { 0 };
            s[l.positions + i] = pos;
            s[l.slots + i] = block * bs as i32 + pos % bs as i32;
            s[l.q_seq + i] = seq;
            s[l.q_ctx + i] = pos + 1;
            s[l.logit_rows + i] = input.logit_rows.get(i).copied().unwrap_or(i as i32);
        }
        let n_tables = input.tables.len().max(if padded > n { padded } else { 0 });
        // Rows as wide as this step's longest table: the upload stays proportional to
        // the context in use, not to the model's maximum.
        let stride = input.tables.iter().map(Vec::len).max().unwrap_or(0).max(1);
        s[l.stride] = stride as i32;
        for (row, table) in
            (0..n_tables).map(|r| (r, input.tables.get(r).map(Vec::as_slice).unwrap_or(&[])))
        {
            if table.len() > self.max_blocks {
                return Err(CudaError::Model(
                    "a block table exceeds the context length".into(),
                ));
            }
            let dst = &mut s[l.tables + row * stride..l.tables + (row + 1) * stride];
            dst[..table.len()].copy_from_slice(table);
            dst[table.len()..].fill(0);
        }
        let rows = input.logit_rows.len().max(padded);
        let temps: &mut [f32] = bytemuck::cast_slice_mut(&mut s[l.temps..l.temps + rows]);
        temps.fill(0.0);
        temps[..input.temps.len()].copy_from_slice(&input.temps);
        let seeds: &mut [u64] = bytemuck::cast_slice_mut(&mut s[l.seeds..l.seeds + 2 * rows]);
        seeds.fill(0);
        seeds[..input.seeds.len()].copy_from_slice(&input.seeds);
        self.gpu
            .upload(self.buf.input.ptr, &s[..l.tables + n_tables * stride])?;
        self.staging_free
            .record(&self.gpu.stream)
            .map_err(CudaError::driver)
    }

    /// Captures the decode step of `bucket` sequences as a graph.
    fn capture(&self, bucket: usize) -> Result<CudaGraph, CudaError> {
        let stream = &self.gpu.stream;
        stream
            .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(CudaError::driver)?;
        let enqueued = self.enqueue(bucket, bucket);
        let graph = stream
            .end_capture(drv_sys::CUgraphInstantiate_flags(0))
            .map_err(CudaError::driver)?;
        enqueued?;
        graph.ok_or_else(|| CudaError::Model("graph capture recorded nothing".into()))
    }
}
