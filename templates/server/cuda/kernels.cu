// The CUDA part's kernels: everything of a Llama forward pass except the matrix
// products (cuBLAS). Launch shapes come from the Rust side (src/plan.rs).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdint.h>

#include "early_launch.h"
#include "launchers.h"

typedef __nv_bfloat16 bf16;

// Finite stand-in for -infinity: exp(NEG_BIG - NEG_BIG) stays 1, never NaN.
#define NEG_BIG (-1e30f)

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block; every thread gets the result. blockDim.x <= 1024.
static __device__ float block_sum(float v) {
  __shared__ float part[32];
  v = warp_sum(v);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int n = (blockDim.x + 31) >> 5;
  v = lane < n ? part[lane] : 0.f;
  return warp_sum(v);
}

static cudaStream_t as_stream(vs_stream s) { return (cudaStream_t)s; }

// ---------------------------------------------------------------- embedding

// A tensor-parallel rank holds rows vocab_start.. of the table: tokens outside them give
// zero rows, and the all-reduce that follows sums the ranks' rows into the embedding.
__global__ void embed_kernel(const int32_t *tokens, const bf16 *table, float *out, int dim,
                             int vocab_start, int vocab_rows) {
  wait_previous();
  int local = tokens[blockIdx.x] - vocab_start;
  float2 *o = (float2 *)(out + (size_t)blockIdx.x * dim);
  if (local < 0 || local >= vocab_rows) {
    for (int i = threadIdx.x; i < dim / 2; i += blockDim.x) o[i] = make_float2(0.f, 0.f);
    return;
  }
  const __nv_bfloat162 *row = (const __nv_bfloat162 *)(table + (size_t)local * dim);
  for (int i = threadIdx.x; i < dim / 2; i += blockDim.x) o[i] = __bfloat1622float2(row[i]);
}

extern "C" int vs_embed(vs_stream stream, const int32_t *tokens, int n_tokens,
                        const uint16_t *table, float *out, int dim, int vocab_start,
                        int vocab_rows, int threads, int early) {
  if (n_tokens == 0) return 0;
  return launch_kernel(embed_kernel, dim3(n_tokens), dim3(threads), 0, as_stream(stream), early,
                       tokens, (const bf16 *)table, out, dim, vocab_start, vocab_rows);
}

// ---------------------------------------------------------------- RMSNorm

// The residual add happens in the matrix products' epilogue (cuBLAS accumulates into
// the f32 residual with beta = 1), so the norm reads the updated stream once.
__global__ void rmsnorm_kernel(const float *resid, const int32_t *rows, const bf16 *weight,
                               bf16 *out, int dim, float eps) {
  wait_previous();
  int r = rows ? rows[blockIdx.x] : blockIdx.x;
  const float4 *x = (const float4 *)(resid + (size_t)r * dim);
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim / 4; i += blockDim.x) {
    float4 v = x[i];
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  float scale = rsqrtf(block_sum(ss) / dim + eps);
  __nv_bfloat162 *o = (__nv_bfloat162 *)(out + (size_t)blockIdx.x * dim);
  const __nv_bfloat162 *w = (const __nv_bfloat162 *)weight;
  for (int i = threadIdx.x; i < dim / 4; i += blockDim.x) {
    float4 v = x[i];
    float2 w0 = __bfloat1622float2(w[2 * i]), w1 = __bfloat1622float2(w[2 * i + 1]);
    o[2 * i] = __floats2bfloat162_rn(v.x * scale * w0.x, v.y * scale * w0.y);
    o[2 * i + 1] = __floats2bfloat162_rn(v.z * scale * w1.x, v.w * scale * w1.y);
  }
}

extern "C" int vs_rmsnorm(vs_stream stream, const float *resid, const int32_t *rows, int n_rows,
                          const uint16_t *weight, uint16_t *out, int dim, float eps,
                          int threads, int early) {
  if (n_rows == 0) return 0;
  if (dim % 4 != 0) return (int)cudaErrorInvalidValue;
  return launch_kernel(rmsnorm_kernel, dim3(n_rows), dim3(threads), 0, as_stream(stream), early,
                       resid, rows, (const bf16 *)weight, (bf16 *)out, dim, eps);
}

// ---------------------------------------------------------------- RoPE + KV write

// A thread per rotation pair (q, k) or element pair (v), a token's pairs spread over
// blocks along y: a step of 32 tokens has ~400 blocks for the GPU's 132
// multiprocessors, not 32 (a block a token took 9.8 us of an 8B layer's 224 at 32
// tokens under Nsight Compute on an H100).
__global__ void rope_kv_kernel(bf16 *qkv, vs_rope_kv_out p) {
  wait_previous();
  const int t = blockIdx.x, hd = p.head_dim, half = hd / 2;
  const int n_heads = p.n_heads, n_kv = p.n_kv_heads;
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= (n_heads + 2 * n_kv) * half) return;
  // Pair j of a head is elements 2j and 2j + 1 (the interleaved rows the loader gives
  // q and k; the GEMV's fused epilogue pairs them the same way).
  const int head = i / half, j = i % half;
  __nv_bfloat162 *h = (__nv_bfloat162 *)(qkv + ((size_t)t * (n_heads + 2 * n_kv) + head) * hd) + j;
  __nv_bfloat162 o = *h;
  if (head < n_heads + n_kv) {  // q and k rotate; v is copied as it is
    float2 x = __bfloat1622float2(o), c = ((const float2 *)p.cos_sin)[(size_t)p.positions[t] * half + j];
    o = __floats2bfloat162_rn(x.x * c.x - x.y * c.y, x.y * c.x + x.x * c.y);
  }
  if (head < n_heads) {
    *h = o;
    return;
  }
  const int kv = (head - n_heads) % n_kv, slot = p.slots[t];
  bf16 *cache = head < n_heads + n_kv ? (bf16 *)p.k_cache : (bf16 *)p.v_cache;
  size_t row = ((size_t)(slot / p.block_size) * n_kv + kv) * p.block_size + slot % p.block_size;
  ((__nv_bfloat162 *)(cache + row * hd))[j] = o;
}

extern "C" int vs_rope_kv(vs_stream stream, uint16_t *qkv, int n_tokens, const vs_rope_kv_out *out,
                          int threads, int early) {
  if (n_tokens == 0) return 0;
  if (out->head_dim % 2 != 0 || threads < 1) return (int)cudaErrorInvalidValue;
  int pairs = (out->n_heads + 2 * out->n_kv_heads) * out->head_dim / 2;
  return launch_kernel(rope_kv_kernel, dim3(n_tokens, (pairs + threads - 1) / threads), dim3(threads),
                       0, as_stream(stream), early, (bf16 *)qkv, *out);
}

// ---------------------------------------------------------------- attention

// Eight consecutive bf16 (one 16-byte load) as floats.
static __device__ __forceinline__ void unpack8(uint4 raw, float (&v)[8]) {
  const __nv_bfloat162 *h = (const __nv_bfloat162 *)&raw;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// Online-softmax state (m, l, acc) of one query head: folds in another state.
template <int E>
static __device__ __forceinline__ void fold(float &m, float &l, float (&acc)[E], float m2, float l2,
                                            const float (&acc2)[E]) {
  float mx = fmaxf(m, m2), a = __expf(m - mx), b = __expf(m2 - mx);
  l = l * a + l2 * b;
#pragma unroll
  for (int e = 0; e < E; e++) acc[e] = acc[e] * a + acc2[e] * b;
  m = mx;
}

#if ATTN_STAGES > 1
// 16 bytes from global to shared memory, asynchronously (cp.async, L2 only: each K/V
// row is read once).
static __device__ __forceinline__ void cp_async16(void *dst, const void *src) {
  unsigned addr = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(addr), "l"(src));
}
#endif

// Floats of the attention block's cross-warp reduction ([warp][g] (m, l), then
// [warp][g][HD] sums), rounded up to 16 bytes for the K/V ring after it.
static __host__ __device__ int attn_reduce_floats(int warps, int g, int hd) {
  return (warps * g * (hd + 2) + 3) / 4 * 4;
}

// Dynamic shared memory of an attention block: the reduction, then (ATTN_STAGES > 1) the
// ring of K/V rows, 2 x 16 bytes a lane per row in flight per stage.
static size_t attention_smem(int warps, int g, int hd, int u) {
  size_t ring = ATTN_STAGES > 1 ? (size_t)ATTN_STAGES * u * 2 * 16 * warps * 32 : 0;
  return attn_reduce_floats(warps, g, hd) * sizeof(float) + ring;
}

// The parts of a context of `ctx` positions cut into at most `splits` parts of at least
// `min_keys` positions: `per` positions each, the first `used` of them non-empty. The
// attention kernel and its merge both derive them from the token's context, so a
// context of at most `min_keys` positions takes one part even in a split grid.
struct Parts {
  int per, used;
  __device__ Parts(int ctx, int splits, int min_keys) {
    per = max((ctx + splits - 1) / splits, min_keys);
    used = (ctx + per - 1) / per;
  }
};

// One block per (query token, kv head, split) over positions [beg, end) of the token's
// context (see Parts; a split past the used ones returns at once). A K/V row is HD/8 lanes (16 bytes each): a warp holds P = 256/HD
// rows at once, each lane U of them in flight (U independent 16-byte loads of K and of V
// before any is used), so a block has warps*P*U rows in flight. Each group of HD/8 lanes
// keeps its own online softmax for the G query heads sharing the kv head (the K/V rows
// are read once for the group); groups fold by shuffles, warps through shared memory.
// One part used: the block writes the normalised bf16 output; else per (token, head, split)
// the unnormalised sum (HD floats), then max and sum, for attention_merge_kernel.
// Launched early (see early_launch.h), a block reads the step's inputs and prefetches its
// first K/V rows into L2 while the kernel before it (which writes this step's q, k and v)
// drains: that kernel's writes land in L2, so a prefetch cannot bring stale data.
// ATTN_STAGES > 1 (build.rs, from the plan): the K/V rows of the next ATTN_STAGES - 1
// iterations are copied into shared memory (cp.async) while this one computes, so loads
// stay in flight through the softmax math instead of one round trip an iteration. A lane
// reads back only the slots it filled itself, so the ring needs no block barrier.
template <int HD, int G, int U>
__global__ void attention_kernel(const bf16 *qkv, const bf16 *k_cache, const bf16 *v_cache,
                                 const int32_t *block_tables, const int32_t *table_stride,
                                 const int32_t *q_seq, const int32_t *q_ctx, float *partial,
                                 bf16 *out, int n_kv, int bs, int min_keys, float scale) {
  constexpr int E = 8, L = HD / E, P = 32 / L;
  extern __shared__ __align__(16) float smem[];
  int t = blockIdx.x, kh = blockIdx.y, s = blockIdx.z, splits = gridDim.z;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int sub = lane / L, col = (lane % L) * E;
  int n_heads = n_kv * G;
  int ctx = q_ctx[t];
  Parts parts(ctx, splits, min_keys);
  int beg = min(ctx, s * parts.per), end = min(ctx, beg + parts.per);
  const int32_t *table = block_tables + (size_t)q_seq[t] * *table_stride;
  // Element offset of this lane's 16 bytes of position p's K (and V) row.
  auto kv_offset = [&](int p) {
    return (((size_t)table[p / bs] * n_kv + kh) * bs + p % bs) * HD + col;
  };
  const int rows = warps * P, step = rows * U;  // rows one load covers, and an iteration
  const int n_iter = (end - beg + step - 1) / step;
  // Position of this lane's row u of iteration i.
  auto row_of = [&](int i, int u) { return beg + i * step + warp * P + sub + u * rows; };
#pragma unroll
  for (int u = 0; u < U; u++) {
    int p = row_of(0, u);
    if (p < end) {
      size_t off = kv_offset(p);
      asm volatile("prefetch.global.L2 [%0];" ::"l"(k_cache + off));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(v_cache + off));
    }
  }
  wait_previous();
  if (s >= parts.used) return;
  const bf16 *qrow = qkv + (size_t)t * (n_heads + 2 * n_kv) * HD + (size_t)kh * G * HD;
  float q[G][E], acc[G][E], m[G], l[G];
#pragma unroll
  for (int g = 0; g < G; g++) {
    unpack8(*(const uint4 *)(qrow + g * HD + col), q[g]);
#pragma unroll
    for (int e = 0; e < E; e++) {
      q[g][e] *= scale;
      acc[g][e] = 0.f;
    }
    m[g] = NEG_BIG;
    l[g] = 0.f;
  }
#if ATTN_STAGES > 1
  // The ring of ATTN_STAGES iterations' K/V rows, [stage][u][K|V][thread], after the
  // reduction's floats (see attention_smem).
  uint4 *ring = (uint4 *)(smem + attn_reduce_floats(warps, G, HD));
  auto slot = [&](int i, int u, int kv) {
    return ring + (((i % ATTN_STAGES) * U + u) * 2 + kv) * blockDim.x + threadIdx.x;
  };
  // Starts the copies of iteration i (none past the last) and closes their group: every
  // lane commits one group an iteration, so "all but the newest S - 1 done" is iteration i.
  auto issue = [&](int i) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      int p = row_of(i, u);
      if (i < n_iter && p < end) {
        size_t off = kv_offset(p);
        cp_async16(slot(i, u, 0), k_cache + off);
        cp_async16(slot(i, u, 1), v_cache + off);
      }
    }
    asm volatile("cp.async.commit_group;");
  };
#pragma unroll
  for (int i = 0; i < ATTN_STAGES - 1; i++) issue(i);
#endif
  for (int i = 0; i < n_iter; i++) {
    int base = row_of(i, 0);  // this lane's first row of the iteration
    uint4 kr[U], vr[U];
#if ATTN_STAGES > 1
    issue(i + ATTN_STAGES - 1);
    asm volatile("cp.async.wait_group %0;" ::"n"(ATTN_STAGES - 1));
#endif
#pragma unroll
    for (int u = 0; u < U; u++) {
      int p = base + u * rows;
      kr[u] = vr[u] = make_uint4(0u, 0u, 0u, 0u);
      if (p < end) {
#if ATTN_STAGES > 1
        kr[u] = *slot(i, u, 0);
        vr[u] = *slot(i, u, 1);
#else
        size_t off = kv_offset(p);
        kr[u] = *(const uint4 *)(k_cache + off);
        vr[u] = *(const uint4 *)(v_cache + off);
#endif
      }
    }
#pragma unroll
    for (int g = 0; g < G; g++) {
      float d[U], mx = m[g];
#pragma unroll
      for (int u = 0; u < U; u++) {
        float k[E];
        unpack8(kr[u], k);
        d[u] = 0.f;
#pragma unroll
        for (int e = 0; e < E; e++) d[u] += q[g][e] * k[e];
      }
#pragma unroll
      for (int o = L / 2; o > 0; o >>= 1)
#pragma unroll
        for (int u = 0; u < U; u++) d[u] += __shfl_xor_sync(0xffffffffu, d[u], o);
#pragma unroll
      for (int u = 0; u < U; u++)
        if (base + u * rows < end) mx = fmaxf(mx, d[u]);
      float corr = __expf(m[g] - mx);
      l[g] *= corr;
#pragma unroll
      for (int e = 0; e < E; e++) acc[g][e] *= corr;
#pragma unroll
      for (int u = 0; u < U; u++) {
        float w = base + u * rows < end ? __expf(d[u] - mx) : 0.f, v[E];
        unpack8(vr[u], v);
        l[g] += w;
#pragma unroll
        for (int e = 0; e < E; e++) acc[g][e] += w * v[e];
      }
      m[g] = mx;
    }
  }
  // Fold the warp's lane groups (same columns, lanes L, 2L, ... apart).
#pragma unroll
  for (int o = L; o < 32; o <<= 1)
#pragma unroll
    for (int g = 0; g < G; g++) {
      float a2[E];
#pragma unroll
      for (int e = 0; e < E; e++) a2[e] = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
      float m2 = __shfl_xor_sync(0xffffffffu, m[g], o), l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
      fold<E>(m[g], l[g], acc[g], m2, l2, a2);
    }
  // Then the warps: smem holds [warp][g] (m, l), then [warp][g][HD] sums.
  float *ml = smem, *sums = smem + warps * G * 2;
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < G; g++) {
      if (lane == 0) {
        ml[(warp * G + g) * 2] = m[g];
        ml[(warp * G + g) * 2 + 1] = l[g];
      }
#pragma unroll
      for (int e = 0; e < E; e++) sums[(warp * G + g) * HD + col + e] = acc[g][e];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
    int g = i / HD, d = i % HD;
    float mx = NEG_BIG, den = 0.f, num = 0.f;
    for (int w = 0; w < warps; w++) mx = fmaxf(mx, ml[(w * G + g) * 2]);
    for (int w = 0; w < warps; w++) {
      float f = __expf(ml[(w * G + g) * 2] - mx);
      den += f * ml[(w * G + g) * 2 + 1];
      num += f * sums[(w * G + g) * HD + d];
    }
    size_t head = (size_t)t * n_heads + kh * G + g;
    if (parts.used == 1) {
      out[head * HD + d] = __float2bfloat16(den > 0.f ? num / den : 0.f);
    } else {
      float *pp = partial + (head * splits + s) * (HD + 2);
      pp[d] = num;
      if (d == 0) {
        pp[HD] = mx;
        pp[HD + 1] = den;
      }
    }
  }
}

// Merges the used parts of one (token, head), one thread a column d < hd: out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
// A token whose context took one part was written by the attention kernel itself. S (a
// power of two >= splits) makes every load of a thread independent: all of them are in
// flight at once, one memory round trip instead of one per split.
template <int S>
__global__ void attention_merge_kernel(const float *partial, const int32_t *q_ctx, bf16 *out,
                                       int splits, int min_keys, int hd) {
  int t = blockIdx.x, head = blockIdx.y, n_heads = gridDim.y, d = threadIdx.x;
  // Waits even when there is nothing to merge: the kernel after this one waits only for
  // this one, and must find the attention kernel's output written.
  wait_previous();
  int used = Parts(q_ctx[t], splits, min_keys).used;
  if (used <= 1) return;
  const float *p = partial + ((size_t)t * n_heads + head) * splits * (hd + 2);
  float m[S], l[S], acc[S];
#pragma unroll
  for (int s = 0; s < S; s++) {
    bool in = s < used;
    m[s] = in ? p[s * (hd + 2) + hd] : NEG_BIG;
    l[s] = in ? p[s * (hd + 2) + hd + 1] : 0.f;
    acc[s] = in ? p[s * (hd + 2) + d] : 0.f;
  }
  float mx = NEG_BIG, den = 0.f, num = 0.f;
#pragma unroll
  for (int s = 0; s < S; s++) mx = fmaxf(mx, m[s]);
#pragma unroll
  for (int s = 0; s < S; s++) {
    if (s >= used) break;
    float e = __expf(m[s] - mx);
    den += e * l[s];
    num += e * acc[s];
  }
  out[((size_t)t * n_heads + head) * hd + d] = __float2bfloat16(den > 0.f ? num / den : 0.f);
}

// What one attention launch needs besides its template parameters.
struct AttnArgs {
  cudaStream_t st;
  const bf16 *qkv, *kc, *vc;
  const int32_t *bt, *table_stride, *q_seq, *q_ctx;
  float *partial;
  bf16 *out;
  int n_tokens, n_kv, bs, splits, min_keys, warps, early;
};

template <int S>
static int merge_launch(const AttnArgs &a, int n_heads, int hd) {
  return launch_kernel(attention_merge_kernel<S>, dim3(a.n_tokens, n_heads), dim3(hd), 0, a.st,
                       a.early, a.partial, a.q_ctx, a.out, a.splits, a.min_keys, hd);
}

template <int HD, int G, int U>
static int attention_launch(const AttnArgs &a) {
  dim3 grid(a.n_tokens, a.n_kv, a.splits);
  size_t smem = attention_smem(a.warps, G, HD, U);
  // Above the default 48 KiB a kernel must opt in (deep rings of wide blocks).
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(attention_kernel<HD, G, U>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
  }
  return launch_kernel(attention_kernel<HD, G, U>, grid, dim3(a.warps * 32), smem, a.st, a.early,
                       a.qkv, a.kc, a.vc, a.bt, a.table_stride, a.q_seq, a.q_ctx, a.partial, a.out,
                       a.n_kv, a.bs, a.min_keys, rsqrtf((float)HD));
}

template <int HD, int G>
static int attention_by_depth(const AttnArgs &a, int in_flight) {
  switch (in_flight) {
    case 2: return attention_launch<HD, G, 2>(a);
    case 4: return attention_launch<HD, G, 4>(a);
    case 8: return attention_launch<HD, G, 8>(a);
    default: return (int)cudaErrorInvalidValue;
  }
}

template <int HD>
static int attention_by_group(const AttnArgs &a, int group, int in_flight) {
  switch (group) {
    case 1: return attention_by_depth<HD, 1>(a, in_flight);
    case 2: return attention_by_depth<HD, 2>(a, in_flight);
    case 4: return attention_by_depth<HD, 4>(a, in_flight);
    case 8: return attention_by_depth<HD, 8>(a, in_flight);
    default: return (int)cudaErrorInvalidValue;
  }
}

extern "C" int vs_attention(vs_stream stream, const uint16_t *qkv, int n_tokens,
                            const uint16_t *k_cache, const uint16_t *v_cache,
                            const int32_t *block_tables, const int32_t *table_stride, const int32_t *q_seq,
                            const int32_t *q_ctx, float *partial, uint16_t *out, int n_heads,
                            int n_kv_heads, int head_dim, int block_size, int splits,
                            int min_split_keys, int warps, int keys_in_flight, int early) {
  if (n_tokens == 0) return 0;
  if (n_heads % n_kv_heads != 0 || splits < 1 || splits > VS_ATTN_MAX_SPLITS || warps < 1 || warps > 32)
    return (int)cudaErrorInvalidValue;
  AttnArgs a = {as_stream(stream), (const bf16 *)qkv, (const bf16 *)k_cache, (const bf16 *)v_cache,
                block_tables, table_stride, q_seq, q_ctx, partial, (bf16 *)out, n_tokens,
                n_kv_heads, block_size, splits, min_split_keys < 1 ? 1 : min_split_keys, warps,
                early};
  int group = n_heads / n_kv_heads, rc;
  if (head_dim == 64)
    rc = attention_by_group<64>(a, group, keys_in_flight);
  else if (head_dim == 128)
    rc = attention_by_group<128>(a, group, keys_in_flight);
  else
    return (int)cudaErrorInvalidValue;
  if (rc != 0 || splits == 1) return rc;
  if (splits <= 4) return merge_launch<4>(a, n_heads, head_dim);
  if (splits <= 8) return merge_launch<8>(a, n_heads, head_dim);
  if (splits <= 16) return merge_launch<16>(a, n_heads, head_dim);
  return merge_launch<VS_ATTN_MAX_SPLITS>(a, n_heads, head_dim);
}

// ---------------------------------------------------------------- SwiGLU

__global__ void swiglu_kernel(const bf16 *gate_up, bf16 *out, int ff) {
  wait_previous();
  const __nv_bfloat162 *g = (const __nv_bfloat162 *)(gate_up + (size_t)blockIdx.y * 2 * ff);
  const __nv_bfloat162 *u = g + ff / 2;
  __nv_bfloat162 *o = (__nv_bfloat162 *)(out + (size_t)blockIdx.y * ff);
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= ff / 2) return;
  float2 a = __bfloat1622float2(g[i]), b = __bfloat1622float2(u[i]);
  o[i] = __floats2bfloat162_rn(a.x / (1.f + __expf(-a.x)) * b.x, a.y / (1.f + __expf(-a.y)) * b.y);
}

extern "C" int vs_swiglu(vs_stream stream, const uint16_t *gate_up, uint16_t *out, int n_tokens,
                         int ff, int threads, int early) {
  if (n_tokens == 0) return 0;
  if (ff % 2 != 0) return (int)cudaErrorInvalidValue;
  dim3 grid((ff / 2 + threads - 1) / threads, n_tokens);
  return launch_kernel(swiglu_kernel, grid, dim3(threads), 0, as_stream(stream), early,
                       (const bf16 *)gate_up, (bf16 *)out, ff);
}

// ---------------------------------------------------------------- token selection

// SplitMix64: a counter-based hash, so a draw depends only on (seed, index).
static __device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The better of two (score, id): the higher score, the lower id on ties. The order in
// which scans and reductions meet candidates does not change the winner.
static __device__ __forceinline__ void keep_best(float &bv, int &bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// The block's best (score, id), in thread 0. blockDim.x a multiple of 32.
static __device__ void block_best(float &bv, int &bi) {
  __shared__ float best_v[32];
  __shared__ int best_i[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    keep_best(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (warps == 1) return;
  if (lane == 0) {
    best_v[warp] = bv;
    best_i[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < warps; w++) keep_best(bv, bi, best_v[w], best_i[w]);
}

// First pass: block (r, part) scans its slice of logits row r (scores: the logits, or
// with temps[r] > 0 the Gumbel-perturbed logits / temperature) and writes the slice's
// best into part_score / part_id [r][part]. Many blocks a row: one block reading a
// 128k vocabulary alone is limited to one multiprocessor's bandwidth.
__global__ void sample_part_kernel(const float *logits, int vocab, int vocab_start,
                                   const float *temps, const uint64_t *seeds, float *part_score,
                                   int32_t *part_id) {
  int r = blockIdx.x, part = blockIdx.y, parts = gridDim.y;
  int per = (vocab + parts - 1) / parts, beg = min(vocab, part * per), end = min(vocab, beg + per);
  const float *row = logits + (size_t)r * vocab;
  float temp = temps[r];  // step inputs: readable before the wait
  uint64_t seed = seeds[r];
  wait_previous();
  float bv = -INFINITY;
  int bi = beg;
  // SAMPLE_LOADS logits loading at once per thread (one at a time, a long slice is a
  // chain of dependent loads).
  for (int i0 = beg + threadIdx.x; i0 < end; i0 += SAMPLE_LOADS * blockDim.x) {
    float vs[SAMPLE_LOADS];
#pragma unroll
    for (int j = 0; j < SAMPLE_LOADS; j++) {
      int i = i0 + j * blockDim.x;
      vs[j] = i < end ? row[i] : -INFINITY;
    }
#pragma unroll
    for (int j = 0; j < SAMPLE_LOADS; j++) {
      int i = i0 + j * blockDim.x;
      if (i >= end) break;
      float v = vs[j];
      if (temp > 0.f) {
        // Uniform in (0, 1) from the top 24 bits; Gumbel noise -log(-log(u)).
        // Keyed by the global token id, so every rank of a vocabulary split draws the
        // same noise as one GPU would.
        uint64_t id = (uint64_t)(i + vocab_start);
        float u = ((float)(mix64(seed ^ id * 0x9e3779b97f4a7c15ull) >> 40) + 0.5f) * (1.f / 16777216.f);
        v = v / temp - __logf(-__logf(u));
      }
      keep_best(bv, bi, v, i);
    }
  }
  block_best(bv, bi);
  if (threadIdx.x == 0) {
    part_score[(size_t)r * parts + part] = bv;
    part_id[(size_t)r * parts + part] = bi;
  }
}

// Second pass: one warp a row picks the best of the row's parts.
__global__ void sample_pick_kernel(const float *part_score, const int32_t *part_id, int parts,
                                   int vocab_start, int32_t *out, float *out_score) {
  wait_previous();
  int r = blockIdx.x;
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int p = threadIdx.x; p < parts; p += blockDim.x)
    keep_best(bv, bi, part_score[(size_t)r * parts + p], part_id[(size_t)r * parts + p]);
  block_best(bv, bi);
  if (threadIdx.x == 0) {
    out[r] = bi + vocab_start;
    if (out_score) out_score[r] = bv;
  }
}

extern "C" int vs_sample(vs_stream stream, const float *logits, int n_rows, int vocab,
                         int vocab_start, const float *temps, const uint64_t *seeds,
                         float *part_score, int32_t *part_id, int parts, int32_t *out,
                         float *out_score, int threads, int early) {
  if (n_rows == 0) return 0;
  if (threads % 32 != 0 || threads > 1024 || parts < 1) return (int)cudaErrorInvalidValue;
  cudaStream_t st = as_stream(stream);
  int rc = launch_kernel(sample_part_kernel, dim3(n_rows, parts), dim3(threads), 0, st, early,
                         logits, vocab, vocab_start, temps, seeds, part_score, part_id);
  if (rc != 0) return rc;
  return launch_kernel(sample_pick_kernel, dim3(n_rows), dim3(32), 0, st, early, part_score,
                       part_id, parts, vocab_start, out, out_score);
}
