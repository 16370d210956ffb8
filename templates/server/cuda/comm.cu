// Communication kernels of a tensor-parallel group: the one-shot all-reduce over peer
// memory (plain CUDA peer-to-peer; no NVLink multicast). Launch shapes and limits come
// from the Rust side (src/plan_cuda.rs).
#include <cuda_runtime.h>
#include <stdint.h>

#include "comm.h"

static __device__ __forceinline__ unsigned long long comm_now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// One block's share: publish, signal every peer, wait for every peer, sum in rank order.
template <int WORLD>
__global__ void allreduce_peers_kernel(float4 *data, int n4, float4 *exchange, vs_peers peers,
                                       int rank, int cap4, int *epochs, int *error,
                                       long long timeout_ns, int max_blocks) {
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
    float4 s = v[0];
#pragma unroll
    for (int p = 1; p < WORLD; p++) {
      s.x += v[p].x;
      s.y += v[p].y;
      s.z += v[p].z;
      s.w += v[p].w;
    }
    data[i] = s;
  }
}

template <int WORLD>
static void launch_peers(cudaStream_t s, float *data, int n, float *exchange, vs_peers peers,
                         int rank, int cap, int *epochs, int *error, long long timeout_ns,
                         int max_blocks, int blocks, int threads) {
  allreduce_peers_kernel<WORLD><<<blocks, threads, 0, s>>>(
      (float4 *)data, n / 4, (float4 *)exchange, peers, rank, cap / 4, epochs, error, timeout_ns,
      max_blocks);
}

extern "C" int vs_allreduce_peers(vs_stream stream, float *data, int n, float *exchange,
                                  vs_peers peers, int world, int rank, int cap, int *epochs,
                                  int *error, long long timeout_ns, int max_blocks, int blocks,
                                  int threads) {
  if (n == 0) return 0;
  if (n % 4 != 0 || n > cap || blocks > max_blocks || threads < world || rank >= world)
    return (int)cudaErrorInvalidValue;
  cudaStream_t s = (cudaStream_t)stream;
  switch (world) {
    case 2: launch_peers<2>(s, data, n, exchange, peers, rank, cap, epochs, error, timeout_ns, max_blocks, blocks, threads); break;
    case 4: launch_peers<4>(s, data, n, exchange, peers, rank, cap, epochs, error, timeout_ns, max_blocks, blocks, threads); break;
    case 8: launch_peers<8>(s, data, n, exchange, peers, rank, cap, epochs, error, timeout_ns, max_blocks, blocks, threads); break;
    default: return (int)cudaErrorInvalidValue;
  }
  return (int)cudaGetLastError();
}
