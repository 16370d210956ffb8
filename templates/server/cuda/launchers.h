/* The CUDA part's kernels, as C launchers the Rust side calls (bindgen reads this file).
 * Every launcher enqueues on `stream` and returns the launch's cudaError_t as an int
 * (0 = success). Shapes are in elements; matrices are row-major; bf16 is passed as
 * `uint16_t` bit patterns so the header needs no CUDA include. `early`: programmatic
 * dependent launch (Hopper and later): the kernel starts while the previous kernel on the
 * stream finishes and waits for that kernel's output inside (a launch gap hidden). */
#ifndef VIBESERVE_LAUNCHERS_H
#define VIBESERVE_LAUNCHERS_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void *vs_stream;

/* Most parts vs_attention splits a context into (the merge kernel's largest instance). */
#define VS_ATTN_MAX_SPLITS 32
/* Most tokens vs_gemv takes (its largest instance). */
#define VS_GEMV_MAX_TOKENS 8

/* out[t, :] = float(table[tokens[t] - vocab_start, :]) for t < n_tokens (the f32 residual
 * stream); zeros where tokens[t] is outside vocab_start..vocab_start+vocab_rows (a
 * tensor-parallel rank's slice of the table). */
int vs_embed(vs_stream stream, const int32_t *tokens, int n_tokens, const uint16_t *table,
             float *out, int dim, int vocab_start, int vocab_rows, int threads, int early);

/* out[r, :] = bf16(x * rsqrt(mean(x^2) + eps) * weight) with x = resid[rows[r], :]
 * (rows NULL: x = resid[r, :]) for r < n_rows. */
int vs_rmsnorm(vs_stream stream, const float *resid, const int32_t *rows, int n_rows,
               const uint16_t *weight, uint16_t *out, int dim, float eps, int threads, int early);

/* Where RoPE sends a step's q/k/v rows: the rows are n_heads q heads, n_kv_heads k heads,
 * n_kv_heads v heads of head_dim (each q and k head's rows interleaved: pair i is
 * elements 2i and 2i + 1, Llama's rotate-half pairing of i and i + head_dim/2); token t
 * is at position positions[t] (a row of the [positions][head_dim/2] (cos, sin) table) and
 * cache slot slots[t] (block slots[t] / block_size, offset slots[t] % block_size; cache
 * layout [block][kv_head][offset][head_dim]). */
typedef struct {
  const int32_t *positions;
  const int32_t *slots;
  const float *cos_sin;
  uint16_t *k_cache;
  uint16_t *v_cache;
  int n_heads;
  int n_kv_heads;
  int head_dim;
  int block_size;
} vs_rope_kv_out;

/* Rotates the q and k heads of each of n_tokens qkv rows in place and writes k and v
 * into the paged cache, as `out` says: a thread per pair, blocks of `threads`. */
int vs_rope_kv(vs_stream stream, uint16_t *qkv, int n_tokens, const vs_rope_kv_out *out,
               int threads, int early);

/* Attention of every query token over positions 0..q_ctx[t]-1 of its sequence's paged
 * cache (block table row q_seq[t] of `block_tables`, whose rows are *table_stride wide:
 * read on the device, so a captured graph serves any table length), into out
 * [t, n_heads*head_dim] (bf16). q is read from the qkv rows. The context is cut into
 * `splits` (at most VS_ATTN_MAX_SPLITS) parts of at least `min_split_keys` positions (flash-decoding;
 * parts past the context stay empty, and a context of one part is written directly);
 * splits > 1 also runs a merge kernel, and `partial` must hold
 * n_tokens*n_heads*splits*(head_dim+2) floats (unused when splits == 1). Blocks
 * of `warps` warps; each lane has `keys_in_flight` (2, 4 or 8) K and V rows loading at
 * once. head_dim must be 64 or 128 and n_heads / n_kv_heads 1, 2, 4 or 8. `early`: both
 * kernels launch early; attention reads the step's inputs and warms L2 with its first
 * K/V rows before it waits. */
int vs_attention(vs_stream stream, const uint16_t *qkv, int n_tokens, const uint16_t *k_cache,
                 const uint16_t *v_cache, const int32_t *block_tables,
                 const int32_t *table_stride, const int32_t *q_seq, const int32_t *q_ctx, float *partial, uint16_t *out,
                 int n_heads, int n_kv_heads, int head_dim, int block_size, int splits,
                 int min_split_keys, int warps, int keys_in_flight, int early);

/* How vs_gemv launches: the plan's GEMV fields and the device's multiprocessors. Products
 * of fewer than mma_min_tokens tokens run on the CUDA cores in blocks of
 * `warps` warps, one warp computing rows_per_warp (1, 2 or 4) rows; the others on the
 * tensor cores in blocks of mma_warps warps, a warp computing a 16-row tile (at most 32
 * warps a block). A product with fewer than `warps_per_sm` warps a multiprocessor splits
 * each row group's k range over up to `k_split_max` (tensor cores: mma_k_split_max)
 * warps of a block (partial sums added in a fixed order). `early`: launched early, the
 * kernel streams its first weights before it waits. */
typedef struct {
  int rows_per_warp;
  int warps;
  int k_split_max;
  int warps_per_sm;
  int sm_count;
  int mma_min_tokens;
  int mma_warps;
  int mma_k_split_max;
  int early;
} vs_gemv_launch;

/* Whether vs_gemv takes a product of n_tokens tokens over k inputs at this
 * mma_min_tokens: 1..VS_GEMV_MAX_TOKENS tokens, and k a multiple of 8 on the CUDA cores,
 * of 32 on the tensor cores. */
int vs_gemv_takes(int n_tokens, int k, int mma_min_tokens);

/* y[t, r] (+)= sum_j w[r, j] * x[t, j] for t < n_tokens <= 8, r < rows (w row-major [rows][k],
 * x [n_tokens][k], both bf16 and 16-byte aligned; the shape one vs_gemv_takes); y is f32 when
 * y_f32, else bf16, [n_tokens][rows]; accumulate adds to what y holds. Fusions:
 * - norm non-NULL: x is the f32 residual [.][k] and the product is of RMSNorm(x)
 *   (x * rsqrt(mean(x^2) + eps) * norm, norm bf16 [k]) without the bf16 rounding of the
 *   normalised vector; token t reads residual row x_rows[t] (x_rows NULL: row t). norm
 *   NULL: x is bf16 (x_rows, eps unused).
 * - swiglu: w holds 2 * rows rows (gate then up) and y[t, r] = bf16(silu(gate[t, r]) *
 *   up[t, r]) (y_f32 and accumulate must be 0).
 * - rope non-NULL: the epilogue does vs_rope_kv's work: q rows rotated into y (bf16
 *   [n_tokens][rows]; its k and v columns are left unwritten), k rows rotated and v rows
 *   as they are into the caches (swiglu, y_f32 and accumulate 0, rows_per_warp 2 or 4). */
int vs_gemv(vs_stream stream, const uint16_t *w, const void *x, const int32_t *x_rows,
            const uint16_t *norm, float eps, void *y, int rows, int n_tokens, int k, int y_f32,
            int accumulate, int swiglu, const vs_rope_kv_out *rope, const vs_gemv_launch *launch);

/* out[t, i] = silu(gate_up[t, i]) * gate_up[t, ff + i] for i < ff. */
int vs_swiglu(vs_stream stream, const uint16_t *gate_up, uint16_t *out, int n_tokens, int ff,
              int threads, int early);

/* Token selection per logits row: argmax when temps[r] <= 0, else a draw from
 * softmax(logits / temps[r]) by the Gumbel-max trick seeded with seeds[r]. The row holds
 * tokens vocab_start..vocab_start+vocab (a rank's slice); out[r] is a global token id and
 * out_score[r] (unless NULL) its score, so ranks' winners compare (distributed argmax).
 * Two passes: `parts` blocks of `threads` threads a row each find the best of a slice
 * into part_score / part_id (n_rows * parts each), then one warp a row picks among them;
 * ties go to the lower token id, so the winner does not depend on `parts`. */
int vs_sample(vs_stream stream, const float *logits, int n_rows, int vocab, int vocab_start,
              const float *temps, const uint64_t *seeds, float *part_score, int32_t *part_id,
              int parts, int32_t *out, float *out_score, int threads, int early);

#ifdef __cplusplus
}
#endif
#endif
