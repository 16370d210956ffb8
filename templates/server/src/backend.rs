//! The model back end the engine drives: one step's batch in, its logits out. The CPU
//! model ([`crate::model::Llama`]) is one implementation; the `cuda` part adds the GPU's.

use crate::batch::Batch;
use crate::kv_cache::BlockPool;

/// What the engine needs from a model.
pub trait Backend: Send {
    /// Runs one step: every token of `batch` through the model, its K/V into the
    /// cache blocks that `pool` handed out, and `logits` resized to
    /// `L × VOCAB_SIZE` for the batch's `L` logit tokens, in order.
    fn forward(
        &mut self,
        batch: &Batch<'_>,
        pool: &mut BlockPool,
        logits: &mut Vec<f32>,
    ) -> Result<(), String>;

    /// Time in the matrix products and in attention since the last call (which resets
    /// it), for the server's stage metrics; `None` where the back end does not time its
    /// kernels (the whole forward then counts as "other").
    fn take_kernel_times(&mut self) -> Option<crate::kernels::KernelTimes> {
        None
    }

    /// Like [`Backend::forward`], where logits row `r` is wanted only for its argmax when
    /// `greedy[r]`: a back end that selects tokens on the device returns them in
    /// `tokens[r]` (`None`: the row is in `logits`) and need not write those rows, so a
    /// greedy step copies a token per row instead of a vocabulary of floats. The default
    /// computes every row and selects none.
    fn forward_greedy(
        &mut self,
        batch: &Batch<'_>,
        pool: &mut BlockPool,
        logits: &mut Vec<f32>,
        greedy: &[bool],
        tokens: &mut Vec<Option<u32>>,
    ) -> Result<(), String> {
        let _ = greedy;
        tokens.clear();
        self.forward(batch, pool, logits)
    }
}

impl Backend for crate::model::Llama {
    fn forward(
        &mut self,
        batch: &Batch<'_>,
        pool: &mut BlockPool,
        logits: &mut Vec<f32>,
    ) -> Result<(), String> {
        Self::forward(self, batch, pool, logits).map_err(|e| e.to_string())
    }

    fn take_kernel_times(&mut self) -> Option<crate::kernels::KernelTimes> {
        Some(self.kernels().take_times())
    }
}
