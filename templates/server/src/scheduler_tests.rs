//! Tests of the batching policy, one per rule, calling the sync scheduler directly.

use super::*;
use plan::{KV_BLOCK_SIZE, MAX_BATCH_SEQS, MAX_BATCH_TOKENS, PREFILL_CHUNK, PREFIX_CACHE};

/// `tokens` when the plan caches prefixes, else none.
fn cached(tokens: usize) -> usize {
    if PREFIX_CACHE { tokens } else { 0 }
}

/// KV blocks that hold `tokens` tokens: pools sized by the plan, so the tests hold for any
/// target's chunk and budget, not only the template's.
fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(KV_BLOCK_SIZE)
}

/// A sequence with a `prompt_len`-token prompt.
fn seq(id: SeqId, prompt_len: usize, max_new: usize) -> Sequence {
    Sequence::new(id, vec![1; prompt_len], max_new, false)
}

/// Does what the engine does after a forward: advance the cache, and append a token
/// to every sequence whose prompt is done, whose last slice had logits and that may
/// still generate.
fn run_step(s: &mut Scheduler, pool: &BlockPool, plan: &StepPlan) {
    for item in &plan.items {
        s.computed(item.id, item.len, pool);
        let wants_token = s
            .get(item.id)
            .is_some_and(|q| q.prefilled() && q.generated() < q.max_new);
        if item.logits != Logits::None && wants_token {
            s.push_token(item.id, 7);
        }
    }
}

fn item(plan: &StepPlan, id: SeqId) -> Option<Scheduled> {
    plan.items.iter().copied().find(|s| s.id == id)
}

#[test]
fn every_running_decode_joins_one_batch() {
    let mut pool = BlockPool::with_blocks(64);
    let mut s = Scheduler::new();
    for id in 0..4 {
        s.enqueue(seq(id, 5, 8));
    }
    let first = s.schedule(&mut pool);
    assert_eq!(first.items.len(), 4, "all four prompts prefill together");
    run_step(&mut s, &pool, &first);
    let second = s.schedule(&mut pool);
    assert_eq!(second.items.len(), 4);
    for it in &second.items {
        assert_eq!((it.start, it.len, it.logits), (5, 1, Logits::Last));
    }
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks() {
    let prompt = 2 * PREFILL_CHUNK + 3;
    let mut pool = BlockPool::with_blocks(prompt.div_ceil(KV_BLOCK_SIZE) + 1);
    let mut s = Scheduler::new();
    s.enqueue(seq(0, prompt, 4));
    let mut starts = Vec::new();
    loop {
        let plan = s.schedule(&mut pool);
        let it = item(&plan, 0).expect("scheduled every step");
        starts.push((it.start, it.len, it.logits));
        run_step(&mut s, &pool, &plan);
        if it.logits == Logits::Last {
            break;
        }
    }
    let chunk = PREFILL_CHUNK;
    assert_eq!(
        starts,
        vec![
            (0, chunk, Logits::None),
            (chunk, chunk, Logits::None),
            (2 * chunk, 3, Logits::Last)
        ]
    );
    assert_eq!(s.get(0).map(Sequence::generated), Some(1));
}

#[test]
fn decodes_keep_running_while_a_long_prompt_prefills() {
    let mut pool = BlockPool::with_blocks(blocks_for(4 + 16) + blocks_for(4 * PREFILL_CHUNK + 1));
    let mut s = Scheduler::new();
    s.enqueue(seq(0, 4, 16));
    let p = s.schedule(&mut pool);
    run_step(&mut s, &pool, &p);
    s.enqueue(seq(1, 4 * PREFILL_CHUNK, 1));
    for _ in 0..3 {
        let plan = s.schedule(&mut pool);
        let decode = item(&plan, 0).expect("the decode is never stalled");
        assert_eq!(decode.len, 1);
        let chunk = item(&plan, 1).expect("the prefill progresses");
        assert!(chunk.len <= PREFILL_CHUNK);
        assert!(plan.tokens() <= MAX_BATCH_TOKENS);
        run_step(&mut s, &pool, &plan);
    }
}

#[test]
fn a_step_never_exceeds_the_token_budget() {
    let n = MAX_BATCH_TOKENS / PREFILL_CHUNK + 2;
    let mut pool = BlockPool::with_blocks(n * blocks_for(PREFILL_CHUNK + 1));
    let mut s = Scheduler::new();
    for id in 0..n as SeqId {
        s.enqueue(seq(id, PREFILL_CHUNK, 1));
    }
    let plan = s.schedule(&mut pool);
    assert_eq!(plan.tokens(), MAX_BATCH_TOKENS);
    assert!(s.waiting() > 0, "the rest wait for a later step");
}

#[test]
fn admission_reserves_prompt_plus_max_tokens() {
    let mut pool = BlockPool::with_blocks(16);
    let mut s = Scheduler::new();
    s.enqueue(seq(0, KV_BLOCK_SIZE + 1, 2 * KV_BLOCK_SIZE));
    s.schedule(&mut pool);
    assert_eq!(pool.used_blocks(), 4, "ceil((17 + 32) / 16) blocks");
}

#[test]
fn admission_waits_when_the_cache_is_full_and_running_requests_finish() {
    let blocks = 4;
    let mut pool = BlockPool::with_blocks(blocks);
    let mut s = Scheduler::new();
    s.enqueue(seq(0, 8, 3 * KV_BLOCK_SIZE - 8));
    s.enqueue(seq(1, 8, KV_BLOCK_SIZE));
    let mut plan = s.schedule(&mut pool);
    assert!(item(&plan, 1).is_none(), "no room for the second");
    assert_eq!((s.running(), s.waiting()), (1, 1));
    for _ in 0..5 {
        run_step(&mut s, &pool, &plan);
        plan = s.schedule(&mut pool);
        assert!(
            item(&plan, 0).is_some(),
            "the running request is never failed"
        );
        assert!(item(&plan, 1).is_none(), "the waiting one keeps waiting");
    }
    assert!(s.remove(0));
    assert_eq!(pool.used_blocks(), 0);
    let plan = s.schedule(&mut pool);
    assert!(item(&plan, 1).is_some(), "admitted once blocks are free");
}

#[test]
fn admission_is_fifo_without_overtaking() {
    let mut pool = BlockPool::with_blocks(4);
    let mut s = Scheduler::new();
    s.enqueue(seq(0, 8, 2 * KV_BLOCK_SIZE));
    s.enqueue(seq(1, 8, 3 * KV_BLOCK_SIZE));
    s.enqueue(seq(2, 1, 1));
    let plan = s.schedule(&mut pool);
    assert!(item(&plan, 0).is_some());
    assert!(
        item(&plan, 2).is_none(),
        "the small request waits behind the large one"
    );
    assert_eq!(s.waiting(), 2);
}

#[test]
fn at_most_max_batch_seqs_run() {
    let mut pool = BlockPool::with_blocks(2 * MAX_BATCH_SEQS + 2);
    let mut s = Scheduler::new();
    for id in 0..(MAX_BATCH_SEQS + 2) as SeqId {
        s.enqueue(seq(id, 1, 1));
    }
    let plan = s.schedule(&mut pool);
    assert_eq!(plan.items.len(), MAX_BATCH_SEQS);
    assert_eq!(s.waiting(), 2);
}

#[test]
fn a_scored_prompt_wants_every_logit() {
    let mut pool = BlockPool::with_blocks(8);
    let mut s = Scheduler::new();
    s.enqueue(Sequence::new(0, vec![1; 5], 0, true));
    let plan = s.schedule(&mut pool);
    assert_eq!(
        item(&plan, 0).map(|i| (i.len, i.logits)),
        Some((5, Logits::All))
    );
    run_step(&mut s, &pool, &plan);
    assert!(
        s.schedule(&mut pool).is_empty(),
        "nothing to decode with max_tokens 0"
    );
}

#[test]
fn removing_frees_waiting_and_running_sequences() {
    let mut pool = BlockPool::with_blocks(4);
    let mut s = Scheduler::new();
    s.enqueue(seq(0, 4, 4));
    s.schedule(&mut pool);
    s.enqueue(seq(1, 4, 4));
    assert!(pool.used_blocks() > 0);
    assert!(s.remove(0) && s.remove(1));
    assert!(!s.remove(1));
    assert!(s.is_idle());
    assert_eq!(pool.used_blocks(), 0);
}

/// Runs steps until `id` has generated a token.
fn run_until_decoding(s: &mut Scheduler, pool: &mut BlockPool, id: SeqId) {
    while s.get(id).is_none_or(|q| q.generated() == 0) {
        let plan = s.schedule(pool);
        run_step(s, pool, &plan);
    }
}

#[test]
fn a_repeated_prompt_starts_after_its_cached_blocks() {
    let mut pool = BlockPool::with_blocks(32);
    let mut s = Scheduler::new();
    let prompt: Vec<u32> = (0..3 * KV_BLOCK_SIZE as u32 + 5).collect();
    s.enqueue(Sequence::new(0, prompt.clone(), 4, false));
    let first = s.schedule(&mut pool);
    let queried = cached(prompt.len());
    assert_eq!((first.prefix_queried, first.prefix_hits), (queried, 0));
    run_step(&mut s, &pool, &first);
    assert!(s.remove(0));
    assert_eq!(
        pool.cached_blocks(),
        cached(3),
        "the full prompt blocks stay cached"
    );
    s.enqueue(Sequence::new(1, prompt.clone(), 4, false));
    let again = s.schedule(&mut pool);
    let hit = cached(3 * KV_BLOCK_SIZE);
    assert_eq!((again.prefix_queried, again.prefix_hits), (queried, hit));
    assert_eq!(
        item(&again, 1).map(|i| (i.start, i.len, i.logits)),
        Some((hit, prompt.len() - hit, Logits::Last))
    );
}

#[test]
fn a_block_aligned_prompt_still_computes_its_last_block() {
    let mut pool = BlockPool::with_blocks(32);
    let mut s = Scheduler::new();
    let prompt: Vec<u32> = (0..2 * KV_BLOCK_SIZE as u32).collect();
    s.enqueue(Sequence::new(0, prompt.clone(), 2, false));
    run_until_decoding(&mut s, &mut pool, 0);
    s.enqueue(Sequence::new(1, prompt, 2, false));
    let plan = s.schedule(&mut pool);
    let it = item(&plan, 1).expect("admitted");
    let hit = cached(KV_BLOCK_SIZE);
    assert_eq!((it.start, it.len), (hit, 2 * KV_BLOCK_SIZE - hit));
    assert_eq!(plan.prefix_hits, hit);
}

#[test]
fn prompts_share_only_their_common_leading_blocks() {
    let mut pool = BlockPool::with_blocks(32);
    let mut s = Scheduler::new();
    let a: Vec<u32> = (0..3 * KV_BLOCK_SIZE as u32 + 1).collect();
    let mut b = a.clone();
    b[KV_BLOCK_SIZE + 3] = 9999;
    s.enqueue(Sequence::new(0, a, 2, false));
    run_until_decoding(&mut s, &mut pool, 0);
    s.enqueue(Sequence::new(1, b, 2, false));
    let plan = s.schedule(&mut pool);
    assert_eq!(item(&plan, 1).map(|i| i.start), Some(cached(KV_BLOCK_SIZE)));
    let (x, y) = (s.get(0).expect("running"), s.get(1).expect("running"));
    let shared = x.blocks.blocks()[0] == y.blocks.blocks()[0];
    assert_eq!(shared, PREFIX_CACHE, "block 0 is shared");
    assert_ne!(x.blocks.blocks()[1], y.blocks.blocks()[1]);
}

#[test]
fn a_scored_prompt_computes_every_position() {
    let mut pool = BlockPool::with_blocks(32);
    let mut s = Scheduler::new();
    let prompt: Vec<u32> = (0..2 * KV_BLOCK_SIZE as u32 + 1).collect();
    s.enqueue(Sequence::new(0, prompt.clone(), 2, false));
    run_until_decoding(&mut s, &mut pool, 0);
    s.enqueue(Sequence::new(1, prompt, 0, true));
    let plan = s.schedule(&mut pool);
    assert_eq!(item(&plan, 1).map(|i| i.start), Some(0));
    assert_eq!((plan.prefix_queried, plan.prefix_hits), (0, 0));
}
