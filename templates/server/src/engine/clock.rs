//! The engine thread's stage clock: time read at the boundaries of the loop's named
//! steps (scheduling, forward, sampling) and of the forward's two timed kernels, added up
//! per [`ServingStage`] and flushed into the metrics once per loop turn (so the hot path
//! touches no atomics but the kernels' two counters).

use std::time::Duration;

use crate::http::metrics::{Metrics, ServingStage};
use crate::kernels::KernelTimes;

/// Time per engine stage since the last flush.
#[derive(Debug, Default)]
pub(super) struct StageClock {
    spent: Vec<(ServingStage, Duration)>,
}

impl StageClock {
    /// Adds `time` to `stage`.
    pub(super) fn add(&mut self, stage: ServingStage, time: Duration) {
        match self.spent.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, total)) => *total += time,
            None => self.spent.push((stage, time)),
        }
    }

    /// Splits one forward's `time` into products, attention and the rest (all "other"
    /// when the back end times no kernels), and each of those between prefill and decode
    /// in proportion to the step's tokens: a product's cost grows with its rows, so a
    /// mixed step's tokens share it evenly.
    pub(super) fn forward(
        &mut self,
        time: Duration,
        kernels: Option<KernelTimes>,
        decode_tokens: usize,
        tokens: usize,
    ) {
        let k = kernels.unwrap_or_default();
        let other = time.saturating_sub(k.products + k.attention);
        let decode_share = decode_tokens as f64 / tokens.max(1) as f64;
        let parts = [
            (
                k.products,
                ServingStage::PrefillProducts,
                ServingStage::DecodeProducts,
            ),
            (
                k.attention,
                ServingStage::PrefillAttention,
                ServingStage::DecodeAttention,
            ),
            (other, ServingStage::PrefillOther, ServingStage::DecodeOther),
        ];
        for (spent, prefill, decode) in parts {
            let on_decode = spent.mul_f64(decode_share);
            self.add(decode, on_decode);
            self.add(prefill, spent.saturating_sub(on_decode));
        }
    }

    /// Adds everything gathered to the metrics and starts again.
    pub(super) fn flush(&mut self, metrics: &Metrics) {
        for (stage, time) in self.spent.drain(..) {
            metrics.add_stage(stage, time);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixed_forward_splits_by_kernel_and_by_tokens() {
        let mut clock = StageClock::default();
        let kernels = KernelTimes {
            products: Duration::from_millis(60),
            attention: Duration::from_millis(20),
        };
        clock.forward(Duration::from_millis(100), Some(kernels), 3, 4);
        let get = |s| {
            clock
                .spent
                .iter()
                .find(|(x, _)| *x == s)
                .map(|(_, t)| t.as_millis())
        };
        assert_eq!(get(ServingStage::DecodeProducts), Some(45));
        assert_eq!(get(ServingStage::PrefillProducts), Some(15));
        assert_eq!(get(ServingStage::DecodeAttention), Some(15));
        assert_eq!(get(ServingStage::PrefillOther), Some(5));
        let total: Duration = clock.spent.iter().map(|(_, t)| *t).sum();
        assert_eq!(total, Duration::from_millis(100));
    }

    #[test]
    fn untimed_kernels_count_as_other() {
        let mut clock = StageClock::default();
        clock.forward(Duration::from_millis(10), None, 1, 1);
        let metrics = Metrics::new();
        clock.flush(&metrics);
        let text = metrics.render();
        let other = r#"vibeserve_stage_seconds_total{stage="decode_other"}"#;
        let value = crate::http::metrics::sample(&text, other).unwrap_or_default();
        assert!((value - 0.010).abs() < 1e-9, "{text}");
        assert!(clock.spent.is_empty());
    }
}
