// KILN_HOST_DEVICE marks index and tiling arithmetic that CUDA kernels use and host tests check:
// __host__ __device__ under nvcc, nothing under the host compiler.
#pragma once

#ifdef __CUDACC__
#define KILN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KILN_HOST_DEVICE inline
#endif
