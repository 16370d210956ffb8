// Communication kernels of a tensor-parallel group: the one-shot all-reduces over peer
// memory (plain CUDA peer-to-peer; no NVLink multicast): `pull` (publish, flag, read the
// peers' copies) and `push` (write into the peers' inboxes, poll one's own). Launch shapes and limits come
// from the Rust side (src/plan_cuda.rs).
#include <cuda_runtime.h>
#include <stdint.h>

#include "comm.h"
#include "early_launch.h"

static __device__ __forceinline__ unsigned long long comm_now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The ranks' values added in rank order: every rank, and both kernels, get the same bits.
template <int WORLD>
static __device__ __forceinline__ float4 sum_in_rank_order(const float4 (&v)[WORLD]) {
  float4 s = v[0];
#pragma unroll
  for (int p = 1; p < WORLD; p++) {
    s.x += v[p].x;
    s.y += v[p].y;
    s.z += v[p].z;
    s.w += v[p].w;
  }
  return s;
}

// One block's share: publish, signal every peer, wait for every peer, sum in rank order.
template <int WORLD>
__global__ void allreduce_peers_kernel(float4 *data, int n4, float4 *exchange, vs_peers peers,
                                       int rank, int cap4, int *epochs, int *error,
                                       long long timeout_ns, int max_blocks) {
  wait_previous();
  __shared__ int epoch;
  if (threadIdx.x == 0) epoch = epochs[blockIdx.x] + 1;
  __syncthreads();
  const int e = epoch, slot = (e & 1) * cap4;
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride)
    exchange[slot + i] = data[i];
  __threadfence_system();
  __syncthreads();
  const int t = threadIdx.x;
  if (t == 0) epochs[blockIdx.x] = e;
  // Thread p signals peer p, then waits for peer p's signal: the waits run side by side.
  if (t < WORLD && t != rank) {
    ((volatile int *)peers.flags[t])[rank * max_blocks + blockIdx.x] = e;
    volatile int *mine = (volatile int *)peers.flags[rank] + t * max_blocks + blockIdx.x;
    unsigned long long start = comm_now_ns();
    while (*mine < e) {
      if ((long long)(comm_now_ns() - start) > timeout_ns) {
        atomicExch(error, 1);
        break;
      }
    }
    __threadfence_system();
  }
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 v[WORLD];
#pragma unroll
    for (int p = 0; p < WORLD; p++)
      v[p] = p == rank ? data[i] : __ldcg(&((const float4 *)peers.exchange[p])[slot + i]);
    data[i] = sum_in_rank_order<WORLD>(v);
  }
}

// ------------------------------------------------------------------ push (Lamport)

// An inbox element that no peer has written yet. The bits are a NaN that a sum never
// needs to carry: a value with these bits is sent as the canonical NaN instead.
#define VS_EMPTY 0xffffffffu

static __device__ __forceinline__ float4 ld_volatile4(const float4 *p) {
  float4 v;
  asm volatile("ld.volatile.global.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "l"(p));
  return v;
}

static __device__ __forceinline__ bool arrived(float4 v) {
  return __float_as_uint(v.x) != VS_EMPTY && __float_as_uint(v.y) != VS_EMPTY &&
         __float_as_uint(v.z) != VS_EMPTY && __float_as_uint(v.w) != VS_EMPTY;
}

static __device__ __forceinline__ float sendable(float x) {
  return __float_as_uint(x) == VS_EMPTY ? __uint_as_float(0x7fc00000u) : x;
}

// Each thread owns fixed float4s of the message (the grid is always the same), writes
// them into slot `rank` of every peer's inbox, then polls its own inbox's slots until
// every peer's value is there: the value is its own arrival flag, so there is no fence,
// no flag and no second trip over NVLink. After reading, the thread empties the slots.
// Two inboxes alternate by call: a peer writes into this inbox again only two calls on,
// which needs this rank's data of the call in between, sent after this call ended.
template <int WORLD>
__global__ void allreduce_push_kernel(float4 *data, int n4, vs_peers peers, int rank, int cap4,
                                      int *epochs, int *error, long long timeout_ns) {
  wait_previous();
  __shared__ int epoch;
  if (threadIdx.x == 0) epoch = epochs[blockIdx.x] + 1;
  __syncthreads();
  const int half = WORLD * cap4;  // one inbox: a slot of cap4 float4 per source rank
  const int box = (epoch & 1) * half;
  const int stride = gridDim.x * blockDim.x;
  float4 *mine = (float4 *)peers.exchange[rank];
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 v = data[i];
    v = make_float4(sendable(v.x), sendable(v.y), sendable(v.z), sendable(v.w));
#pragma unroll
    for (int p = 0; p < WORLD; p++)
      if (p != rank) ((float4 *)peers.exchange[p])[box + rank * cap4 + i] = v;
  }
  const float4 empty = make_float4(__uint_as_float(VS_EMPTY), __uint_as_float(VS_EMPTY),
                                   __uint_as_float(VS_EMPTY), __uint_as_float(VS_EMPTY));
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 v[WORLD];
#pragma unroll
    for (int p = 0; p < WORLD; p++) {
      if (p == rank) {
        v[p] = data[i];
        continue;
      }
      const float4 *slot = mine + box + p * cap4 + i;
      v[p] = ld_volatile4(slot);
      if (!arrived(v[p])) {
        unsigned long long start = comm_now_ns();
        do {
          if ((long long)(comm_now_ns() - start) > timeout_ns) {
            atomicExch(error, 1);
            break;
          }
          v[p] = ld_volatile4(slot);
        } while (!arrived(v[p]));
      }
    }
    data[i] = sum_in_rank_order<WORLD>(v);
#pragma unroll
    for (int p = 0; p < WORLD; p++)
      if (p != rank) mine[box + p * cap4 + i] = empty;
  }
  __syncthreads();
  if (threadIdx.x == 0) epochs[blockIdx.x] = epoch;
}

// Pull: `blocks` blocks of its own flags; push: always `max_blocks` (the same grid on every
// call, see the kernel).
template <int WORLD>
static int launch_one_shot(cudaStream_t s, float *data, int n, float *exchange, vs_peers peers,
                           int rank, int cap, int *epochs, int *error, long long timeout_ns,
                           int max_blocks, int blocks, int threads, int push, int early) {
  if (push)
    return launch_kernel(allreduce_push_kernel<WORLD>, dim3(max_blocks), dim3(threads), 0, s, early,
                         (float4 *)data, n / 4, peers, rank, cap / 4, epochs, error, timeout_ns);
  return launch_kernel(allreduce_peers_kernel<WORLD>, dim3(blocks), dim3(threads), 0, s, early,
                       (float4 *)data, n / 4, (float4 *)exchange, peers, rank, cap / 4, epochs,
                       error, timeout_ns, max_blocks);
}

extern "C" int vs_allreduce_peers(vs_stream stream, float *data, int n, float *exchange,
                                  vs_peers peers, int world, int rank, int cap, int *epochs,
                                  int *error, long long timeout_ns, int max_blocks, int blocks,
                                  int threads, int push, int early) {
  if (n == 0) return 0;
  if (n % 4 != 0 || n > cap || blocks > max_blocks || threads < world || rank >= world)
    return (int)cudaErrorInvalidValue;
  cudaStream_t s = (cudaStream_t)stream;
  switch (world) {
    case 2: return launch_one_shot<2>(s, data, n, exchange, peers, rank, cap, epochs, error, timeout_ns, max_blocks, blocks, threads, push, early);
    case 4: return launch_one_shot<4>(s, data, n, exchange, peers, rank, cap, epochs, error, timeout_ns, max_blocks, blocks, threads, push, early);
    case 8: return launch_one_shot<8>(s, data, n, exchange, peers, rank, cap, epochs, error, timeout_ns, max_blocks, blocks, threads, push, early);
    default: return (int)cudaErrorInvalidValue;
  }
}
