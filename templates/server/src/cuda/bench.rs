//! `server cuda-logits` (teacher-forced logits for the accuracy check against Hugging
//! Face) and `server cuda-bench` (prefill and decode speed at several batch sizes,
//! with the bandwidth floor), both printing JSON.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::device::{DevBuf, Gpu};
use super::oneshot::parse_all_reduce;
use super::overlap::parse_on_off;
use super::{AllReduce, CommChoice, CudaError, CudaLlama, ModelGroup, StepInput};
use crate::{plan, plan_cuda};

/// Arguments of `server cuda-logits`.
#[derive(Debug, Args)]
pub struct LogitsArgs {
    /// The model folder (config.json, model*.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// A file of token ids separated by whitespace or commas.
    #[arg(long)]
    pub tokens: PathBuf,
    /// Where to write the logits: f32 little-endian, one row of vocab values per token.
    #[arg(long)]
    pub out: PathBuf,
    /// GPUs to split the model over (default: the plan's).
    #[arg(long, default_value_t = plan_cuda::TENSOR_PARALLEL)]
    pub tensor_parallel: usize,
    /// The all-reduce of a split model, `nccl`, `one-shot` or `one-shot-push` (default:
    /// the plan's).
    #[arg(long, value_parser = parse_all_reduce)]
    pub all_reduce: Option<AllReduce>,
    /// Overlap the all-reduces with compute, `on` or `off` (default: the plan's).
    #[arg(long, value_parser = parse_on_off)]
    pub overlap_comm: Option<bool>,
    /// Tokens per step (1: one token at a time, through the decode graphs and the
    /// small all-reduces of decode).
    #[arg(long, default_value_t = plan::PREFILL_CHUNK)]
    pub chunk: usize,
}

/// Arguments of `server cuda-bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Batch sizes (concurrent sequences) to time.
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    pub batch: Vec<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub prompt: usize,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// GPUs to split the model over (default: the plan's).
    #[arg(long, default_value_t = plan_cuda::TENSOR_PARALLEL)]
    pub tensor_parallel: usize,
    /// The all-reduce of a split model, `nccl`, `one-shot` or `one-shot-push` (default:
    /// the plan's).
    #[arg(long, value_parser = parse_all_reduce)]
    pub all_reduce: Option<AllReduce>,
    /// Overlap the all-reduces with compute, `on` or `off` (default: the plan's).
    #[arg(long, value_parser = parse_on_off)]
    pub overlap_comm: Option<bool>,
}

/// The all-reduce and overlap asked for, else the plan's.
fn choice(all_reduce: Option<AllReduce>, overlap: Option<bool>) -> CommChoice {
    let plan = CommChoice::planned();
    CommChoice {
        all_reduce: all_reduce.unwrap_or(plan.all_reduce),
        overlap: overlap.unwrap_or(plan.overlap),
    }
}

/// Positions of one sequence as device KV blocks, starting at device block `first`.
fn table(first: usize, tokens: usize) -> Vec<i32> {
    (0..tokens.div_ceil(plan::KV_BLOCK_SIZE))
        .map(|b| CudaLlama::device_block((first + b) as u32))
        .collect()
}

/// Runs the prompt of one sequence in chunks of `chunk` tokens, with logits for every
/// token when `all_logits` (returned), else for none.
fn prefill(
    model: &mut ModelGroup,
    tokens: &[i32],
    table: &[i32],
    all_logits: bool,
    chunk: usize,
) -> Result<Vec<f32>, CudaError> {
    let mut logits = Vec::new();
    let step = chunk.max(1);
    for (c, chunk) in tokens.chunks(step).enumerate() {
        let start = c * step;
        let n = chunk.len();
        let rows: Vec<i32> = if all_logits {
            (0..n as i32).collect()
        } else {
            Vec::new()
        };
        let input = StepInput {
            tokens: chunk.to_vec(),
            positions: (start..start + n).map(|p| p as i32).collect(),
            seq: vec![0; n],
            tables: vec![table.to_vec()],
            temps: vec![0.0; rows.len()],
            seeds: vec![0; rows.len()],
            logit_rows: rows,
        };
        model.step(&input)?;
        if all_logits {
            logits.extend(model.logits(n)?);
        }
    }
    model.finish()?;
    Ok(logits)
}

/// `server cuda-logits`.
pub fn logits(args: &LogitsArgs) -> Result<(), CudaError> {
    let text = std::fs::read_to_string(&args.tokens)
        .map_err(|e| CudaError::Model(format!("{}: {e}", args.tokens.display())))?;
    let tokens: Vec<i32> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| CudaError::Model(format!("bad token id {s:?}")))
        })
        .collect::<Result<_, _>>()?;
    let (mut model, _) = ModelGroup::load(
        &args.model,
        args.tensor_parallel,
        choice(args.all_reduce, args.overlap_comm),
    )?;
    let table = table(0, tokens.len());
    let logits = prefill(&mut model, &tokens, &table, true, args.chunk)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args.out, bytes)
        .map_err(|e| CudaError::Model(format!("{}: {e}", args.out.display())))?;
    println!(
        "{}",
        serde_json::json!({"tokens": tokens.len(), "vocab": model.config().vocab_size,
            "tensor_parallel": args.tensor_parallel})
    );
    Ok(())
}

/// One batch size's figures.
#[derive(Debug, Serialize)]
struct BatchFigures {
    /// Concurrent sequences.
    batch: usize,
    /// Prompt tokens per second over the whole prefill.
    prefill_tok_s: f64,
    /// Generated tokens per second (all sequences) over the decode.
    decode_tok_s: f64,
    /// Milliseconds per decode step.
    step_ms: f64,
    /// The greedy tokens of every decode step, step by step (`batch` per step): two
    /// runs of one model compare by them (overlap on against off, TP = N against 1).
    decoded: Vec<i32>,
}

/// Device-to-device copy bandwidth of device 0 (bytes read plus written per second).
fn copy_bandwidth() -> Result<f64, CudaError> {
    const BYTES: usize = 1 << 30;
    let gpu = Gpu::open(0)?;
    let (a, b) = (DevBuf::zeroed(BYTES)?, DevBuf::zeroed(BYTES)?);
    let stream = gpu.stream.cu_stream();
    let copy = || {
        unsafe { cudarc::driver::result::memcpy_dtod_async(b.ptr, a.ptr, BYTES, stream) }
            .map_err(CudaError::driver)
    };
    copy()?;
    gpu.sync()?;
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        copy()?;
    }
    gpu.sync()?;
    Ok((2 * BYTES * reps) as f64 / t.elapsed().as_secs_f64())
}

/// Prefills `batch` random prompts, then decodes `gen` tokens for all, greedily.
fn run_batch(
    model: &mut ModelGroup,
    batch: usize,
    prompt: usize,
    gen_tokens: usize,
) -> Result<BatchFigures, CudaError> {
    let blocks_per_seq = (prompt + gen_tokens).div_ceil(plan::KV_BLOCK_SIZE);
    if batch * blocks_per_seq > plan::KV_BLOCKS {
        return Err(CudaError::Model(format!(
            "{batch} sequences of {} tokens need more than the {} KV blocks",
            prompt + gen_tokens,
            plan::KV_BLOCKS
        )));
    }
    let tables: Vec<Vec<i32>> = (0..batch)
        .map(|s| table(s * blocks_per_seq, prompt + gen_tokens))
        .collect();
    let vocab = model.config().vocab_size as u64;
    let t = Instant::now();
    for (s, tab) in tables.iter().enumerate() {
        let tokens: Vec<i32> = (0..prompt as u64)
            .map(|i| ((i * 7919 + s as u64 * 104_729 + 17) % vocab) as i32)
            .collect();
        prefill(model, &tokens, tab, false, plan::PREFILL_CHUNK)?;
    }
    let prefill_s = t.elapsed().as_secs_f64();
    let mut last: Vec<i32> = vec![1; batch];
    let mut decoded = Vec::with_capacity(batch * gen_tokens);
    let t = Instant::now();
    for step in 0..gen_tokens {
        let input = StepInput {
            tokens: last.clone(),
            positions: vec![(prompt + step) as i32; batch],
            seq: (0..batch as i32).collect(),
            tables: tables.clone(),
            logit_rows: (0..batch as i32).collect(),
            temps: vec![0.0; batch],
            seeds: vec![0; batch],
        };
        model.step(&input)?;
        last = model.sampled(batch)?;
        decoded.extend_from_slice(&last);
    }
    let decode_s = t.elapsed().as_secs_f64();
    Ok(BatchFigures {
        batch,
        prefill_tok_s: (batch * prompt) as f64 / prefill_s,
        decode_tok_s: (batch * gen_tokens) as f64 / decode_s,
        step_ms: decode_s * 1e3 / gen_tokens as f64,
        decoded,
    })
}

/// `server cuda-bench`.
pub fn bench(args: &BenchArgs) -> Result<(), CudaError> {
    let bandwidth = copy_bandwidth()?;
    let choice = choice(args.all_reduce, args.overlap_comm);
    let (mut model, info) = ModelGroup::load(&args.model, args.tensor_parallel, choice)?;
    // Warm-up: captures the graphs and loads the cuBLAS kernels outside the timings.
    for &b in &args.batch {
        run_batch(&mut model, b, args.prompt.min(16), 4)?;
    }
    let mut rows = Vec::new();
    for &b in &args.batch {
        rows.push(run_batch(&mut model, b, args.prompt, args.gen_tokens)?);
    }
    // Each rank reads its own weights at once: the slowest (largest) slice sets the floor.
    let rank_bytes = info.rank_weight_bytes.iter().copied().max().unwrap_or(1);
    let floor = bandwidth / rank_bytes as f64;
    let batch1 = rows.iter().find(|r| r.batch == 1).map(|r| r.decode_tok_s);
    let report = serde_json::json!({
        "device": info.device,
        "tensor_parallel": args.tensor_parallel,
        "all_reduce": format!("{:?}", choice.all_reduce),
        "overlap_comm": choice.overlap,
        "weight_bytes": info.rank_weight_bytes.iter().sum::<usize>(),
        "rank_weight_bytes": info.rank_weight_bytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "batch1_floor_tok_s": floor,
        "batch1_floor_ratio": batch1.map(|t| t / floor),
        "cuda_graphs": plan_cuda::CUDA_GRAPHS,
        "prompt": args.prompt,
        "gen_tokens": args.gen_tokens,
        "batches": rows,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{report}").map_err(|e| CudaError::Model(e.to_string()))
}
