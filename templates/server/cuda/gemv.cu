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
      wait_previous(a.n_tokens <= GEMV_EARLY_TRIGGER_MAX_TOKENS);
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
  if (!waited) wait_previous(a.n_tokens <= GEMV_EARLY_TRIGGER_MAX_TOKENS);
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
        int row = row0 + r;
        if (row >= a.rows) break;
        size_t i = (size_t)t * a.rows + row;
        float v = acc[r][t] * scale;
        if (SWIGLU) {
          float up = acc[S - R + r][t] * scale;
          ((bf16 *)a.y)[i] = __float2bfloat16(v / (1.f + __expf(-v)) * up);
        } else if (a.y_f32) {
          float *o = (float *)a.y;
          o[i] = a.accumulate ? o[i] + v : v;
        } else {
          bf16 *o = (bf16 *)a.y;
          o[i] = __float2bfloat16(a.accumulate ? __bfloat162float(o[i]) + v : v);
        }
      }
    }
  }
}

// `early`: programmatic dependent launch, so the kernel's blocks start (and stream their
// first weights) while the previous kernel on the stream drains, instead of after it.
template <int T, int R, bool NORM, bool SWIGLU, bool ROPE>
static int gemv_launch(cudaStream_t st, const GemvArgs &a, const vs_gemv_launch &l) {
  int row_warps = (a.rows + R - 1) / R, groups = l.warps / a.k_split;
  size_t smem = a.k_split > 1 ? (size_t)l.warps * gemv_part_floats<T, R, SWIGLU>() * sizeof(float) : 0;
  return launch_kernel(gemv_kernel<T, R, NORM, SWIGLU, ROPE>, dim3((row_warps + groups - 1) / groups),
                       dim3(l.warps * 32), smem, st, l.early, a);
}

template <int R, bool NORM, bool SWIGLU, bool ROPE>
static int gemv_by_tokens(cudaStream_t st, const GemvArgs &a, const vs_gemv_launch &l) {
  if (a.n_tokens <= 1) return gemv_launch<1, R, NORM, SWIGLU, ROPE>(st, a, l);
  if (a.n_tokens <= 2) return gemv_launch<2, R, NORM, SWIGLU, ROPE>(st, a, l);
  if (a.n_tokens <= 4) return gemv_launch<4, R, NORM, SWIGLU, ROPE>(st, a, l);
  return gemv_launch<8, R, NORM, SWIGLU, ROPE>(st, a, l);
}

// ROPE needs whole rotation pairs in a warp: no one-row warps.
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

// How many warps share a row group's k range (see gemv_kernel): doubled while the
// product has fewer than `warps_per_sm` warps a multiprocessor, up to `k_split_max`, a
// divisor of the block's warps, and no more than the row's 32-chunk slices.
static int gemv_k_split(int rows, int k8, const vs_gemv_launch &l) {
  long row_warps = (rows + l.rows_per_warp - 1) / l.rows_per_warp;
  long wanted = (long)l.warps_per_sm * l.sm_count;
  int ks = 1;
  while (2 * ks <= l.k_split_max && l.warps % (2 * ks) == 0 && 64 * ks <= k8 &&
         row_warps * ks < wanted)
    ks *= 2;
  return ks;
}

extern "C" int vs_gemv(vs_stream stream, const uint16_t *w, const void *x, const int32_t *x_rows,
                       const uint16_t *norm, float eps, void *y, int rows, int n_tokens, int k,
                       int y_f32, int accumulate, int swiglu, const vs_rope_kv_out *rope,
                       const vs_gemv_launch *launch) {
  if (n_tokens == 0 || rows == 0) return 0;
  const vs_gemv_launch &l = *launch;
  // Shapes the kernel cannot take are refused (the caller falls back to cuBLAS).
  if (n_tokens > VS_GEMV_MAX_TOKENS || k % 8 != 0 || ((uintptr_t)w | (uintptr_t)x | (uintptr_t)norm) % 16 != 0 ||
      ((swiglu || rope) && (y_f32 || accumulate)) || (swiglu && rope) || l.warps < 1 ||
      l.warps > GEMV_MAX_WARPS || l.rows_per_warp < 1 || l.sm_count < 1)
    return (int)cudaErrorInvalidValue;
  if (rope && (rope->head_dim % 2 != 0 ||
               rows != (rope->n_heads + 2 * rope->n_kv_heads) * rope->head_dim))
    return (int)cudaErrorInvalidValue;
  GemvArgs a = {(const uint4 *)w, x,        x_rows,     (const uint4 *)norm,
                eps,              y,        rows,       n_tokens,
                k / 8,            y_f32,    accumulate, rope ? *rope : vs_rope_kv_out{},
                gemv_k_split(rows, k / 8, l)};
  cudaStream_t st = (cudaStream_t)stream;
  bool n = norm != NULL;
  if (n && rope) return gemv_by_rows<true, false, true>(st, a, l);
  if (rope) return gemv_by_rows<false, false, true>(st, a, l);
  if (n && swiglu) return gemv_by_rows<true, true, false>(st, a, l);
  if (n) return gemv_by_rows<true, false, false>(st, a, l);
  if (swiglu) return gemv_by_rows<false, true, false>(st, a, l);
  return gemv_by_rows<false, false, false>(st, a, l);
}
