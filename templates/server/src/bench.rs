//! `server bench`: one engine measurement, printed as one JSON line, for
//! `cargo vibeserve bench-engine` (which runs it alternately with llama.cpp's
//! `llama-bench`). A benchmark, not a test: it prints figures and asserts nothing.
//!
//! Like `llama-bench`, it first runs an untimed warm-up (the mapped weights'
//! pages faulted in, the pool's threads awake), then times a prefill of
//! `--prompt-tokens` synthetic token ids in `PREFILL_CHUNK` pieces, and then
//! `--gen-tokens` batch-1 decode steps, each fed the previous step's argmax and
//! attending over the prompt and the tokens before it. Last it measures the
//! compute pool's read bandwidth over a working set of `--bandwidth-bytes`
//! (the bytes of weights a decode step reads), the denominator of the decode
//! floor.

use crate::batch::Batch;
use crate::cli::{CliError, argmax};
use crate::kernels::bench::read_bandwidth;
use crate::kv_cache::{BlockPool, BlockTable};
use crate::model::Llama;
use crate::plan::{KERNEL_VARIANT, PREFILL_CHUNK, THREADS, VOCAB_SIZE};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Step between consecutive synthetic prompt ids: a prime, so the ids spread
/// over the vocabulary (the speed of a step does not depend on which ids).
const PROMPT_ID_STRIDE: usize = 7919;

/// Arguments of `server bench`.
#[derive(Debug, clap::Args)]
pub struct EngineBenchArgs {
    /// The GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt length of the timed prefill.
    #[arg(long, default_value_t = 128, value_parser = at_least_one())]
    pub prompt_tokens: usize,
    /// Batch-1 decode steps timed after the prefill.
    #[arg(long, default_value_t = 128, value_parser = at_least_one())]
    pub gen_tokens: usize,
    /// Compute threads (default: the plan's `THREADS`).
    #[arg(long, default_value_t = THREADS)]
    pub threads: usize,
    /// Working set of the bandwidth probe, in bytes (default: the bytes of the
    /// model's matrices, which a decode step reads once each).
    #[arg(long)]
    pub bandwidth_bytes: Option<usize>,
    /// Passes of the bandwidth probe over its working set (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub bandwidth_reps: usize,
}

/// What `server bench` prints: one JSON object on one line.
#[derive(Debug, Clone, Serialize)]
pub struct EngineBench {
    /// The plan's kernel variant, as resolved on this CPU.
    pub kernel: String,
    /// Threads of the compute pool.
    pub threads: usize,
    /// Tokens in the timed prefill.
    pub prompt_tokens: usize,
    /// Seconds the prefill took.
    pub prefill_s: f64,
    /// Prefill throughput: `prompt_tokens / prefill_s`.
    pub prefill_tok_s: f64,
    /// Batch-1 decode steps timed.
    pub gen_tokens: usize,
    /// Seconds the decode steps took.
    pub decode_s: f64,
    /// Decode throughput: `gen_tokens / decode_s`.
    pub decode_tok_s: f64,
    /// Working set of the bandwidth probe, in bytes.
    pub bandwidth_bytes: usize,
    /// Median read bandwidth of the pool's threads over that working set, bytes/s.
    pub bandwidth_bytes_per_s: f64,
}

/// Runs `server bench` and prints its [`EngineBench`] as one JSON line.
pub fn run(args: &EngineBenchArgs) -> Result<(), CliError> {
    let mut model = Llama::load(&args.model, KERNEL_VARIANT, args.threads)?;
    let mut pool = BlockPool::new();
    let prompt = synthetic_prompt(args.prompt_tokens);
    // Warm-up, as llama-bench does before it times anything.
    timed_pass(&mut model, &mut pool, &prompt, 1)?;
    let (prefill_s, decode_s) = timed_pass(&mut model, &mut pool, &prompt, args.gen_tokens)?;
    let bandwidth_bytes = args.bandwidth_bytes.unwrap_or_else(|| {
        let mats = model.matrices();
        mats.iter().map(|(_, w)| w.bytes()).sum()
    });
    let k = model.kernels();
    let result = EngineBench {
        kernel: format!("{:?}", k.variant()),
        threads: k.pool().threads(),
        prompt_tokens: prompt.len(),
        prefill_s,
        prefill_tok_s: prompt.len() as f64 / prefill_s,
        gen_tokens: args.gen_tokens,
        decode_s,
        decode_tok_s: args.gen_tokens as f64 / decode_s,
        bandwidth_bytes,
        bandwidth_bytes_per_s: read_bandwidth(k, bandwidth_bytes, args.bandwidth_reps),
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &result).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Parses a count of 1 or more (a rate over zero tokens is meaningless).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// `n` token ids spread over the vocabulary.
fn synthetic_prompt(n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * PROMPT_ID_STRIDE + 1) % VOCAB_SIZE) as u32)
        .collect()
}

/// One sequence through the model: `prompt` prefilled in `PREFILL_CHUNK`
/// pieces, then `decode_steps` batch-1 decode steps. Returns the seconds of each phase;
/// its KV blocks go back to `pool` when it returns.
fn timed_pass(
    model: &mut Llama,
    pool: &mut BlockPool,
    prompt: &[u32],
    decode_steps: usize,
) -> Result<(f64, f64), CliError> {
    let mut table = BlockTable::new();
    table.reserve(pool, prompt.len() + decode_steps)?;
    let mut logits = Vec::with_capacity(VOCAB_SIZE);
    let started = Instant::now();
    let mut start = 0;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        let mut batch = Batch::new();
        batch.push_chunk(&table, start, chunk, start + chunk.len() == prompt.len())?;
        model.forward(&batch, pool, &mut logits)?;
        start += chunk.len();
    }
    let prefill_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for pos in prompt.len()..prompt.len() + decode_steps {
        let next = argmax(&logits);
        let mut batch = Batch::new();
        batch.push_chunk(&table, pos, &[next], true)?;
        model.forward(&batch, pool, &mut logits)?;
    }
    Ok((prefill_s, started.elapsed().as_secs_f64()))
}
