//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! The HTTP layer counts requests by endpoint and status; the engine thread sets the
//! gauges and observes the latency histograms once per step (every metric is atomic,
//! so no lock is held on the hot path).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::plan;

/// Prefix of every metric name.
const PREFIX: &str = "vibeserve";
/// Smallest TTFT bucket, in seconds; buckets double from here.
const TTFT_FIRST_BUCKET_S: f64 = 0.005;
/// Smallest inter-token latency bucket, in seconds; buckets double from here.
const ITL_FIRST_BUCKET_S: f64 = 0.001;
/// Histogram buckets (each twice the last): 5 ms .. 41 s for TTFT, 1 ms .. 8 s for ITL.
const BUCKETS: u16 = 14;

/// A stage of serving a request, as `vibeserve_stage_seconds_total{stage}` names it.
///
/// The engine stages partition the one engine thread's busy time, so over any interval
/// their sum is at most the interval's wall time. The request stages are summed over
/// requests (they overlap one another), so over an interval their sum divided by its wall
/// time is the mean number of requests in that stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingStage {
    /// Engine: admitting, scheduling, freeing and publishing gauges between forwards.
    Schedule,
    /// Engine: the matrix products of prompt tokens.
    PrefillProducts,
    /// Engine: attention over the cache for prompt tokens.
    PrefillAttention,
    /// Engine: the rest of a prompt token's forward (norms, RoPE, activation
    /// quantization, K/V writes; all of it on a back end that times no kernels).
    PrefillOther,
    /// Engine: the matrix products of decoded tokens.
    DecodeProducts,
    /// Engine: attention over the cache for decoded tokens.
    DecodeAttention,
    /// Engine: the rest of a decoded token's forward.
    DecodeOther,
    /// Engine: sampling from logits and scoring logprobs.
    Sample,
    /// Engine: turning tokens into text and checking stop strings.
    Detokenize,
    /// Request: from arrival to its first scheduled step.
    QueueWait,
    /// Request: tokenizing the prompt (HTTP worker).
    Tokenize,
    /// Request: formatting streamed chunks (HTTP worker).
    Respond,
}

impl ServingStage {
    /// Every stage, engine stages first.
    pub const ALL: [ServingStage; 12] = [
        Self::Schedule,
        Self::PrefillProducts,
        Self::PrefillAttention,
        Self::PrefillOther,
        Self::DecodeProducts,
        Self::DecodeAttention,
        Self::DecodeOther,
        Self::Sample,
        Self::Detokenize,
        Self::QueueWait,
        Self::Tokenize,
        Self::Respond,
    ];

    /// The `stage` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::PrefillProducts => "prefill_products",
            Self::PrefillAttention => "prefill_attention",
            Self::PrefillOther => "prefill_other",
            Self::DecodeProducts => "decode_products",
            Self::DecodeAttention => "decode_attention",
            Self::DecodeOther => "decode_other",
            Self::Sample => "sample",
            Self::Detokenize => "detokenize",
            Self::QueueWait => "queue_wait",
            Self::Tokenize => "tokenize",
            Self::Respond => "respond",
        }
    }

    /// Whether the engine thread spends this time (else it is per request).
    pub fn on_engine(self) -> bool {
        !matches!(self, Self::QueueWait | Self::Tokenize | Self::Respond)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Labels of a serving stage's time.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// [`ServingStage::as_str`].
    pub stage: &'static str,
}

/// Labels of a finished HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route, e.g. `/v1/completions` (unmatched paths count as `other`).
    pub endpoint: String,
    /// HTTP status code.
    pub status: u16,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Prompt tokens admitted to the engine.
    pub prompt_tokens: Counter,
    /// Tokens generated.
    pub generated_tokens: Counter,
    /// Sequences ended because their client went away.
    pub cancelled: Counter,
    /// Requests waiting for admission.
    pub queue_depth: Gauge,
    /// Sequences in the running batch (prefilling or decoding).
    pub running: Gauge,
    /// KV-cache blocks held by sequences.
    pub kv_blocks_used: Gauge,
    /// KV-cache blocks no sequence holds that keep a cached prefix.
    pub kv_blocks_cached: Gauge,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: Counter,
    /// Prompt tokens found in the prefix cache (not computed again).
    pub prefix_cache_hits: Counter,
    /// Time from a request's arrival to its first generated token.
    pub ttft: Histogram,
    /// Time between consecutive generated tokens of one sequence.
    pub inter_token: Histogram,
    /// Sequences that ended normally (stop or length).
    pub finished: Counter,
    /// Seconds per serving stage, indexed by [`ServingStage`] (see [`Metrics::add_stage`]).
    stages: Vec<Counter<f64, AtomicU64>>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Self {
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            cancelled: Counter::default(),
            queue_depth: Gauge::default(),
            running: Gauge::default(),
            kv_blocks_used: Gauge::default(),
            kv_blocks_cached: Gauge::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            ttft: Histogram::new(exponential_buckets(TTFT_FIRST_BUCKET_S, 2.0, BUCKETS)),
            inter_token: Histogram::new(exponential_buckets(ITL_FIRST_BUCKET_S, 2.0, BUCKETS)),
            finished: Counter::default(),
            stages: Vec::new(),
            registry: Registry::default(),
        };
        registry.register("requests", "HTTP requests answered", m.requests.clone());
        registry.register(
            "prompt_tokens",
            "Prompt tokens admitted",
            m.prompt_tokens.clone(),
        );
        let generated = m.generated_tokens.clone();
        registry.register("generated_tokens", "Tokens generated", generated);
        let cancelled = m.cancelled.clone();
        registry.register(
            "cancelled_sequences",
            "Sequences ended by disconnect",
            cancelled,
        );
        registry.register(
            "queue_depth",
            "Requests waiting for admission",
            m.queue_depth.clone(),
        );
        registry.register(
            "running_sequences",
            "Sequences in the batch",
            m.running.clone(),
        );
        let used = m.kv_blocks_used.clone();
        registry.register("kv_blocks_used", "KV-cache blocks in use", used);
        let cached = m.kv_blocks_cached.clone();
        registry.register("kv_blocks_cached", "Idle blocks keeping a prefix", cached);
        let queries = m.prefix_cache_queries.clone();
        registry.register(
            "prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            queries,
        );
        let hits = m.prefix_cache_hits.clone();
        registry.register(
            "prefix_cache_hits",
            "Prompt tokens found in the prefix cache",
            hits,
        );
        let total = Gauge::<i64>::default();
        total.set(i64::try_from(plan::KV_BLOCKS).unwrap_or(i64::MAX));
        registry.register("kv_blocks_total", "KV-cache blocks in the pool", total);
        let ttft = m.ttft.clone();
        registry.register(
            "time_to_first_token_seconds",
            "Arrival to first token",
            ttft,
        );
        let itl = m.inter_token.clone();
        registry.register(
            "inter_token_latency_seconds",
            "Between generated tokens",
            itl,
        );
        let finished = m.finished.clone();
        registry.register("finished_sequences", "Sequences ended normally", finished);
        let family = Family::<StageLabels, Counter<f64, AtomicU64>>::default();
        let stages = ServingStage::ALL
            .iter()
            .map(|s| {
                family
                    .get_or_create(&StageLabels { stage: s.as_str() })
                    .clone()
            })
            .collect();
        registry.register(
            "stage_seconds",
            "Seconds per serving stage (engine stages: the engine thread's; others: summed over requests)",
            family,
        );
        Self {
            registry,
            stages,
            ..m
        }
    }

    /// Adds `time` to a stage's seconds.
    pub fn add_stage(&self, stage: ServingStage, time: Duration) {
        if !time.is_zero() {
            self.stages[stage.index()].inc_by(time.as_secs_f64());
        }
    }

    /// Counts one answered request.
    pub fn record_request(&self, endpoint: &str, status: u16) {
        let labels = RequestLabels {
            endpoint: endpoint.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            text = format!("# metrics encoding failed: {e}\n");
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads one sample (`name{labels} value`) back from the text exposition; for tests
/// and for clients that poll `/metrics`.
pub fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_holds_every_metric_with_values() {
        let m = Metrics::new();
        m.record_request("/v1/completions", 200);
        m.record_request("/v1/completions", 200);
        m.record_request("/v1/completions", 429);
        m.generated_tokens.inc_by(7);
        m.queue_depth.set(3);
        m.ttft.observe(0.02);
        let text = m.render();
        let ok = r#"vibeserve_requests_total{endpoint="/v1/completions",status="200"}"#;
        assert_eq!(sample(&text, ok), Some(2.0));
        let busy = r#"vibeserve_requests_total{endpoint="/v1/completions",status="429"}"#;
        assert_eq!(sample(&text, busy), Some(1.0));
        assert_eq!(sample(&text, "vibeserve_generated_tokens_total"), Some(7.0));
        assert_eq!(sample(&text, "vibeserve_queue_depth"), Some(3.0));
        assert_eq!(
            sample(&text, "vibeserve_kv_blocks_total"),
            Some(plan::KV_BLOCKS as f64)
        );
        assert_eq!(
            sample(&text, "vibeserve_time_to_first_token_seconds_count"),
            Some(1.0)
        );
        m.add_stage(ServingStage::DecodeProducts, Duration::from_millis(250));
        let text = m.render();
        let stage =
            |s: ServingStage| format!("vibeserve_stage_seconds_total{{stage=\"{}\"}}", s.as_str());
        assert_eq!(
            sample(&text, &stage(ServingStage::DecodeProducts)),
            Some(0.25)
        );
        for s in ServingStage::ALL {
            assert!(
                sample(&text, &stage(s)).is_some(),
                "{} missing:\n{text}",
                s.as_str()
            );
        }
        for name in [
            "vibeserve_finished_sequences_total",
            "vibeserve_prompt_tokens_total",
            "vibeserve_running_sequences",
            "vibeserve_kv_blocks_used",
            "vibeserve_cancelled_sequences_total",
            "vibeserve_inter_token_latency_seconds_count",
        ] {
            assert!(sample(&text, name).is_some(), "{name} missing:\n{text}");
        }
    }
}
