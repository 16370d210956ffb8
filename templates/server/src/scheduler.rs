//! Continuous batching policy: which sequences run in the next engine step, and
//! which tokens of each.
//!
//! A sync state machine; the engine thread calls [`Scheduler::schedule`] once per
//! step and reports back what happened. Policy:
//!
//! * **One batch per step.** Every decoding sequence contributes its one new token;
//!   the rest of the `MAX_BATCH_TOKENS` budget goes to prefill chunks of at most
//!   `PREFILL_CHUNK` tokens, so a long prompt is spread over several steps and never
//!   stalls the running decodes for longer than one chunk.
//! * **Admission reserves KV blocks up front** for the prompt plus `max_tokens`, in
//!   FIFO order. A request that does not fit waits in the queue (and so does every
//!   request behind it: no overtaking, so a large request is not starved). Because a
//!   running sequence already owns every block it can ever need, a running request is
//!   never failed or preempted for memory. The price: blocks reserved for tokens that
//!   are never generated (an early stop) are idle until the sequence ends.
//! * **At most `MAX_BATCH_SEQS` sequences run at once.**
//! * **A cached prefix is not recomputed** (with `PREFIX_CACHE`): at admission a
//!   sequence takes the published KV blocks of its prompt's leading full blocks, up
//!   to the block before its last prompt token (whose logits it needs), and starts
//!   its prefill after them; every block it fills is published in turn. A prompt
//!   whose logits are all wanted (echo with logprobs) computes every position.

use std::collections::VecDeque;

use crate::kv_cache::{BlockHash, BlockPool, BlockTable, KvFull};
use crate::plan::{self, KV_BLOCK_SIZE};

/// A sequence's id, unique for the server's lifetime.
pub type SeqId = u64;

/// What the scheduler knows of a sequence.
#[derive(Debug)]
pub struct Sequence {
    /// Its id.
    pub id: SeqId,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    /// Length of the prompt within `tokens`.
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub computed: usize,
    /// Most tokens it may generate.
    pub max_new: usize,
    /// Whether logits are wanted at every prompt position (echo with logprobs).
    pub score_prompt: bool,
    /// Its KV-cache blocks (reserved at admission).
    pub blocks: BlockTable,
    /// Hashes of its leading full blocks (as far as they have been needed).
    hashes: Vec<BlockHash>,
    /// Leading blocks published to (or taken from) the prefix cache.
    published: usize,
}

impl Sequence {
    /// A new sequence that has not run yet.
    pub fn new(id: SeqId, prompt: Vec<u32>, max_new: usize, score_prompt: bool) -> Self {
        Self {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            max_new,
            score_prompt,
            blocks: BlockTable::default(),
            hashes: Vec::new(),
            published: 0,
        }
    }

    /// Tokens of the cache this sequence may fill: the prompt and all it may generate.
    fn reserved_tokens(&self) -> usize {
        self.prompt_len + self.max_new
    }

    /// Prompt blocks it may take from the prefix cache: the full blocks before its
    /// last prompt token (computed for its logits); none when every prompt
    /// position's logits are wanted.
    fn shareable_blocks(&self) -> usize {
        if !plan::PREFIX_CACHE || self.score_prompt {
            return 0;
        }
        (self.prompt_len - 1) / KV_BLOCK_SIZE
    }

    /// Extends `hashes` over its first `n` full blocks (`n · KV_BLOCK_SIZE <= tokens`).
    fn hash_blocks(&mut self, pool: &BlockPool, n: usize) {
        while self.hashes.len() < n {
            let at = self.hashes.len() * KV_BLOCK_SIZE;
            let block = &self.tokens[at..at + KV_BLOCK_SIZE];
            let hash = pool.hash_block(self.hashes.last().copied(), block);
            self.hashes.push(hash);
        }
    }

    /// Takes its cached prefix and reserves blocks for the rest of the prompt and
    /// all it may generate. All or nothing. Returns the prompt tokens found cached.
    fn admit(&mut self, pool: &mut BlockPool) -> Result<usize, KvFull> {
        let shareable = self.shareable_blocks();
        self.hash_blocks(pool, shareable);
        let shared = self.blocks.share_prefix(pool, &self.hashes[..shareable]);
        if let Err(full) = self.blocks.reserve(pool, self.reserved_tokens()) {
            self.blocks.release();
            return Err(full);
        }
        self.computed = shared * KV_BLOCK_SIZE;
        self.published = shared;
        Ok(self.computed)
    }

    /// Publishes the blocks that are now full, for later prompts to share.
    fn publish_full_blocks(&mut self, pool: &BlockPool) {
        if !plan::PREFIX_CACHE {
            return;
        }
        let full = self.computed / KV_BLOCK_SIZE;
        self.hash_blocks(pool, full);
        for i in self.published..full {
            self.blocks.publish(pool, i, self.hashes[i]);
        }
        self.published = self.published.max(full);
    }

    /// Whether its whole prompt is in the cache.
    pub fn prefilled(&self) -> bool {
        self.computed >= self.prompt_len
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Which logits a scheduled slice needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None: a prefill chunk that does not reach the end of the prompt.
    None,
    /// At its last token: the next token is sampled from them.
    Last,
    /// At every token: the prompt is scored (echo with logprobs).
    All,
}

/// One sequence's part of a step: tokens `start..start + len` of its `tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// The sequence.
    pub id: SeqId,
    /// First position computed in this step.
    pub start: usize,
    /// Tokens computed in this step.
    pub len: usize,
    /// Which logits the step must return for it.
    pub logits: Logits,
}

/// The work of one engine step: decodes first, then prefill chunks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// Each scheduled sequence's slice.
    pub items: Vec<Scheduled>,
    /// Prompt tokens of the sequences admitted for this step that could be looked
    /// up in the prefix cache.
    pub prefix_queried: usize,
    /// Of those, tokens found cached (not computed again).
    pub prefix_hits: usize,
}

impl StepPlan {
    /// Tokens in the step.
    pub fn tokens(&self) -> usize {
        self.items.iter().map(|s| s.len).sum()
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Waiting and running sequences.
#[derive(Debug, Default)]
pub struct Scheduler {
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a sequence for admission.
    pub fn enqueue(&mut self, seq: Sequence) {
        self.waiting.push_back(seq);
    }

    /// Sequences waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences admitted and not finished.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether nothing waits or runs.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// A running sequence.
    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.running.iter().find(|s| s.id == id)
    }

    /// Ids of every sequence, waiting or running.
    pub fn ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().chain(&self.running).map(|s| s.id)
    }

    /// Plans the next step: every decode, then prefill chunks within the token
    /// budget, admitting waiting sequences whose blocks can be reserved.
    pub fn schedule(&mut self, pool: &mut BlockPool) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = plan::MAX_BATCH_TOKENS;
        let decoding = |s: &&Sequence| s.prefilled() && s.tokens.len() > s.computed;
        for seq in self.running.iter().filter(decoding) {
            if budget == 0 {
                break;
            }
            plan.items.push(decode_slice(seq));
            budget -= 1;
        }
        for seq in self.running.iter().filter(|s| !s.prefilled()) {
            if budget == 0 {
                break;
            }
            let slice = prefill_slice(seq, budget);
            budget -= slice.len;
            plan.items.push(slice);
        }
        while budget > 0 && self.running.len() < plan::MAX_BATCH_SEQS {
            let Some((seq, hits)) = self.admit(pool) else {
                break;
            };
            if seq.shareable_blocks() > 0 {
                plan.prefix_queried += seq.prompt_len;
                plan.prefix_hits += hits;
            }
            let slice = prefill_slice(seq, budget);
            budget -= slice.len;
            plan.items.push(slice);
        }
        plan
    }

    /// Moves the head of the queue to the running set if its blocks can be
    /// reserved; returns it and the prompt tokens it found cached.
    fn admit(&mut self, pool: &mut BlockPool) -> Option<(&Sequence, usize)> {
        let hits = self.waiting.front_mut()?.admit(pool).ok()?;
        let seq = self.waiting.pop_front()?;
        self.running.push(seq);
        self.running.last().map(|s| (s, hits))
    }

    /// Records that the step computed `len` more tokens of `id`'s cache, and
    /// publishes the blocks that filled.
    pub fn computed(&mut self, id: SeqId, len: usize, pool: &BlockPool) {
        if let Some(seq) = self.running.iter_mut().find(|s| s.id == id) {
            seq.computed += len;
            seq.publish_full_blocks(pool);
        }
    }

    /// Appends a generated token to `id`.
    pub fn push_token(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.running.iter_mut().find(|s| s.id == id) {
            seq.tokens.push(token);
        }
    }

    /// Ends `id` (finished, cancelled or failed), waiting or running; its blocks go
    /// back to the pool as its table drops. Returns whether it was there.
    pub fn remove(&mut self, id: SeqId) -> bool {
        let seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            Some(self.running.swap_remove(i))
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i)
        } else {
            None
        };
        seq.is_some()
    }
}

/// The one-token step of a decoding sequence: feeds its last generated token.
fn decode_slice(seq: &Sequence) -> Scheduled {
    Scheduled {
        id: seq.id,
        start: seq.computed,
        len: seq.tokens.len() - seq.computed,
        logits: Logits::Last,
    }
}

/// The next prefill chunk of `seq`, at most `PREFILL_CHUNK` and `budget` tokens.
fn prefill_slice(seq: &Sequence, budget: usize) -> Scheduled {
    let remaining = seq.prompt_len - seq.computed;
    let len = remaining.min(plan::PREFILL_CHUNK).min(budget);
    let logits = if seq.score_prompt {
        Logits::All
    } else if len == remaining {
        Logits::Last
    } else {
        Logits::None
    };
    Scheduled {
        id: seq.id,
        start: seq.computed,
        len,
        logits,
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
