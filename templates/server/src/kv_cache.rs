//! Paged KV cache with prefix sharing.
//!
//! Design (vLLM's paged attention and automatic prefix caching, on the CPU): one
//! [`BlockPool`] owns a single allocation of [`KV_BLOCKS`] blocks; a block holds K and
//! V of [`KV_BLOCK_SIZE`] consecutive tokens of one sequence for every layer, laid
//! out `[layer][K|V][kv_head][token][head_dim]` so that attention reads one
//! head's keys for a whole block as one contiguous run. Each sequence owns a
//! [`BlockTable`], the list of its block ids in position order: token `p`
//! lives in block `table[p / KV_BLOCK_SIZE]` at slot `p % KV_BLOCK_SIZE`.
//! Elements are [`KvElem`] (a plan choice: f16 halves the bytes attention reads).
//!
//! Prefix sharing: a block whose every slot is written is *published* under a
//! [`BlockHash`] of its tokens and of every token before them (a chain, as vLLM
//! hashes blocks), so its K/V are a function of that hash alone. A later table whose
//! leading blocks have the same hashes takes the published blocks instead of
//! recomputing them ([`BlockTable::share_prefix`]); blocks are reference-counted,
//! and only full blocks are shared, so a shared block is never written again (no
//! copy-on-write). A published block that no table holds stays cached, *idle*,
//! until a reservation finds no never-published block free and evicts the idle
//! block released longest ago (a table releases its last block first, so a shared
//! prefix outlives the tails that follow it).
//!
//! Cost per operation: `reserve` is O(new blocks · log idle) (pops from a free list
//! under an uncontended mutex); `share_prefix` is one hash-map probe per block;
//! `release`/drop is O(blocks held · log idle); reading or writing one token's K/V
//! is O(1) index arithmetic. The storage is allocated zeroed, so the OS commits
//! pages only as blocks are first written.

use crate::plan::{HEAD_DIM, KV_BLOCK_SIZE, KV_BLOCKS, KvElem, N_KV_HEADS, N_LAYERS};
use half::f16;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

/// Elements of one head's K (or V) for one block: `KV_BLOCK_SIZE × HEAD_DIM`.
pub const HEAD_RUN: usize = KV_BLOCK_SIZE * HEAD_DIM;
/// Elements of one layer's K (or V) in one block.
const KV_RUN: usize = N_KV_HEADS * HEAD_RUN;
/// Elements of one block (all layers, K and V).
pub const BLOCK_ELEMS: usize = N_LAYERS * 2 * KV_RUN;
/// Selects the keys in [`BlockPool::head`].
pub const K: usize = 0;
/// Selects the values in [`BlockPool::head`].
pub const V: usize = 1;

/// An element type the cache can hold.
pub trait KvElement: bytemuck::Pod + Send + Sync {
    /// Converts one f32 for storage.
    fn from_f32(x: f32) -> Self;
    /// Converts a run for storage (`dst.len() == src.len()`).
    fn from_f32s(src: &[f32], dst: &mut [Self]);
    /// Converts a run back to f32 (`dst.len() == src.len()`).
    fn to_f32s(src: &[Self], dst: &mut [f32]);
}

impl KvElement for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f32s(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn to_f32s(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElement for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn from_f32s(src: &[f32], dst: &mut [Self]) {
        half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
    }
    fn to_f32s(src: &[Self], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: F16C (and the AVX it implies) is present, checked above.
            unsafe { f16c_to_f32s(src, dst) };
            return;
        }
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
}

/// f16 → f32, eight at a time with F16C (`half` converts through a call per
/// eight values; attention converts every cached key and value it reads).
///
/// # Safety
/// The CPU must support AVX and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16c_to_f32s(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
    let n8 = src.len().min(dst.len()) / 8 * 8;
    let (src8, src_tail) = src.split_at(n8);
    let (dst8, dst_tail) = dst.split_at_mut(n8);
    for (s, d) in src8.chunks_exact(8).zip(dst8.chunks_exact_mut(8)) {
        // SAFETY: `s` holds 8 f16 (16 bytes) and `d` 8 f32 (32 bytes).
        unsafe {
            _mm256_storeu_ps(
                d.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast())),
            )
        };
    }
    for (s, d) in src_tail.iter().zip(dst_tail) {
        *d = s.to_f32();
    }
}

/// No free block was left for a reservation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: needed {needed} more blocks, {free} free")]
pub struct KvFull {
    /// Blocks the reservation still needed.
    pub needed: usize,
    /// Blocks that were free.
    pub free: usize,
}

/// Identifies a full block's contents: its tokens and every token before them.
/// 128 bits from two independently keyed SipHashes (keys drawn per process), so
/// an accidental or crafted collision is out of reach.
pub type BlockHash = u128;

/// Which blocks are free, held, published and idle; shared so that a
/// [`BlockTable`] can give its blocks back on drop.
#[derive(Debug)]
struct Allocator {
    /// Blocks no table holds and no hash names; popped from the end.
    free: Vec<u32>,
    /// Tables holding each block.
    refs: Vec<u32>,
    /// The hash each published block is known by.
    hash_of: Vec<Option<BlockHash>>,
    /// Published blocks by hash.
    by_hash: HashMap<BlockHash, u32>,
    /// Published blocks no table holds, by release order (oldest first).
    idle: BTreeMap<u64, u32>,
    /// Each idle block's key in `idle`.
    idle_key: Vec<u64>,
    /// Next release stamp.
    clock: u64,
}

type Shared = Arc<Mutex<Allocator>>;

impl Allocator {
    fn new(n: u32) -> Self {
        let len = n as usize;
        Self {
            // Popped from the end: block 0 is handed out first.
            free: (0..n).rev().collect(),
            refs: vec![0; len],
            hash_of: vec![None; len],
            by_hash: HashMap::new(),
            idle: BTreeMap::new(),
            idle_key: vec![0; len],
            clock: 0,
        }
    }

    /// Blocks a reservation may take: free ones and idle cached ones.
    fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// A block for a new holder: a free one, else the idle block released longest
    /// ago, which forgets its hash.
    fn take(&mut self) -> Option<u32> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.by_hash.remove(&h);
                }
                b
            }
        };
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// One more holder of the block published under `hash`, if there is one.
    fn lookup(&mut self, hash: BlockHash) -> Option<u32> {
        let block = *self.by_hash.get(&hash)?;
        let i = block as usize;
        if self.refs[i] == 0 {
            self.idle.remove(&self.idle_key[i]);
        }
        self.refs[i] += 1;
        Some(block)
    }

    /// One holder fewer; an unheld block becomes idle (published) or free.
    fn release(&mut self, block: u32) {
        let i = block as usize;
        self.refs[i] -= 1;
        if self.refs[i] > 0 {
            return;
        }
        if self.hash_of[i].is_some() {
            self.idle_key[i] = self.clock;
            self.idle.insert(self.clock, block);
            self.clock += 1;
        } else {
            self.free.push(block);
        }
    }

    /// Names a full block by `hash`, unless it or the hash is already named.
    fn publish(&mut self, block: u32, hash: BlockHash) {
        let i = block as usize;
        if self.hash_of[i].is_none() && !self.by_hash.contains_key(&hash) {
            self.hash_of[i] = Some(hash);
            self.by_hash.insert(hash, block);
        }
    }
}

/// The cache storage and its allocator.
pub struct BlockPool {
    data: Vec<KvElem>,
    alloc: Shared,
    n_blocks: usize,
    /// Two independently keyed hashers: one per half of a [`BlockHash`].
    hashers: [RandomState; 2],
}

impl BlockPool {
    /// A pool of [`KV_BLOCKS`] blocks.
    pub fn new() -> Self {
        Self::with_blocks(KV_BLOCKS)
    }

    /// A pool of `n_blocks` blocks (tests use small pools).
    pub fn with_blocks(n_blocks: usize) -> Self {
        let n = u32::try_from(n_blocks).expect("block count fits u32 (plan constant)");
        Self {
            data: bytemuck::zeroed_vec(n_blocks * BLOCK_ELEMS),
            alloc: Arc::new(Mutex::new(Allocator::new(n))),
            n_blocks,
            hashers: [RandomState::new(), RandomState::new()],
        }
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Blocks a reservation may take: those no table holds (idle cached ones included).
    pub fn free_blocks(&self) -> usize {
        lock(&self.alloc).available()
    }

    /// Blocks held by tables.
    pub fn used_blocks(&self) -> usize {
        self.n_blocks - self.free_blocks()
    }

    /// Published blocks no table holds: cached prefixes kept until evicted.
    pub fn cached_blocks(&self) -> usize {
        lock(&self.alloc).idle.len()
    }

    /// The hash of a full block of `tokens` that follows the block hashed `parent`
    /// (`None` for a sequence's first block).
    pub fn hash_block(&self, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let [lo, hi] = self
            .hashers
            .each_ref()
            .map(|h| h.hash_one((parent, tokens)));
        (u128::from(hi) << 64) | u128::from(lo)
    }

    /// One head's keys (`which == K`) or values (`V`) of one block and layer:
    /// `KV_BLOCK_SIZE` rows of `HEAD_DIM`.
    pub fn head(&self, block: u32, layer: usize, which: usize, head: usize) -> &[KvElem] {
        let start = Self::offset(block, layer, which, head);
        &self.data[start..start + HEAD_RUN]
    }

    /// Stores one token's K and V (`N_KV_HEADS * HEAD_DIM` each) for `layer`
    /// at position `pos` of the sequence owning `table`.
    pub fn write(&mut self, table: &BlockTable, pos: usize, layer: usize, k: &[f32], v: &[f32]) {
        let block = table.blocks[pos / KV_BLOCK_SIZE];
        let slot = pos % KV_BLOCK_SIZE;
        for (which, src) in [(K, k), (V, v)] {
            for (h, row) in src.chunks_exact(HEAD_DIM).enumerate() {
                let at = Self::offset(block, layer, which, h) + slot * HEAD_DIM;
                KvElem::from_f32s(row, &mut self.data[at..at + HEAD_DIM]);
            }
        }
    }

    /// Start of (block, layer, K|V, head) in `data`.
    fn offset(block: u32, layer: usize, which: usize, head: usize) -> usize {
        block as usize * BLOCK_ELEMS + (layer * 2 + which) * KV_RUN + head * HEAD_RUN
    }
}

impl Default for BlockPool {
    fn default() -> Self {
        Self::new()
    }
}

/// One sequence's blocks, in position order. Gives them back to the pool on drop.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
    alloc: Option<Shared>,
}

impl BlockTable {
    /// An empty table (holds no blocks).
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the published blocks whose hashes are `hashes`, in order, up to the
    /// first that is not cached; returns how many. The table must be empty.
    pub fn share_prefix(&mut self, pool: &BlockPool, hashes: &[BlockHash]) -> usize {
        debug_assert!(
            self.blocks.is_empty(),
            "a prefix is shared into an empty table"
        );
        let mut alloc = lock(&pool.alloc);
        for &h in hashes {
            let Some(block) = alloc.lookup(h) else { break };
            self.blocks.push(block);
        }
        drop(alloc);
        if !self.blocks.is_empty() {
            self.alloc.get_or_insert_with(|| Arc::clone(&pool.alloc));
        }
        self.blocks.len()
    }

    /// Grows the table so it can hold `new_len` tokens. All or nothing: on
    /// [`KvFull`] the table is unchanged. Never shrinks.
    pub fn reserve(&mut self, pool: &mut BlockPool, new_len: usize) -> Result<(), KvFull> {
        let want = new_len.div_ceil(KV_BLOCK_SIZE);
        if want <= self.blocks.len() {
            return Ok(());
        }
        let needed = want - self.blocks.len();
        let mut alloc = lock(&pool.alloc);
        let free = alloc.available();
        if free < needed {
            return Err(KvFull { needed, free });
        }
        // `needed` blocks are available (checked above), so this takes them all.
        let taken = std::iter::from_fn(|| alloc.take()).take(needed);
        self.blocks.extend(taken);
        drop(alloc);
        self.alloc.get_or_insert_with(|| Arc::clone(&pool.alloc));
        Ok(())
    }

    /// Publishes block `index` (every slot written) under `hash`, so later tables
    /// with the same prefix may share it.
    pub fn publish(&self, pool: &BlockPool, index: usize, hash: BlockHash) {
        if let Some(&block) = self.blocks.get(index) {
            lock(&pool.alloc).publish(block, hash);
        }
    }

    /// Gives every block back (the last first, so a shared prefix is evicted
    /// after its tails); the table becomes empty.
    pub fn release(&mut self) {
        if let Some(alloc) = &self.alloc {
            let mut alloc = lock(alloc);
            for block in self.blocks.drain(..).rev() {
                alloc.release(block);
            }
        }
    }

    /// Tokens the table can hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * KV_BLOCK_SIZE
    }

    /// The block ids, in position order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.release();
    }
}

/// Locks the allocator, ignoring poisoning (its updates do not panic midway).
fn lock(m: &Mutex<Allocator>) -> MutexGuard<'_, Allocator> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_rounds_up_to_whole_blocks() {
        let mut pool = BlockPool::with_blocks(4);
        let mut t = BlockTable::new();
        t.reserve(&mut pool, 1).unwrap();
        assert_eq!(t.capacity(), KV_BLOCK_SIZE);
        t.reserve(&mut pool, KV_BLOCK_SIZE + 1).unwrap();
        assert_eq!(t.blocks(), &[0, 1]);
        assert_eq!(pool.free_blocks(), 2);
    }

    #[test]
    fn reserve_within_capacity_takes_nothing() {
        let mut pool = BlockPool::with_blocks(2);
        let mut t = BlockTable::new();
        t.reserve(&mut pool, KV_BLOCK_SIZE).unwrap();
        t.reserve(&mut pool, 3).unwrap();
        assert_eq!(pool.free_blocks(), 1);
    }

    #[test]
    fn full_pool_fails_without_partial_allocation() {
        let mut pool = BlockPool::with_blocks(2);
        let mut t = BlockTable::new();
        t.reserve(&mut pool, KV_BLOCK_SIZE).unwrap();
        let err = t.reserve(&mut pool, 3 * KV_BLOCK_SIZE).unwrap_err();
        assert_eq!(err, KvFull { needed: 2, free: 1 });
        assert_eq!(t.blocks().len(), 1);
        assert_eq!(pool.free_blocks(), 1);
    }

    #[test]
    fn release_and_drop_return_blocks() {
        let mut pool = BlockPool::with_blocks(3);
        let mut a = BlockTable::new();
        a.reserve(&mut pool, 2 * KV_BLOCK_SIZE).unwrap();
        a.release();
        assert_eq!((a.capacity(), pool.free_blocks()), (0, 3));
        {
            let mut b = BlockTable::new();
            b.reserve(&mut pool, 3 * KV_BLOCK_SIZE).unwrap();
            assert_eq!(pool.used_blocks(), 3);
        }
        assert_eq!(pool.free_blocks(), 3);
    }

    #[test]
    fn writes_land_in_the_tokens_block_and_slot() {
        let mut pool = BlockPool::with_blocks(2);
        let mut t = BlockTable::new();
        t.reserve(&mut pool, KV_BLOCK_SIZE + 2).unwrap();
        let k: Vec<f32> = (0..N_KV_HEADS * HEAD_DIM).map(|i| i as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        let pos = KV_BLOCK_SIZE + 1;
        pool.write(&t, pos, 3, &k, &v);
        let block = t.blocks()[1];
        let head1 = pool.head(block, 3, K, 1);
        let row: Vec<f32> = head1[HEAD_DIM..2 * HEAD_DIM]
            .iter()
            .map(|&x| x.into())
            .collect();
        assert_eq!(row, k[HEAD_DIM..2 * HEAD_DIM]);
        let vrow: f32 = pool.head(block, 3, V, 0)[HEAD_DIM + 5].into();
        assert_eq!(vrow, -5.0);
        assert!(
            pool.head(block, 2, K, 1)
                .iter()
                .all(|&x| f32::from(x) == 0.0)
        );
    }

    /// A table holding `blocks` full blocks of `tokens`, each published.
    fn published(pool: &mut BlockPool, tokens: &[u32]) -> (BlockTable, Vec<BlockHash>) {
        let mut t = BlockTable::new();
        t.reserve(pool, tokens.len()).unwrap();
        let mut hashes: Vec<BlockHash> = Vec::new();
        for (i, chunk) in tokens.chunks_exact(KV_BLOCK_SIZE).enumerate() {
            let h = pool.hash_block(hashes.last().copied(), chunk);
            t.publish(pool, i, h);
            hashes.push(h);
        }
        (t, hashes)
    }

    #[test]
    fn a_published_prefix_is_shared_while_held_and_cached_when_released() {
        let mut pool = BlockPool::with_blocks(6);
        let tokens: Vec<u32> = (0..3 * KV_BLOCK_SIZE as u32).collect();
        let (a, hashes) = published(&mut pool, &tokens);
        let mut b = BlockTable::new();
        assert_eq!(b.share_prefix(&pool, &hashes[..2]), 2);
        assert_eq!(b.blocks(), &a.blocks()[..2]);
        assert_eq!(pool.used_blocks(), 3, "shared blocks are counted once");
        drop(a);
        assert_eq!((pool.used_blocks(), pool.cached_blocks()), (2, 1));
        drop(b);
        assert_eq!((pool.free_blocks(), pool.cached_blocks()), (6, 3));
        let mut c = BlockTable::new();
        assert_eq!(
            c.share_prefix(&pool, &hashes),
            3,
            "idle blocks are still cached"
        );
        assert_eq!(pool.cached_blocks(), 0);
    }

    #[test]
    fn a_different_token_or_earlier_block_changes_the_hash() {
        let pool = BlockPool::with_blocks(1);
        let x = [5u32; KV_BLOCK_SIZE];
        let mut y = x;
        y[KV_BLOCK_SIZE - 1] = 6;
        let root = pool.hash_block(None, &x);
        assert_ne!(root, pool.hash_block(None, &y));
        assert_ne!(pool.hash_block(Some(root), &x), root);
        assert_eq!(
            pool.hash_block(Some(root), &x),
            pool.hash_block(Some(root), &x)
        );
        let mut t = BlockTable::new();
        assert_eq!(t.share_prefix(&pool, &[root]), 0, "nothing published yet");
    }

    #[test]
    fn reservations_use_free_blocks_first_then_evict_the_oldest_idle_tail() {
        let mut pool = BlockPool::with_blocks(4);
        let tokens: Vec<u32> = (0..2 * KV_BLOCK_SIZE as u32).collect();
        let (a, hashes) = published(&mut pool, &tokens);
        drop(a);
        let mut b = BlockTable::new();
        b.reserve(&mut pool, 2 * KV_BLOCK_SIZE).unwrap();
        assert_eq!(pool.cached_blocks(), 2, "free blocks went first");
        b.reserve(&mut pool, 3 * KV_BLOCK_SIZE).unwrap();
        assert_eq!(pool.cached_blocks(), 1);
        let mut c = BlockTable::new();
        assert_eq!(
            c.share_prefix(&pool, &hashes),
            1,
            "the tail was evicted, the head kept"
        );
        let err = b.reserve(&mut pool, 5 * KV_BLOCK_SIZE).unwrap_err();
        assert_eq!(err, KvFull { needed: 2, free: 0 });
    }

    #[test]
    fn a_hash_names_one_block_and_a_block_one_hash() {
        let mut pool = BlockPool::with_blocks(4);
        let tokens = [9u32; KV_BLOCK_SIZE];
        let (a, hashes) = published(&mut pool, &tokens);
        let (b, _) = published(&mut pool, &tokens);
        drop(b);
        assert_eq!(pool.cached_blocks(), 0, "the duplicate was not published");
        let other = pool.hash_block(None, &[1; KV_BLOCK_SIZE]);
        a.publish(&pool, 0, other);
        let mut c = BlockTable::new();
        assert_eq!(c.share_prefix(&pool, &[other]), 0);
        assert_eq!(c.share_prefix(&pool, &hashes), 1);
    }
}
