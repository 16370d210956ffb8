//! The GPU model (one GPU or a tensor-parallel group) as the engine's [`Backend`]: a
//! batch of the shared scheduler becomes a [`StepInput`] (block ids shifted past the
//! scratch block), and the logits rows come back to the host for the shared sampler,
//! or only the device's token for a step of plain greedy rows.

use crate::backend::Backend;
use crate::batch::Batch;
use crate::kv_cache::{BlockPool, BlockTable};
use crate::plan;

use super::{CudaLlama, ModelGroup, StepInput};

/// The step input of a batch: tokens, positions, one table per distinct sequence.
pub fn step_input(batch: &Batch<'_>) -> StepInput {
    let mut input = StepInput::default();
    let mut last: Option<&BlockTable> = None;
    for (i, (&token, &pos)) in batch.tokens().iter().zip(batch.positions()).enumerate() {
        let table = batch.table(i);
        // A sequence's chunks are consecutive in a batch: a new table starts a new sequence.
        if !last.is_some_and(|l| std::ptr::eq(l, table)) {
            input.tables.push(
                table
                    .blocks()
                    .iter()
                    .map(|&b| CudaLlama::device_block(b))
                    .collect(),
            );
            last = Some(table);
        }
        input.tokens.push(token as i32);
        input.positions.push(pos as i32);
        input.seq.push(input.tables.len() as i32 - 1);
    }
    input.logit_rows = batch.logit_tokens().iter().map(|&t| t as i32).collect();
    input.temps = vec![0.0; input.logit_rows.len()];
    input.seeds = vec![0; input.logit_rows.len()];
    input
}

impl Backend for ModelGroup {
    fn forward(
        &mut self,
        batch: &Batch<'_>,
        _pool: &mut BlockPool,
        logits: &mut Vec<f32>,
    ) -> Result<(), String> {
        let input = step_input(batch);
        self.step(&input).map_err(|e| e.to_string())?;
        let rows = input.logit_rows.len();
        *logits = self.logits(rows).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// A step whose every logits row is plain greedy takes the device's argmax (already
    /// selected by the step's sampling kernel, temperature 0) and copies one id per row;
    /// any other step copies every row for the shared sampler.
    fn forward_greedy(
        &mut self,
        batch: &Batch<'_>,
        _pool: &mut BlockPool,
        logits: &mut Vec<f32>,
        greedy: &[bool],
        tokens: &mut Vec<Option<u32>>,
    ) -> Result<(), String> {
        let input = step_input(batch);
        self.step(&input).map_err(|e| e.to_string())?;
        let rows = input.logit_rows.len();
        tokens.clear();
        if rows > 0 && greedy.len() == rows && greedy.iter().all(|&g| g) {
            let ids = self.sampled(rows).map_err(|e| e.to_string())?;
            tokens.extend(ids.into_iter().map(|id| u32::try_from(id).ok()));
            // The engine slices a row per logits token; these rows are never read.
            logits.resize(rows * plan::VOCAB_SIZE, 0.0);
        } else {
            *logits = self.logits(rows).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_input_maps_each_token_to_its_sequence_table() {
        let mut pool = BlockPool::with_blocks(8);
        let (mut a, mut b) = (BlockTable::new(), BlockTable::new());
        a.reserve(&mut pool, 20).expect("blocks for a");
        b.reserve(&mut pool, 3).expect("blocks for b");
        let mut batch = Batch::new();
        batch.push_chunk(&a, 0, &[5, 6, 7], true).expect("chunk a");
        batch.push_chunk(&b, 2, &[9], true).expect("chunk b");
        let input = step_input(&batch);
        assert_eq!(input.tokens, [5, 6, 7, 9]);
        assert_eq!(input.positions, [0, 1, 2, 2]);
        assert_eq!(input.seq, [0, 0, 0, 1]);
        let shifted = |t: &BlockTable| t.blocks().iter().map(|&x| x as i32 + 1).collect::<Vec<_>>();
        assert_eq!(input.tables, [shifted(&a), shifted(&b)]);
        assert_eq!(input.logit_rows, [2, 3]);
        assert!(!input.is_decode(), "a prefill chunk is not a decode step");
    }
}
