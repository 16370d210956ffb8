// Matrix products of few tokens (decode at small batch): y[t, r] = sum_j w[r, j] x[t, j].
// At 1-8 tokens a product only streams the weights once, so what counts is bandwidth:
// 16-byte loads of the weight rows, several in flight per lane, f32 accumulation in
// registers, one warp per `R` output rows, and the residual add in the epilogue
// (cuBLAS's small-m kernels reach well under the copy bandwidth on these shapes).
// At batch 1 a decode layer is launch-bound as much as bandwidth-bound, so the kernel
// also takes in the RMSNorm before it, the SwiGLU after gate_up, and the RoPE and K/V
// cache write after qkv: fewer kernels a layer.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "early_launch.h"
#include "launchers.h"

typedef __nv_bfloat16 bf16;

// 16-byte chunks of one row each lane has in flight before it does arithmetic: the
// plan's `CUDA_GEMV_UNROLL`, passed by build.rs.
#ifndef GEMV_UNROLL
#error "build.rs passes -DGEMV_UNROLL (the plan's CUDA_GEMV_UNROLL)"
#endif
// Products of at most this many tokens let the next kernel launch at their start (the
// plan's CUDA_GEMV_EARLY_TRIGGER_MAX_TOKENS, passed by build.rs; see early_launch.h).
// Wider ones do not: the next kernel's waiting blocks then cost more than they hide.
#ifndef GEMV_EARLY_TRIGGER_MAX_TOKENS
#error "build.rs passes -DGEMV_EARLY_TRIGGER_MAX_TOKENS"
#endif
// Most warps a block has.
#define GEMV_MAX_WARPS 32

// Weights are read once per step and never again before the next step: stream them
// past L1 (`ld.global.nc.L1::no_allocate`), keeping L1 for the token vectors.
static __device__ __forceinline__ uint4 load_stream(const uint4 *p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

static __device__ __forceinline__ float2 bf2(uint32_t u) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u));
}

// Dot product of 8 bf16 weights with 8 bf16 activations, added to acc.
static __device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc) {
  const uint32_t wv[4] = {w.x, w.y, w.z, w.w}, xv[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 a = bf2(wv[i]), b = bf2(xv[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
  return acc;
}


// Dot product of 8 bf16 weights with 8 f32 activations, added to acc.
static __device__ __forceinline__ float dot8f(uint4 w, const float *x, float acc) {
  const uint32_t wv[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 a = bf2(wv[i]);
    acc = fmaf(a.x, x[2 * i], acc);
    acc = fmaf(a.y, x[2 * i + 1], acc);
  }
  return acc;
}

// The operands of one product (see vs_gemv in launchers.h).
struct GemvArgs {
  const uint4 *w;
  const void *x;         // bf16 token vectors, or (NORM) the f32 residual rows
  const int32_t *x_rows; // NORM only: token t reads residual row x_rows[t] (NULL: row t)
  const uint4 *norm;     // NORM only: the RMSNorm weight, bf16 [k]
  float eps;
  void *y;
  int rows, n_tokens, k8, y_f32, accumulate;
  vs_rope_kv_out rope;   // ROPE only
  int k_split;           // warps of a block that share one row group's k range
};

// wait_previous() of a product: one of few tokens lets the next kernel launch at once.
static __device__ __forceinline__ void gemv_wait_previous(const GemvArgs &a) {
  wait_previous(a.n_tokens <= GEMV_EARLY_TRIGGER_MAX_TOKENS);
}

// ROPE epilogue: rows `row` (even) and row + 1 of token t, one rotation pair of a head
// in the interleaved layout the loader gives q and k (weights.rs): q rows rotated into y,
// k rows rotated into the K cache at the token's slot, v rows (unrotated) into the V
// cache. The arithmetic and cache addressing of rope_kv_kernel (kernels.cu).
static __device__ __forceinline__ void rope_kv_store(const GemvArgs &a, int t, int row,
                                                     float x1, float x2) {
  const vs_rope_kv_out &p = a.rope;
  const int hd = p.head_dim, q_rows = p.n_heads * hd, k_rows = p.n_kv_heads * hd;
  if (row < q_rows + k_rows) {
    float2 c = ((const float2 *)p.cos_sin)[(size_t)p.positions[t] * (hd / 2) + (row % hd) / 2];
    float o1 = x1 * c.x - x2 * c.y, o2 = x2 * c.x + x1 * c.y;
    x1 = o1;
    x2 = o2;
  }
  bf16 *dst;
  if (row < q_rows) {
    dst = (bf16 *)a.y + (size_t)t * a.rows + row;
  } else {
    int kv = row - q_rows;
    bf16 *cache = (bf16 *)p.k_cache;
    if (kv >= k_rows) {
      kv -= k_rows;
      cache = (bf16 *)p.v_cache;
    }
    int slot = p.slots[t], block = slot / p.block_size, off = slot % p.block_size;
    dst = cache + (((size_t)block * p.n_kv_heads + kv / hd) * p.block_size + off) * hd + kv % hd;
  }
  *(__nv_bfloat162 *)dst = __floats2bfloat162_rn(x1, x2);
}

// Output (t, row) of a product that is not ROPE: `v`, or with SWIGLU silu(v) * up; f32
// or bf16, added to what y holds with a.accumulate.
template <bool SWIGLU>
static __device__ __forceinline__ void store_out(const GemvArgs &a, int t, int row, float v,
                                                 float up) {
  size_t i = (size_t)t * a.rows + row;
  if (SWIGLU) {
    ((bf16 *)a.y)[i] = __float2bfloat16(v / (1.f + __expf(-v)) * up);
  } else if (a.y_f32) {
    float *o = (float *)a.y;
    o[i] = a.accumulate ? o[i] + v : v;
  } else {
    bf16 *o = (bf16 *)a.y;
    o[i] = __float2bfloat16(a.accumulate ? __bfloat162float(o[i]) + v : v);
  }
}

// Weight rows one warp streams: its R output rows, and with SWIGLU their up rows too.
template <int R, bool SWIGLU>
__host__ __device__ constexpr int gemv_streams() { return SWIGLU ? 2 * R : R; }

// Floats of one warp's k-split partials in shared memory: a sum per (stream, token),
// then a sum of squares per token.
template <int T, int R, bool SWIGLU>
__host__ __device__ constexpr int gemv_part_floats() { return gemv_streams<R, SWIGLU>() * T + T; }

// T: the most tokens (n_tokens <= T); R: output rows per warp. k8 = k / 8 chunks a row.
// NORM: x is the f32 residual and the product is of RMSNorm(x): the warp sums x^2 per
// token while it streams x (it reads every x anyway), multiplies by the norm weight on
// the fly, and scales by rsqrt(mean(x^2) + eps) in the epilogue. SWIGLU: the warp also
// streams the up row (rows + row) of each gate row and writes silu(gate) * up, bf16.
// ROPE (R even, so a warp holds whole rotation pairs): the rows are q, k and v of
// a.rope's heads, stored by rope_kv_store.
// k split: a.k_split consecutive warps of a block share R rows, each taking every
// k_split-th 32-chunk slice of k, so that a product of few rows still has enough warps
// (loads in flight) per multiprocessor; their partial sums meet in shared memory and the
// first warp adds them in a fixed order (the result is the same every run).
template <int T, int R, bool NORM, bool SWIGLU, bool ROPE>
__global__ void gemv_kernel(GemvArgs a) {
  // Weight rows a warp streams; the loads in flight per lane stay GEMV_UNROLL * R.
  constexpr int S = gemv_streams<R, SWIGLU>();
  constexpr int U = GEMV_UNROLL * R / S;
  // k split: each warp's partial sums (S * T products, T sums of squares), sized by the
  // launch for the block's warps.
  extern __shared__ float part[];
  constexpr int PART = gemv_part_floats<T, R, SWIGLU>();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ks = warp % a.k_split;
  const int row0 = (blockIdx.x * ((blockDim.x >> 5) / a.k_split) + warp / a.k_split) * R;
  const int k8 = a.k8;
  // Warps past the last row still reach the k split's barrier (their loads are skipped).
  const bool live = row0 < a.rows;
  float acc[S][T], ss[T];
#pragma unroll
  for (int t = 0; t < T; t++) {
    ss[t] = 0.f;
#pragma unroll
    for (int s = 0; s < S; s++) acc[s][t] = 0.f;
  }
  const uint4 *wr[S];
#pragma unroll
  for (int s = 0; s < S; s++)
    wr[s] = a.w + ((size_t)min(row0 + s % R, a.rows - 1) + (s >= R ? a.rows : 0)) * k8;
  size_t xoff[T];  // element offset of each token's vector
  bool waited = false;
  const int split_stride = 32 * a.k_split;
  for (int base = 32 * ks + lane; live && base < k8; base += U * split_stride) {
    uint4 wv[U][S];
#pragma unroll
    for (int u = 0; u < U; u++) {
      int c = base + u * split_stride;
#pragma unroll
      for (int s = 0; s < S; s++) wv[u][s] = c < k8 ? load_stream(wr[s] + c) : make_uint4(0, 0, 0, 0);
    }
    // Launched early (programmatic dependent launch), the kernel has only read weights
    // so far; the token vectors (and y) are the previous kernel's output: wait for it.
    // Without the early launch this returns at once.
    if (!waited) {
      gemv_wait_previous(a);
      waited = true;
#pragma unroll
      for (int t = 0; t < T; t++)
        xoff[t] = (size_t)(NORM && a.x_rows && t < a.n_tokens ? a.x_rows[t] : t) * k8 * 8;
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      int c = base + u * split_stride;
      if (c >= k8) break;
      float g[8];
      if (NORM) {
        uint4 gv = __ldg(a.norm + c);
        const uint32_t gw[4] = {gv.x, gv.y, gv.z, gv.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
          float2 f = bf2(gw[i]);
          g[2 * i] = f.x;
          g[2 * i + 1] = f.y;
        }
      }
#pragma unroll
      for (int t = 0; t < T; t++) {
        if (t >= a.n_tokens) break;
        if (NORM) {
          const float4 *xp = (const float4 *)((const float *)a.x + xoff[t]) + 2 * c;
          float4 p = __ldg(xp), q = __ldg(xp + 1);
          float xv[8] = {p.x, p.y, p.z, p.w, q.x, q.y, q.z, q.w};
#pragma unroll
          for (int i = 0; i < 8; i++) {
            ss[t] = fmaf(xv[i], xv[i], ss[t]);
            xv[i] *= g[i];
          }
#pragma unroll
          for (int s = 0; s < S; s++) acc[s][t] = dot8f(wv[u][s], xv, acc[s][t]);
        } else {
          uint4 xv = __ldg((const uint4 *)((const bf16 *)a.x + xoff[t]) + c);
#pragma unroll
          for (int s = 0; s < S; s++) acc[s][t] = dot8(wv[u][s], xv, acc[s][t]);
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < T; t++)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      if (NORM) ss[t] += __shfl_xor_sync(0xffffffffu, ss[t], o);
#pragma unroll
      for (int s = 0; s < S; s++) acc[s][t] += __shfl_xor_sync(0xffffffffu, acc[s][t], o);
    }
  if (!waited) gemv_wait_previous(a);
  if (a.k_split > 1) {
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < T; t++) {
        part[warp * PART + S * T + t] = ss[t];
#pragma unroll
        for (int s = 0; s < S; s++) part[warp * PART + s * T + t] = acc[s][t];
      }
    }
    __syncthreads();
    if (ks != 0 || lane != 0 || !live) return;
    for (int j = 1; j < a.k_split; j++)
#pragma unroll
      for (int t = 0; t < T; t++) {
        ss[t] += part[(warp + j) * PART + S * T + t];
#pragma unroll
        for (int s = 0; s < S; s++) acc[s][t] += part[(warp + j) * PART + s * T + t];
      }
  } else if (lane != 0 || !live) {
    return;
  }
#pragma unroll
  for (int t = 0; t < T; t++) {
    if (t >= a.n_tokens) break;
    // The same scale as the RMSNorm kernel's.
    float scale = NORM ? rsqrtf(ss[t] / (float)(k8 * 8) + a.eps) : 1.f;
    if constexpr (ROPE) {
#pragma unroll
      for (int r = 0; r < R; r += 2)
        if (row0 + r < a.rows)
          rope_kv_store(a, t, row0 + r, acc[r][t] * scale, acc[r + 1][t] * scale);
    } else {
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (row0 + r >= a.rows) break;
        store_out<SWIGLU>(a, t, row0 + r, acc[r][t] * scale, acc[S - R + r][t] * scale);
      }
    }
  }
}

// ------------------------------------------------------------------ tensor cores
// At 2-8 tokens the dot products above cost more time than the weights take to stream
// (every weight meets every token on the CUDA cores): the tensor-core kernel feeds the
// same 16-byte weight chunks to mma.sync (m16n8k16, bf16 in, f32 sums; the 8 tokens are
// the n of the fragment) and stays bound by bandwidth, with the same fusions and k split.
// (Wider steps go to cuBLAS: with 16 or 32 tokens this kernel re-reads the token vectors
// per 16-row tile from L1/L2 and fell to 0.6-1.0 TB/s on an H100.)
//
// A warp owns a tile of 16 rows (with SWIGLU also the 16 up rows). Lane (g = lane / 4,
// q = lane % 4) loads 8 consecutive weights of rows g and g + 8 and the same 8 inputs of
// token g, and feeds them to two mmas as their k positions {2q, 2q+1, 2q+8, 2q+9}: a
// product's sum does not care in which order k is visited, as long as the weight and the
// input fragments visit it in the same one. So no shuffles and no shared memory before
// the sums, and each row is read as 64-byte runs.

// d += a (16x16, rows x k) * b (16x8, k x tokens), bf16 operands, f32 accumulators.
static __device__ __forceinline__ void mma_16x8x16(float (&d)[4], uint32_t a0, uint32_t a1,
                                                   uint32_t a2, uint32_t a3, uint32_t b0,
                                                   uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The 8 weights of rows g (lo) and g + 8 (hi) against the 8 inputs x of token g.
static __device__ __forceinline__ void mma_chunk(float (&d)[4], uint4 lo, uint4 hi, uint4 x) {
  mma_16x8x16(d, lo.x, hi.x, lo.y, hi.y, x.x, x.y);
  mma_16x8x16(d, lo.z, hi.z, lo.w, hi.w, x.z, x.w);
}

static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}

// Weight tiles (16 rows) a warp of the tensor-core kernel streams.
template <bool SWIGLU>
__host__ __device__ constexpr int mma_tiles() { return SWIGLU ? 2 : 1; }

// 32-input steps a lane has loading at once: the loads in flight per lane stay
// 2 * GEMV_UNROLL, as at two rows a warp on the CUDA cores.
template <bool SWIGLU>
__host__ __device__ constexpr int mma_unroll() {
  return GEMV_UNROLL / mma_tiles<SWIGLU>() > 0 ? GEMV_UNROLL / mma_tiles<SWIGLU>() : 1;
}

// Floats of one warp's k-split partials: its accumulator fragments (32 lanes x 4 per
// tile), then a sum of squares per token.
template <bool SWIGLU>
__host__ __device__ constexpr int mma_part_floats() { return mma_tiles<SWIGLU>() * 128 + 8; }

// n_tokens <= 8. NORM, SWIGLU, ROPE and the k split as in gemv_kernel; the k split's
// slices are mma_unroll() 32-input steps. The input of token g rounds to bf16 (with NORM
// x * weight, the scale applied to the sums), as the norm kernel's output does for cuBLAS.
template <bool NORM, bool SWIGLU, bool ROPE>
__global__ void gemv_mma_kernel(GemvArgs a) {
  constexpr int A = mma_tiles<SWIGLU>(), U = mma_unroll<SWIGLU>();
  constexpr int PART = mma_part_floats<SWIGLU>();
  extern __shared__ float part[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int ks = warp % a.k_split;
  const int row0 = (blockIdx.x * ((blockDim.x >> 5) / a.k_split) + warp / a.k_split) * 16;
  const int steps = a.k8 / 4;  // 32 inputs a step: one chunk per lane and row
  const bool live = row0 < a.rows, token = g < a.n_tokens;
  float acc[A][4] = {}, ss = 0.f;
  const uint4 *wr[A][2];
#pragma unroll
  for (int i = 0; i < A; i++)
#pragma unroll
    for (int h = 0; h < 2; h++)
      wr[i][h] = a.w + ((size_t)min(row0 + g + 8 * h, a.rows - 1) + (i ? a.rows : 0)) * a.k8 + q;
  size_t xoff = 0;  // element offset of token g's vector
  bool waited = false;
  for (int s0 = ks * U; live && s0 < steps; s0 += U * a.k_split) {
    uint4 wv[U][A][2];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int i = 0; i < A; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
          wv[u][i][h] = s0 + u < steps ? load_stream(wr[i][h] + 4 * (s0 + u)) : make_uint4(0, 0, 0, 0);
    if (!waited) {
      gemv_wait_previous(a);
      waited = true;
      xoff = (size_t)(NORM && a.x_rows && token ? a.x_rows[g] : g) * a.k8 * 8;
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (s0 + u >= steps) break;
      const int c = 4 * (s0 + u) + q;  // this lane's chunk of the rows
      uint4 xv = make_uint4(0, 0, 0, 0);
      if (token && NORM) {
        uint4 gv = __ldg(a.norm + c);
        const float4 *xp = (const float4 *)((const float *)a.x + xoff) + 2 * c;
        float4 p = __ldg(xp), r = __ldg(xp + 1);
        float2 g0 = bf2(gv.x), g1 = bf2(gv.y), g2 = bf2(gv.z), g3 = bf2(gv.w);
        ss = fmaf(p.x, p.x, fmaf(p.y, p.y, fmaf(p.z, p.z, fmaf(p.w, p.w, ss))));
        ss = fmaf(r.x, r.x, fmaf(r.y, r.y, fmaf(r.z, r.z, fmaf(r.w, r.w, ss))));
        xv = make_uint4(pack_bf16(p.x * g0.x, p.y * g0.y), pack_bf16(p.z * g1.x, p.w * g1.y),
                        pack_bf16(r.x * g2.x, r.y * g2.y), pack_bf16(r.z * g3.x, r.w * g3.y));
      } else if (token) {
        xv = __ldg((const uint4 *)((const bf16 *)a.x + xoff) + c);
      }
#pragma unroll
      for (int i = 0; i < A; i++) mma_chunk(acc[i], wv[u][i][0], wv[u][i][1], xv);
    }
  }
  if (!waited) gemv_wait_previous(a);
  // Token g's sum of squares, over the four lanes that read its chunks.
  ss += __shfl_xor_sync(0xffffffffu, ss, 1);
  ss += __shfl_xor_sync(0xffffffffu, ss, 2);
  if (a.k_split > 1) {
    float *mine = part + warp * PART;
#pragma unroll
    for (int i = 0; i < A; i++)
      *(float4 *)(mine + (i * 32 + lane) * 4) = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    if (q == 0) mine[A * 128 + g] = ss;
    __syncthreads();
    if (ks != 0 || !live) return;
    for (int w = 1; w < a.k_split; w++) {
      const float *theirs = part + (warp + w) * PART;
#pragma unroll
      for (int i = 0; i < A; i++) {
        float4 v = *(const float4 *)(theirs + (i * 32 + lane) * 4);
        acc[i][0] += v.x;
        acc[i][1] += v.y;
        acc[i][2] += v.z;
        acc[i][3] += v.w;
      }
      ss += theirs[A * 128 + g];
    }
  } else if (!live) {
    return;
  }
  // Fragment element e of acc[i]: row g + 8 * (e / 2), token 2q + e % 2. Every lane
  // takes part in the shuffles, whatever it stores.
  float scale[2];
#pragma unroll
  for (int e = 0; e < 2; e++) {
    float sum = __shfl_sync(0xffffffffu, ss, 4 * (2 * q + e));
    scale[e] = NORM ? rsqrtf(sum / (float)(a.k8 * 8) + a.eps) : 1.f;
  }
  float next[4];  // ROPE: the same element of row + 1 (lane + 4)
#pragma unroll
  for (int e = 0; e < 4; e++) next[e] = __shfl_down_sync(0xffffffffu, acc[0][e], 4);
#pragma unroll
  for (int e = 0; e < 4; e++) {
    const int t = 2 * q + e % 2, row = row0 + g + 8 * (e / 2);
    if (t >= a.n_tokens || row >= a.rows) continue;
    const float v = acc[0][e] * scale[e % 2];
    if constexpr (ROPE) {
      if (g % 2 == 0) rope_kv_store(a, t, row, v, next[e] * scale[e % 2]);
    } else {
      store_out<SWIGLU>(a, t, row, v, acc[A - 1][e] * scale[e % 2]);
    }
  }
}

// How many warps share a row group's k range (see gemv_kernel): doubled while the
// product has fewer than `warps_per_sm` warps a multiprocessor, up to `k_split_max`, a
// divisor of the block's warps, and no more than the k range's `slices`.
static int gemv_k_split(long row_warps, int slices, const vs_gemv_launch &l) {
  long wanted = (long)l.warps_per_sm * l.sm_count;
  int ks = 1;
  while (2 * ks <= l.k_split_max && l.warps % (2 * ks) == 0 && 2 * ks <= slices &&
         row_warps * ks < wanted)
    ks *= 2;
  return ks;
}

// Launches `kernel` over `row_warps` row groups with `part_floats` of shared memory a
// warp for the k split (above the default 48 KiB only after the kernel allows it).
template <typename Kernel>
static int gemv_grid(Kernel kernel, cudaStream_t st, const GemvArgs &a, const vs_gemv_launch &l,
                     long row_warps, int part_floats) {
  int groups = l.warps / a.k_split;
  size_t smem = a.k_split > 1 ? (size_t)l.warps * part_floats * sizeof(float) : 0;
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
  }
  return launch_kernel(kernel, dim3((unsigned)((row_warps + groups - 1) / groups)), dim3(l.warps * 32),
                       smem, st, l.early, a);
}

// `early`: programmatic dependent launch, so the kernel's blocks start (and stream their
// first weights) while the previous kernel on the stream drains, instead of after it.
template <int T, int R, bool NORM, bool SWIGLU, bool ROPE>
static int gemv_launch(cudaStream_t st, GemvArgs a, const vs_gemv_launch &l) {
  long row_warps = (a.rows + R - 1) / R;
  a.k_split = gemv_k_split(row_warps, a.k8 / 32, l);
  return gemv_grid(gemv_kernel<T, R, NORM, SWIGLU, ROPE>, st, a, l, row_warps,
                   gemv_part_floats<T, R, SWIGLU>());
}

// The tensor-core kernel's blocks: a warp's 16-row tile is 8 CUDA-core warps' rows, so
// a product has 8x fewer row groups and needs a deeper k split (its own plan fields).
template <bool NORM, bool SWIGLU, bool ROPE>
static int gemv_mma_launch(cudaStream_t st, GemvArgs a, vs_gemv_launch l) {
  l.warps = l.mma_warps;
  l.k_split_max = l.mma_k_split_max;
  long row_warps = (a.rows + 15) / 16;
  a.k_split = gemv_k_split(row_warps, a.k8 / (4 * mma_unroll<SWIGLU>()), l);
  return gemv_grid(gemv_mma_kernel<NORM, SWIGLU, ROPE>, st, a, l, row_warps,
                   mma_part_floats<SWIGLU>());
}

// Whether a product of n tokens runs on the tensor cores (gemv_mma_kernel).
static bool on_tensor_cores(int n, int mma_min_tokens) { return n >= mma_min_tokens; }

extern "C" int vs_gemv_takes(int n_tokens, int k, int mma_min_tokens) {
  // A tensor-core step is 32 inputs of a row; a CUDA-core chunk 8.
  int k_multiple = on_tensor_cores(n_tokens, mma_min_tokens) ? 32 : 8;
  return n_tokens >= 1 && n_tokens <= VS_GEMV_MAX_TOKENS && k % k_multiple == 0;
}

// Few tokens on the CUDA cores, from mma_min_tokens on the tensor cores.
template <int R, bool NORM, bool SWIGLU, bool ROPE>
static int gemv_by_tokens(cudaStream_t st, const GemvArgs &a, const vs_gemv_launch &l) {
  if (on_tensor_cores(a.n_tokens, l.mma_min_tokens)) return gemv_mma_launch<NORM, SWIGLU, ROPE>(st, a, l);
  if (a.n_tokens <= 1) return gemv_launch<1, R, NORM, SWIGLU, ROPE>(st, a, l);
  if (a.n_tokens <= 2) return gemv_launch<2, R, NORM, SWIGLU, ROPE>(st, a, l);
  if (a.n_tokens <= 4) return gemv_launch<4, R, NORM, SWIGLU, ROPE>(st, a, l);
  return gemv_launch<8, R, NORM, SWIGLU, ROPE>(st, a, l);
}

// ROPE needs whole rotation pairs in a warp: no one-row warps (the tensor-core kernel's
// 16-row tiles always hold them).
template <bool NORM, bool SWIGLU, bool ROPE>
static int gemv_by_rows(cudaStream_t st, const GemvArgs &a, const vs_gemv_launch &l) {
  switch (l.rows_per_warp) {
    case 1:
      if constexpr (ROPE) return (int)cudaErrorInvalidValue;
      else return gemv_by_tokens<1, NORM, SWIGLU, false>(st, a, l);
    case 2: return gemv_by_tokens<2, NORM, SWIGLU, ROPE>(st, a, l);
    case 4: return gemv_by_tokens<4, NORM, SWIGLU, ROPE>(st, a, l);
    default: return (int)cudaErrorInvalidValue;
  }
}

extern "C" int vs_gemv(vs_stream stream, const uint16_t *w, const void *x, const int32_t *x_rows,
                       const uint16_t *norm, float eps, void *y, int rows, int n_tokens, int k,
                       int y_f32, int accumulate, int swiglu, const vs_rope_kv_out *rope,
                       const vs_gemv_launch *launch) {
  if (n_tokens == 0 || rows == 0) return 0;
  const vs_gemv_launch &l = *launch;
  // Shapes the kernel cannot take are refused (the caller falls back to cuBLAS).
  if (!vs_gemv_takes(n_tokens, k, l.mma_min_tokens) || ((uintptr_t)w | (uintptr_t)x | (uintptr_t)norm) % 16 != 0 ||
      ((swiglu || rope) && (y_f32 || accumulate)) || (swiglu && rope) || l.warps < 1 ||
      l.warps > GEMV_MAX_WARPS || l.mma_warps < 1 || l.mma_warps > GEMV_MAX_WARPS || l.rows_per_warp < 1 || l.sm_count < 1)
    return (int)cudaErrorInvalidValue;
  if (rope && (rope->head_dim % 2 != 0 ||
               rows != (rope->n_heads + 2 * rope->n_kv_heads) * rope->head_dim))
    return (int)cudaErrorInvalidValue;
  GemvArgs a = {(const uint4 *)w, x,        x_rows,     (const uint4 *)norm,
                eps,              y,        rows,       n_tokens,
                k / 8,            y_f32,    accumulate, rope ? *rope : vs_rope_kv_out{},
                1};
  cudaStream_t st = (cudaStream_t)stream;
  bool n = norm != NULL;
  if (n && rope) return gemv_by_rows<true, false, true>(st, a, l);
  if (rope) return gemv_by_rows<false, false, true>(st, a, l);
  if (n && swiglu) return gemv_by_rows<true, true, false>(st, a, l);
  if (n) return gemv_by_rows<true, false, false>(st, a, l);
  if (swiglu) return gemv_by_rows<false, true, false>(st, a, l);
  return gemv_by_rows<false, false, false>(st, a, l);
}
