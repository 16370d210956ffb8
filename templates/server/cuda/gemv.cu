// Matrix products of few tokens (decode at small batch): y[t, r] = sum_j w[r, j] x[t, j].
// At 1-8 tokens a product only streams the weights once, so what counts is bandwidth:
// 16-byte loads of the weight rows, several in flight per lane, f32 accumulation in
// registers, one warp per `R` output rows, and the residual add in the epilogue
// (cuBLAS's small-m kernels reach well under the copy bandwidth on these shapes).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "launchers.h"

typedef __nv_bfloat16 bf16;

// 16-byte chunks of one row each lane has in flight before it does arithmetic.
#define GEMV_UNROLL 4

// Weights are read once per step and never again before the next step: stream them
// past L1 (`ld.global.nc.L1::no_allocate`), keeping L1 for the token vectors.
static __device__ __forceinline__ uint4 load_stream(const uint4 *p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Waits for the previous kernel on the stream when launched early; a no-op otherwise
// (and before Hopper, which has no programmatic dependent launch).
static __device__ __forceinline__ void wait_previous(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
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

// T: the most tokens (n_tokens <= T); R: output rows per warp. k8 = k / 8 chunks a row.
template <int T, int R>
__global__ void gemv_kernel(const uint4 *__restrict__ w, const uint4 *__restrict__ x, void *y,
                            int rows, int n_tokens, int k8, int y_f32, int accumulate) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  int row0 = warp * R;
  if (row0 >= rows) {
    wait_previous();
    return;
  }
  float acc[R][T];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int t = 0; t < T; t++) acc[r][t] = 0.f;
  const uint4 *wr[R];
#pragma unroll
  for (int r = 0; r < R; r++) wr[r] = w + (size_t)min(row0 + r, rows - 1) * k8;
  bool waited = false;
  for (int base = lane; base < k8; base += 32 * GEMV_UNROLL) {
    uint4 wv[GEMV_UNROLL][R];
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      int c = base + u * 32;
#pragma unroll
      for (int r = 0; r < R; r++) wv[u][r] = c < k8 ? load_stream(wr[r] + c) : make_uint4(0, 0, 0, 0);
    }
    // Launched early (programmatic dependent launch), the kernel has only read weights
    // so far; the token vectors (and y) are the previous kernel's output: wait for it.
    // Without the early launch this returns at once.
    if (!waited) {
      wait_previous();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      int c = base + u * 32;
      if (c >= k8) break;
#pragma unroll
      for (int t = 0; t < T; t++) {
        if (t >= n_tokens) break;
        uint4 xv = __ldg(x + (size_t)t * k8 + c);
#pragma unroll
        for (int r = 0; r < R; r++) acc[r][t] = dot8(wv[u][r], xv, acc[r][t]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int t = 0; t < T; t++)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], o);
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < R; r++) {
    int row = row0 + r;
    if (row >= rows) break;
#pragma unroll
    for (int t = 0; t < T; t++) {
      if (t >= n_tokens) break;
      size_t i = (size_t)t * rows + row;
      if (y_f32) {
        float *o = (float *)y;
        o[i] = accumulate ? o[i] + acc[r][t] : acc[r][t];
      } else {
        bf16 *o = (bf16 *)y;
        o[i] = __float2bfloat16(accumulate ? __bfloat162float(o[i]) + acc[r][t] : acc[r][t]);
      }
    }
  }
}

// `early`: programmatic dependent launch, so the kernel's blocks start (and stream their
// first weights) while the previous kernel on the stream drains, instead of after it.
template <int T, int R>
static int gemv_launch(cudaStream_t st, const uint16_t *w, const uint16_t *x, void *y, int rows,
                       int n_tokens, int k, int y_f32, int accumulate, int warps, int early) {
  int row_warps = (rows + R - 1) / R;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((row_warps + warps - 1) / warps);
  cfg.blockDim = dim3(warps * 32);
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = early ? 1 : 0;
  return (int)cudaLaunchKernelEx(&cfg, gemv_kernel<T, R>, (const uint4 *)w, (const uint4 *)x, y,
                                 rows, n_tokens, k / 8, y_f32, accumulate);
}

template <int R>
static int gemv_by_tokens(cudaStream_t st, const uint16_t *w, const uint16_t *x, void *y, int rows,
                          int n_tokens, int k, int y_f32, int accumulate, int warps, int early) {
  if (n_tokens <= 1) return gemv_launch<1, R>(st, w, x, y, rows, n_tokens, k, y_f32, accumulate, warps, early);
  if (n_tokens <= 2) return gemv_launch<2, R>(st, w, x, y, rows, n_tokens, k, y_f32, accumulate, warps, early);
  if (n_tokens <= 4) return gemv_launch<4, R>(st, w, x, y, rows, n_tokens, k, y_f32, accumulate, warps, early);
  return gemv_launch<8, R>(st, w, x, y, rows, n_tokens, k, y_f32, accumulate, warps, early);
}

extern "C" int vs_gemv(vs_stream stream, const uint16_t *w, const uint16_t *x, void *y, int rows,
                       int n_tokens, int k, int y_f32, int accumulate, int rows_per_warp,
                       int warps, int early) {
  if (n_tokens == 0 || rows == 0) return 0;
  // Shapes the kernel cannot take are refused (the caller falls back to cuBLAS).
  if (n_tokens > 8 || k % 8 != 0 || ((uintptr_t)w | (uintptr_t)x) % 16 != 0)
    return (int)cudaErrorInvalidValue;
  cudaStream_t st = (cudaStream_t)stream;
  switch (rows_per_warp) {
    case 1: return gemv_by_tokens<1>(st, w, x, y, rows, n_tokens, k, y_f32, accumulate, warps, early);
    case 2: return gemv_by_tokens<2>(st, w, x, y, rows, n_tokens, k, y_f32, accumulate, warps, early);
    case 4: return gemv_by_tokens<4>(st, w, x, y, rows, n_tokens, k, y_f32, accumulate, warps, early);
    default: return (int)cudaErrorInvalidValue;
  }
}
