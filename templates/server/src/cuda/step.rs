//! One step's inputs as the engine hands them over, and their packed layout on the
//! device (one upload per step, from pinned memory).

/// One step's inputs: `n` query tokens, each of one sequence, and which get logits.
#[derive(Debug, Default, Clone)]
pub struct StepInput {
    /// Token ids.
    pub tokens: Vec<i32>,
    /// Each token's position in its sequence.
    pub positions: Vec<i32>,
    /// Index into `tables` of each token's sequence.
    pub seq: Vec<i32>,
    /// Each sequence's KV blocks (device block ids, see [`super::CudaLlama::device_block`]).
    pub tables: Vec<Vec<i32>>,
    /// Token indices whose logits (and selected token) the step produces, in order.
    pub logit_rows: Vec<i32>,
    /// Sampling temperature per logits row (0: greedy).
    pub temps: Vec<f32>,
    /// Sampling seed per logits row (a fresh one each step).
    pub seeds: Vec<u64>,
}

impl StepInput {
    /// A decode step: one token per sequence, every row gets logits.
    pub fn is_decode(&self) -> bool {
        self.tokens.len() == self.tables.len()
            && self.logit_rows.len() == self.tokens.len()
            && self.seq.iter().enumerate().all(|(i, &s)| s as usize == i)
            && self
                .logit_rows
                .iter()
                .enumerate()
                .all(|(i, &r)| r as usize == i)
    }
}

/// Offsets (in i32 elements) of the sections of the packed step input.
pub(super) struct Layout {
    pub(super) tokens: usize,
    pub(super) positions: usize,
    pub(super) slots: usize,
    pub(super) q_seq: usize,
    pub(super) q_ctx: usize,
    pub(super) logit_rows: usize,
    /// f32 sampling temperature per logits row.
    pub(super) temps: usize,
    /// u64 sampling seed per logits row (two elements each, 8-byte aligned).
    pub(super) seeds: usize,
    /// Row width of this step's block tables (the longest table), read by the kernel.
    pub(super) stride: usize,
    pub(super) tables: usize,
    pub(super) total: usize,
}

impl Layout {
    pub(super) fn new(max_tokens: usize, max_blocks: usize) -> Self {
        let m = max_tokens;
        let seeds = (7 * m).next_multiple_of(2);
        Self {
            tokens: 0,
            positions: m,
            slots: 2 * m,
            q_seq: 3 * m,
            q_ctx: 4 * m,
            logit_rows: 5 * m,
            temps: 6 * m,
            seeds,
            stride: seeds + 2 * m,
            tables: seeds + 2 * m + 1,
            total: seeds + 2 * m + 1 + m * max_blocks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_follow_each_other_and_seeds_are_8_byte_aligned() {
        for (max_tokens, max_blocks) in [(1, 1), (7, 3), (512, 256), (513, 64)] {
            let l = Layout::new(max_tokens, max_blocks);
            let starts = [
                l.tokens,
                l.positions,
                l.slots,
                l.q_seq,
                l.q_ctx,
                l.logit_rows,
                l.temps,
            ];
            for pair in starts.windows(2) {
                assert_eq!(pair[1] - pair[0], max_tokens, "{max_tokens} rows a section");
            }
            assert!(l.seeds >= l.temps + max_tokens, "temps overlap the seeds");
            assert_eq!(l.seeds % 2, 0, "u64 seeds must start on an 8-byte boundary");
            assert_eq!(l.stride, l.seeds + 2 * max_tokens);
            assert_eq!(l.total, l.tables + max_tokens * max_blocks);
        }
    }
}
