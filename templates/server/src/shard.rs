//! Tensor parallelism: which slice of each weight and head one rank holds.
//!
//! Megatron-style: q/k/v and gate/up are column-parallel (each rank computes
//! its own heads and its own FFN columns), o and down are row-parallel (each
//! rank multiplies its slice of the inner dimension and an all-reduce sums the
//! partial outputs), and the LM head is vocab-parallel (each rank scores its
//! slice of the vocabulary and the logits are all-gathered).
//!
//! Pure arithmetic, no I/O: the CPU engine, the CUDA back end and
//! `cargo vibeserve` (which validates `tensor_parallel` against a model's
//! config with this same file) all share it.

use std::ops::Range;

/// A tensor-parallel split the model cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// A split needs at least one rank.
    #[error("tensor parallelism needs at least 1 rank, got 0")]
    NoRanks,
    /// Query heads must split evenly across ranks.
    #[error("{n_heads} attention heads do not split evenly across {world} ranks")]
    Heads {
        /// Query heads of the model.
        n_heads: usize,
        /// Ranks asked for.
        world: usize,
    },
    /// Query heads must form whole groups over the KV heads.
    #[error("{n_heads} attention heads are not a multiple of {n_kv_heads} KV heads")]
    Groups {
        /// Query heads of the model.
        n_heads: usize,
        /// Key/value heads of the model.
        n_kv_heads: usize,
    },
    /// KV heads must split evenly, or be fewer than the ranks and divide them
    /// (each KV head is then replicated on `world / n_kv_heads` ranks).
    #[error(
        "{n_kv_heads} KV heads neither split evenly across {world} ranks nor divide them (to be replicated)"
    )]
    KvHeads {
        /// Key/value heads of the model.
        n_kv_heads: usize,
        /// Ranks asked for.
        world: usize,
    },
    /// The FFN inner width must split evenly across ranks.
    #[error("FFN width {d_ff} does not split evenly across {world} ranks")]
    Ffn {
        /// Feed-forward inner size.
        d_ff: usize,
        /// Ranks asked for.
        world: usize,
    },
    /// Every rank needs at least one vocabulary row of the ceiling split.
    #[error("a vocabulary of {vocab} tokens leaves the last of {world} ranks no rows")]
    Vocab {
        /// Vocabulary size.
        vocab: usize,
        /// Ranks asked for.
        world: usize,
    },
}

/// Checks that a model with these dimensions splits across `world` ranks.
pub fn check_split(
    world: usize,
    n_heads: usize,
    n_kv_heads: usize,
    d_ff: usize,
    vocab: usize,
) -> Result<(), ShardError> {
    if world == 0 {
        return Err(ShardError::NoRanks);
    }
    if !n_heads.is_multiple_of(world) {
        return Err(ShardError::Heads { n_heads, world });
    }
    if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(ShardError::Groups {
            n_heads,
            n_kv_heads,
        });
    }
    let kv_split = n_kv_heads.is_multiple_of(world);
    let kv_replicated = n_kv_heads < world && world.is_multiple_of(n_kv_heads);
    if !kv_split && !kv_replicated {
        return Err(ShardError::KvHeads { n_kv_heads, world });
    }
    if !d_ff.is_multiple_of(world) {
        return Err(ShardError::Ffn { d_ff, world });
    }
    if (world - 1) * vocab.div_ceil(world) >= vocab {
        return Err(ShardError::Vocab { vocab, world });
    }
    Ok(())
}

/// One rank of a tensor-parallel group: which slices it holds.
///
/// The ranges assume a split [`check_split`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank, `0..world`.
    pub rank: usize,
    /// Ranks in the group.
    pub world: usize,
}

impl Shard {
    /// Rank `rank` of `world` (`rank < world`).
    pub fn new(rank: usize, world: usize) -> Self {
        debug_assert!(rank < world, "rank {rank} out of {world}");
        Self { rank, world }
    }

    /// This rank's query heads (a contiguous block of `n_heads / world`).
    pub fn q_heads(&self, n_heads: usize) -> Range<usize> {
        self.even(n_heads)
    }

    /// This rank's KV heads: its block of `n_kv_heads / world`, or, when there
    /// are fewer KV heads than ranks, the one head its query heads attend with.
    pub fn kv_heads(&self, n_kv_heads: usize) -> Range<usize> {
        if n_kv_heads >= self.world {
            return self.even(n_kv_heads);
        }
        // Replicated: ranks `h·r .. (h+1)·r` share KV head `h`, r = world / n_kv_heads.
        let head = self.rank / (self.world / n_kv_heads);
        head..head + 1
    }

    /// This rank's columns of gate/up (and rows of down's inner dimension).
    pub fn ffn(&self, d_ff: usize) -> Range<usize> {
        self.even(d_ff)
    }

    /// This rank's vocabulary rows: a ceiling split, so the last rank may hold fewer.
    pub fn vocab(&self, vocab: usize) -> Range<usize> {
        let per = vocab.div_ceil(self.world);
        let start = (self.rank * per).min(vocab);
        start..(start + per).min(vocab)
    }

    /// This rank's block of `n` items that split evenly.
    fn even(&self, n: usize) -> Range<usize> {
        let per = n / self.world;
        self.rank * per..(self.rank + 1) * per
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (world, n_heads, n_kv_heads, d_ff, vocab, accepted): the table both this
    /// module and `cargo vibeserve`'s plan validation are checked against.
    const CASES: &[(usize, usize, usize, usize, usize, bool)] = &[
        (1, 9, 3, 1536, 49_152, true),     // SmolLM2-135M, one rank
        (3, 9, 3, 1536, 49_152, true),     // SmolLM2-135M, a KV head per rank
        (2, 9, 3, 1536, 49_152, false),    // SmolLM2-135M: 9 heads over 2
        (2, 32, 8, 14_336, 128_256, true), // Llama-3.1-8B
        (8, 32, 8, 14_336, 128_256, true),
        (3, 32, 8, 14_336, 128_256, false), // Llama-3.1-8B: 32 heads over 3
        (16, 32, 8, 14_336, 128_256, true), // 8 KV heads replicated on 2 ranks each
        (8, 64, 8, 28_672, 128_256, true),  // Llama-3-70B shape
        (4, 24, 6, 8192, 128_256, false),   // 6 KV heads: neither split nor replicated
        (2, 32, 8, 1001, 128_256, false),   // odd FFN
        (4, 8, 4, 64, 3, false),            // vocabulary smaller than the group
        (4, 8, 4, 64, 5, false),            // ceiling split 2, 2, 1, 0: last rank empty
        (0, 9, 3, 1536, 49_152, false),
        (2, 8, 3, 64, 64, false), // 8 heads are not groups of 3 KV heads
    ];

    #[test]
    fn check_split_accepts_exactly_the_table() {
        for &(world, h, kv, ff, v, ok) in CASES {
            let got = check_split(world, h, kv, ff, v);
            assert_eq!(got.is_ok(), ok, "{world} ranks, {h}/{kv} heads: {got:?}");
        }
    }

    #[test]
    fn check_split_names_the_first_failing_dimension() {
        assert_eq!(
            check_split(2, 9, 3, 1536, 49_152),
            Err(ShardError::Heads {
                n_heads: 9,
                world: 2
            })
        );
        assert_eq!(
            check_split(4, 24, 6, 8192, 100),
            Err(ShardError::KvHeads {
                n_kv_heads: 6,
                world: 4
            })
        );
        assert_eq!(
            check_split(2, 32, 8, 1001, 100),
            Err(ShardError::Ffn {
                d_ff: 1001,
                world: 2
            })
        );
    }

    #[test]
    fn every_accepted_split_covers_each_dimension_exactly_once() {
        for &(world, h, kv, ff, v, ok) in CASES {
            if !ok {
                continue;
            }
            let shards: Vec<_> = (0..world).map(|r| Shard::new(r, world)).collect();
            let mut dims = vec![
                (h, Shard::q_heads as fn(&Shard, usize) -> Range<usize>),
                (ff, Shard::ffn),
                (v, Shard::vocab),
            ];
            // Replicated KV heads (fewer than ranks) are covered by the next test instead.
            if kv >= world {
                dims.push((kv, Shard::kv_heads));
            }
            for (n, f) in dims {
                let mut next = 0;
                for s in &shards {
                    let r = f(s, n);
                    assert_eq!(r.start, next, "ranks must tile 0..{n} in order");
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn each_rank_holds_the_kv_heads_its_query_heads_use() {
        for &(world, h, kv, ff, v, ok) in CASES {
            if !ok {
                continue;
            }
            let group = h / kv;
            for r in 0..world {
                let s = Shard::new(r, world);
                let kvs = s.kv_heads(kv);
                for q in s.q_heads(h) {
                    assert!(
                        kvs.contains(&(q / group)),
                        "rank {r}: q head {q} ({ff}, {v})"
                    );
                }
                assert_eq!(kvs.len(), (kv / world).max(1));
            }
        }
    }

    #[test]
    fn vocab_split_is_ceiling_with_a_short_last_rank() {
        let parts: Vec<_> = (0..3).map(|r| Shard::new(r, 3).vocab(10)).collect();
        assert_eq!(parts, vec![0..4, 4..8, 8..10]);
        assert_eq!(Shard::new(2, 3).vocab(49_152), 32_768..49_152);
    }

    #[test]
    fn replicated_kv_heads_go_to_consecutive_ranks() {
        let heads: Vec<_> = (0..4).map(|r| Shard::new(r, 4).kv_heads(2)).collect();
        assert_eq!(heads, vec![0..1, 0..1, 1..2, 1..2]);
    }
}
