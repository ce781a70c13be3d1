// CUDA-side helpers shared by every kernels/cuda/*.cu file: the process's stream, error checks,
// launch arithmetic and warp/block reductions. Host code outside kernels/cuda/ uses
// kernels/device.h instead and never includes CUDA headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/error.h"

namespace kiln::cuda {

// The one stream every kiln kernel, copy and allocation is ordered on (created on first use,
// non-blocking with respect to the legacy default stream).
cudaStream_t stream();

// Throws kiln::Error naming the call site and CUDA's message.
void check(cudaError_t status, const char* what, const char* file, int line);

// After a launch: reports a bad launch configuration at once (no synchronisation).
#define KILN_CUDA_CHECK(call) ::kiln::cuda::check((call), #call, __FILE__, __LINE__)
#define KILN_CUDA_LAUNCH_CHECK() ::kiln::cuda::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// KILN_LAUNCH(grid, block, smem, kernel)(args...) queues kernel<<<grid, block, smem>>> on stream();
// KILN_DYNAMIC_SHARED(T, name) declares a kernel's dynamic shared memory (extern __shared__ T
// name[]). The host emulator of the GPU tests (tests/emu/cuda_emu.h) defines both first. The
// kernel is named with all its template arguments.
#ifndef KILN_LAUNCH
#define KILN_LAUNCH(grid, block, smem, ...) __VA_ARGS__<<<(grid), (block), (smem), ::kiln::cuda::stream()>>>
#define KILN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Scratch device memory from the caching allocator, freed (returned to the cache) on scope
// exit. Safe to free right after queuing the kernels that use it: reuse is stream-ordered.
class Workspace {
 public:
  explicit Workspace(std::size_t nbytes);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// fp32 or bf16 element <-> fp32 register (bf16 rounded to nearest even), for kernels templated
// on the activation type.
__device__ __forceinline__ float as_float(float x) { return x; }
__device__ __forceinline__ float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `shared` holds 32 floats. Deterministic: a fixed tree for a fixed block size.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

}  // namespace kiln::cuda
