//! One engine step's work, flattened as vLLM does: the tokens of several
//! sequences side by side, each with its position and its sequence's block
//! table, plus which tokens need logits.
//!
//! A sequence usually contributes one contiguous chunk per step: a prefill
//! chunk (positions `start..start + n`) or a single decode token. It may also
//! contribute several consecutive chunks (each starting where the previous
//! ended) to get logits at every position, as teacher-forced scoring and
//! echoed prompt logprobs need. The model reads
//! every weight once for all the step's tokens, writes their K/V into the
//! sequences' blocks, and lets each token attend to positions `0..=pos` of
//! its own sequence (the cached ones and the chunk's earlier tokens).

use crate::kv_cache::BlockTable;
use crate::plan::{CONTEXT_LENGTH, MAX_BATCH_TOKENS, VOCAB_SIZE};

/// Why a chunk could not join a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The chunk has no tokens.
    #[error("a batch chunk must hold at least one token")]
    EmptyChunk,
    /// The step would exceed `plan::MAX_BATCH_TOKENS`.
    #[error("batch holds {have} tokens; adding {adding} exceeds the limit of {MAX_BATCH_TOKENS}")]
    TooManyTokens {
        /// Tokens already in the batch.
        have: usize,
        /// Tokens in the rejected chunk.
        adding: usize,
    },
    /// The chunk runs past the model's context.
    #[error("positions up to {end} exceed the context length {CONTEXT_LENGTH}")]
    BeyondContext {
        /// One past the chunk's last position.
        end: usize,
    },
    /// The sequence's block table holds too few tokens (call `reserve` first).
    #[error("block table holds {capacity} tokens but the chunk ends at position {end}")]
    TableTooShort {
        /// Tokens the table can hold.
        capacity: usize,
        /// One past the chunk's last position.
        end: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {0} is outside the vocabulary of {VOCAB_SIZE}")]
    BadToken(u32),
}

/// The tokens of one engine step.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    tokens: Vec<u32>,
    positions: Vec<usize>,
    /// Index into `tables` of each token's sequence.
    seq_of: Vec<usize>,
    tables: Vec<&'a BlockTable>,
    /// Token indices whose logits are returned, in order.
    logit_tokens: Vec<usize>,
}

impl<'a> Batch<'a> {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk of one sequence: `tokens` at positions `start..`, with
    /// K/V going to `table` (which must already hold `start + tokens.len()`
    /// positions). With `want_logits`, the chunk's last token gets logits.
    /// Returns the chunk's logits row, if any.
    pub fn push_chunk(
        &mut self,
        table: &'a BlockTable,
        start: usize,
        tokens: &[u32],
        want_logits: bool,
    ) -> Result<Option<usize>, BatchError> {
        let end = start + tokens.len();
        if tokens.is_empty() {
            return Err(BatchError::EmptyChunk);
        }
        if self.tokens.len() + tokens.len() > MAX_BATCH_TOKENS {
            return Err(BatchError::TooManyTokens {
                have: self.tokens.len(),
                adding: tokens.len(),
            });
        }
        if end > CONTEXT_LENGTH {
            return Err(BatchError::BeyondContext { end });
        }
        if table.capacity() < end {
            return Err(BatchError::TableTooShort {
                capacity: table.capacity(),
                end,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= VOCAB_SIZE) {
            return Err(BatchError::BadToken(bad));
        }
        let seq = self.tables.len();
        self.tables.push(table);
        self.tokens.extend_from_slice(tokens);
        self.positions.extend(start..end);
        self.seq_of.extend(std::iter::repeat_n(seq, tokens.len()));
        if want_logits {
            self.logit_tokens.push(self.tokens.len() - 1);
            return Ok(Some(self.logit_tokens.len() - 1));
        }
        Ok(None)
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.positions.clear();
        self.seq_of.clear();
        self.tables.clear();
        self.logit_tokens.clear();
    }

    /// Tokens in the step.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the step has no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token ids.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Each token's position in its sequence.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// The block table of token `i`'s sequence.
    pub fn table(&self, i: usize) -> &'a BlockTable {
        self.tables[self.seq_of[i]]
    }

    /// Indices of the tokens that get logits, in output order.
    pub fn logit_tokens(&self) -> &[usize] {
        &self.logit_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::BlockPool;
    use crate::plan::KV_BLOCK_SIZE;

    #[test]
    fn chunks_flatten_in_order_with_logit_rows() {
        let mut pool = BlockPool::with_blocks(4);
        let (mut a, mut b) = (BlockTable::new(), BlockTable::new());
        a.reserve(&mut pool, 3).unwrap();
        b.reserve(&mut pool, 9).unwrap();
        let mut batch = Batch::new();
        assert_eq!(batch.push_chunk(&a, 0, &[5, 6, 7], true), Ok(Some(0)));
        assert_eq!(batch.push_chunk(&b, 8, &[9], true), Ok(Some(1)));
        assert_eq!(batch.tokens(), &[5, 6, 7, 9]);
        assert_eq!(batch.positions(), &[0, 1, 2, 8]);
        assert_eq!(batch.logit_tokens(), &[2, 3]);
        assert!(std::ptr::eq(batch.table(3), &b));
    }

    #[test]
    fn chunk_past_reserved_blocks_is_refused() {
        let mut pool = BlockPool::with_blocks(4);
        let mut a = BlockTable::new();
        a.reserve(&mut pool, 1).unwrap();
        let mut batch = Batch::new();
        let err = batch
            .push_chunk(&a, KV_BLOCK_SIZE, &[1], false)
            .unwrap_err();
        assert_eq!(
            err,
            BatchError::TableTooShort {
                capacity: KV_BLOCK_SIZE,
                end: KV_BLOCK_SIZE + 1
            }
        );
        assert_eq!(
            batch.push_chunk(&a, 0, &[], false),
            Err(BatchError::EmptyChunk)
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn token_budget_and_vocabulary_are_enforced() {
        let mut pool = BlockPool::with_blocks(MAX_BATCH_TOKENS / KV_BLOCK_SIZE + 2);
        let mut a = BlockTable::new();
        a.reserve(&mut pool, MAX_BATCH_TOKENS + 1).unwrap();
        let mut batch = Batch::new();
        let many = vec![1u32; MAX_BATCH_TOKENS + 1];
        assert!(matches!(
            batch.push_chunk(&a, 0, &many, false),
            Err(BatchError::TooManyTokens { .. })
        ));
        let bad = VOCAB_SIZE as u32;
        assert_eq!(
            batch.push_chunk(&a, 0, &[bad], false),
            Err(BatchError::BadToken(bad))
        );
    }
}
