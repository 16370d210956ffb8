//! Paged KV cache.
//!
//! Design (vLLM's paged attention, on the CPU): one [`BlockPool`] owns a single
//! allocation of [`KV_BLOCKS`] blocks; a block holds K and V of
//! [`KV_BLOCK_SIZE`] consecutive tokens of one sequence for every layer, laid
//! out `[layer][K|V][kv_head][token][head_dim]` so that attention reads one
//! head's keys for a whole block as one contiguous run. Each sequence owns a
//! [`BlockTable`], the list of its block ids in position order: token `p`
//! lives in block `table[p / KV_BLOCK_SIZE]` at slot `p % KV_BLOCK_SIZE`.
//! Elements are [`KvElem`] (a plan choice: f16 halves the bytes attention reads).
//!
//! Cost per operation: `reserve` is O(new blocks) (pops from a free list
//! under an uncontended mutex); `release`/drop is O(blocks held); reading or
//! writing one token's K/V is O(1) index arithmetic. The storage is allocated
//! zeroed, so the OS commits pages only as blocks are first written.

use crate::plan::{HEAD_DIM, KV_BLOCK_SIZE, KV_BLOCKS, KvElem, N_KV_HEADS, N_LAYERS};
use half::f16;
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

/// The shared free list (shared so a [`BlockTable`] can free itself on drop).
type FreeList = Arc<Mutex<Vec<u32>>>;

/// The cache storage and its free list.
pub struct BlockPool {
    data: Vec<KvElem>,
    free: FreeList,
    n_blocks: usize,
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
            // Popped from the end: block 0 is handed out first.
            free: Arc::new(Mutex::new((0..n).rev().collect())),
            n_blocks,
        }
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Blocks not held by any table.
    pub fn free_blocks(&self) -> usize {
        lock(&self.free).len()
    }

    /// Blocks held by tables.
    pub fn used_blocks(&self) -> usize {
        self.n_blocks - self.free_blocks()
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

/// One sequence's blocks, in position order. Returns them to the pool on drop.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
    free: Option<FreeList>,
}

impl BlockTable {
    /// An empty table (holds no blocks).
    pub fn new() -> Self {
        Self::default()
    }

    /// Grows the table so it can hold `new_len` tokens. All or nothing: on
    /// [`KvFull`] the table is unchanged. Never shrinks.
    pub fn reserve(&mut self, pool: &mut BlockPool, new_len: usize) -> Result<(), KvFull> {
        let want = new_len.div_ceil(KV_BLOCK_SIZE);
        if want <= self.blocks.len() {
            return Ok(());
        }
        let needed = want - self.blocks.len();
        let mut free = lock(&pool.free);
        if free.len() < needed {
            return Err(KvFull {
                needed,
                free: free.len(),
            });
        }
        let at = free.len() - needed;
        self.blocks.extend(free.drain(at..).rev());
        self.free.get_or_insert_with(|| Arc::clone(&pool.free));
        Ok(())
    }

    /// Returns every block to the pool; the table becomes empty.
    pub fn release(&mut self) {
        if let Some(free) = &self.free {
            lock(free).extend(self.blocks.drain(..));
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

/// Locks the free list, ignoring poisoning (a `Vec<u32>` is always consistent).
fn lock(m: &Mutex<Vec<u32>>) -> MutexGuard<'_, Vec<u32>> {
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
}
