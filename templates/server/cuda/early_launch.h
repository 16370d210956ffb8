// Programmatic dependent launch (Hopper): a kernel launched early starts while the
// kernel before it on the stream drains, does what does not depend on that kernel
// (stream weights, read the step's uploaded inputs, warm L2), and calls wait_previous()
// before it reads anything that kernel writes. Device code for the .cu files only (not
// part of the C interface bindgen reads).
#ifndef VIBESERVE_EARLY_LAUNCH_H
#define VIBESERVE_EARLY_LAUNCH_H
#include <cuda_runtime.h>

// EARLY_TRIGGER (the plan's cuda.early_trigger, passed by build.rs): true lets the kernel
// after one of these launch once every block of this one has reached wait_previous(),
// so its blocks take the SM slots this kernel's tail frees and do their own early work
// (a GEMV's first weight loads) while this one runs; false launches it when this one ends.
// The GEMV decides by its token count instead (gemv.cu).
#ifndef EARLY_TRIGGER
#error "build.rs passes -DEARLY_TRIGGER (the plan's CUDA_EARLY_TRIGGER)"
#endif

// Waits for the previous kernel on the stream when launched early; a no-op otherwise
// (and before Hopper, which has no programmatic dependent launch). With `let_next`, it
// first lets the next kernel launch. Every kernel calls it before it reads what an
// earlier kernel wrote and before it writes anything, so a kernel that ends has seen
// every kernel before it end: letting the next one launch here is safe, since that one
// waits for this one's end in turn.
static __device__ __forceinline__ void wait_previous(bool let_next = EARLY_TRIGGER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (let_next) asm volatile("griddepcontrol.launch_dependents;");
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
