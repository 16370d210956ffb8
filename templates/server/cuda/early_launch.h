// Programmatic dependent launch (Hopper): a kernel launched early starts while the
// kernel before it on the stream drains, does what does not depend on that kernel
// (stream weights, read the step's uploaded inputs, warm L2), and calls wait_previous()
// before it reads anything that kernel writes. Device code for the .cu files only (not
// part of the C interface bindgen reads).
#ifndef VIBESERVE_EARLY_LAUNCH_H
#define VIBESERVE_EARLY_LAUNCH_H
#include <cuda_runtime.h>

// Waits for the previous kernel on the stream when launched early; a no-op otherwise
// (and before Hopper, which has no programmatic dependent launch).
static __device__ __forceinline__ void wait_previous(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launches `kernel` on `st`, early when `early` (see above).
template <typename... Params, typename... Args>
static int launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                         cudaStream_t st, int early, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = early ? 1 : 0;
  return (int)cudaLaunchKernelEx(&cfg, kernel, args...);
}

#endif
