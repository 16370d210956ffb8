//! What `bench-engine` reports: the spread of each figure, the decode floor, the machine,
//! and the table it prints.

use std::path::Path;

use serde::Serialize;

use crate::model::TensorInfo;

/// One engine's prefill and decode figures from one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Prefill tokens per second.
    pub prefill: f64,
    /// Batch-1 decode tokens per second.
    pub decode: f64,
}

/// Median, min and max of a figure over the repetitions, with every sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// The samples, in the order they were taken.
    pub samples: Vec<f64>,
}

impl Spread {
    /// The spread of `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples: samples.to_vec(),
        })
    }
}

/// One engine's figures over all repetitions, tokens per second.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Prefill of the prompt.
    pub prefill_tok_s: Spread,
    /// Batch-1 decode.
    pub decode_tok_s: Spread,
}

impl Figures {
    /// The figures of `samples`; `None` when there are none.
    pub fn of(samples: &[Sample]) -> Option<Self> {
        let prefill: Vec<f64> = samples.iter().map(|s| s.prefill).collect();
        let decode: Vec<f64> = samples.iter().map(|s| s.decode).collect();
        Some(Figures {
            prefill_tok_s: Spread::of(&prefill)?,
            decode_tok_s: Spread::of(&decode)?,
        })
    }
}

/// The batch-1 decode floor and how far each engine is from it.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Bytes of weights one decode step reads.
    pub weight_bytes_per_token: u64,
    /// Read bandwidth over a working set of that size, GB/s.
    pub bandwidth_gb_s: Spread,
    /// Median bandwidth over bytes per token: the most decode tokens per second.
    pub decode_tok_s: f64,
    /// Our median decode as a fraction of the floor.
    pub ours_fraction: f64,
    /// llama.cpp's median decode as a fraction of the floor.
    pub llama_cpp_fraction: Option<f64>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// The CPU's model name.
    pub cpu: String,
    /// Logical CPUs available to this process.
    pub logical_cpus: usize,
    /// The SIMD extensions the kernels can use that the CPU has.
    pub simd: Vec<String>,
    /// Per-core L2 and shared L3 cache sizes, as the kernel reports them.
    pub caches: Vec<String>,
}

/// Everything `bench-engine` measured.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    /// The target's name.
    pub target: String,
    /// The model file's name.
    pub model: String,
    /// Where it ran.
    pub machine: Machine,
    /// Compute threads of both engines.
    pub threads: usize,
    /// Our kernel variant, as resolved on this CPU.
    pub kernel: String,
    /// Prompt tokens of the prefill test.
    pub prompt_tokens: usize,
    /// Decode steps of the decode test.
    pub gen_tokens: usize,
    /// Repetitions of each engine.
    pub reps: usize,
    /// Our engine.
    pub ours: Figures,
    /// llama.cpp's `llama-bench` (absent with `--no-peer`).
    pub llama_cpp: Option<Figures>,
    /// Ours over llama.cpp, median over median: prefill.
    pub prefill_ratio: Option<f64>,
    /// Ours over llama.cpp, median over median: decode.
    pub decode_ratio: Option<f64>,
    /// The decode floor.
    pub floor: Floor,
}

/// Bytes of weights one batch-1 decode step reads: every tensor once, except that the
/// token embedding contributes one row when the model has its own `output.weight` (a
/// tied embedding is read whole, as the LM head).
pub fn weight_bytes_per_token(tensors: &[TensorInfo]) -> u64 {
    let untied = tensors.iter().any(|t| t.name == "output.weight");
    tensors
        .iter()
        .map(|t| match t.shape.get(1) {
            Some(&rows) if untied && t.name == "token_embd.weight" => t.n_bytes / rows.max(1),
            _ => t.n_bytes,
        })
        .sum()
}

/// The floor that `bandwidth_bytes_per_s` samples and `bytes` per token imply, and each
/// engine's distance from it.
pub fn floor(
    bytes: u64,
    bandwidth_bytes_per_s: &[f64],
    ours: &Figures,
    llama_cpp: Option<&Figures>,
) -> Option<Floor> {
    let gb_s: Vec<f64> = bandwidth_bytes_per_s.iter().map(|b| b / 1e9).collect();
    let bandwidth_gb_s = Spread::of(&gb_s)?;
    let decode_tok_s = bandwidth_gb_s.median * 1e9 / bytes as f64;
    Some(Floor {
        weight_bytes_per_token: bytes,
        decode_tok_s,
        ours_fraction: ours.decode_tok_s.median / decode_tok_s,
        llama_cpp_fraction: llama_cpp.map(|f| f.decode_tok_s.median / decode_tok_s),
        bandwidth_gb_s,
    })
}

impl Machine {
    /// This machine, from `/proc/cpuinfo` and `/sys` (fields left empty where absent).
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |key: &str| {
            cpuinfo
                .lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let flags = field("flags").unwrap_or_default();
        let simd = [
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512_vnni",
            "avx512_bf16",
        ]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .map(str::to_owned)
        .collect();
        let cache = Path::new("/sys/devices/system/cpu/cpu0/cache");
        let caches = (2..=3)
            .filter_map(|i| {
                let size = std::fs::read_to_string(cache.join(format!("index{i}/size"))).ok()?;
                Some(format!("L{i} {}", size.trim()))
            })
            .collect();
        Machine {
            cpu: field("model name").unwrap_or_else(|| std::env::consts::ARCH.into()),
            logical_cpus: std::thread::available_parallelism().map_or(1, usize::from),
            simd,
            caches,
        }
    }
}

/// The report as a table.
pub fn table(r: &EngineReport) -> String {
    let m = &r.machine;
    let mut s = format!(
        "engine benchmark: {} ({}), {} threads, kernel {}, {} reps alternating with llama-bench\n",
        r.target, r.model, r.threads, r.kernel, r.reps
    );
    s += &format!(
        "machine: {}, {} logical CPUs, {}; {}\n\n",
        m.cpu,
        m.logical_cpus,
        m.simd.join(" "),
        m.caches.join(", ")
    );
    s += &format!(
        "{:<24} {:>24} {:>24} {:>15}\n",
        "tok/s: median (min-max)", "ours", "llama.cpp", "ours/llama.cpp"
    );
    let cell = |x: Option<&Spread>| {
        x.map_or("-".into(), |x| {
            format!("{:.1} ({:.1}-{:.1})", x.median, x.min, x.max)
        })
    };
    let rows = [
        (
            format!("prefill pp{}", r.prompt_tokens),
            &r.ours.prefill_tok_s,
            r.llama_cpp.as_ref().map(|l| &l.prefill_tok_s),
            r.prefill_ratio,
        ),
        (
            format!("decode tg{}", r.gen_tokens),
            &r.ours.decode_tok_s,
            r.llama_cpp.as_ref().map(|l| &l.decode_tok_s),
            r.decode_ratio,
        ),
    ];
    for (name, ours, theirs, ratio) in rows {
        let ratio = ratio.map_or("-".into(), |x| format!("{x:.2}x"));
        s += &format!(
            "{name:<24} {:>24} {:>24} {ratio:>15}\n",
            cell(Some(ours)),
            cell(theirs)
        );
    }
    let f = &r.floor;
    s += &format!(
        "\ndecode floor: {:.1} MB of weights per token / {} GB/s read over that working set = {:.1} tok/s\n",
        f.weight_bytes_per_token as f64 / 1e6,
        cell(Some(&f.bandwidth_gb_s)),
        f.decode_tok_s
    );
    let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.0}%", x * 100.0));
    s += &format!(
        "decode as a share of the floor: ours {}, llama.cpp {}",
        pct(Some(f.ours_fraction)),
        pct(f.llama_cpp_fraction)
    );
    s
}
