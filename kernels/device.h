// The device runtime seen from plain C++: allocation, copies and synchronisation of GPU memory,
// without CUDA headers. kernels/cuda/runtime.cu implements it when kiln is built with nvcc;
// kernels/no_cuda.cpp implements it otherwise (no device; every allocation is an Error saying
// how to get a CUDA build).
//
// All device work is ordered on one stream per process (kiln::cuda::stream() in
// kernels/cuda/runtime.h): kernels, copies and the caching allocator's reuse of freed blocks.
// A block freed here can be handed out again at once, because any later use is queued behind
// every earlier use on that same stream. Host code reads device memory only through
// copy_to_host, which synchronises; nothing else inside a training step blocks the host.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln::device {

// True when this build has CUDA and at least one device answers. Any CUDA error (no driver, no
// device) means false; the answer is computed once per process.
bool cuda_available();
// "NVIDIA H200 (sm_90, 139.8 GiB)" or why there is none.
std::string cuda_description();

// Caching allocator: blocks are kept after free and reused for requests of their size class
// (sizes round up to 512 bytes below 1 MiB and to 2 MiB above), so a training step allocates
// from CUDA only in its first iteration. Pointers are 256-byte aligned.
void* alloc(std::size_t nbytes);
void free(void* ptr);
// Returns cached blocks to CUDA (cudaFree); blocks in use stay.
void release_cached();

struct AllocatorStats {
  std::size_t in_use = 0;      // bytes handed out and not yet freed (rounded sizes)
  std::size_t reserved = 0;    // bytes obtained from cudaMalloc (in use + cached)
  std::size_t peak_in_use = 0;
  std::size_t cuda_mallocs = 0;  // calls to cudaMalloc so far
};
AllocatorStats allocator_stats();
// Free and total device memory as cudaMemGetInfo reports them.
void mem_info(std::size_t* free_bytes, std::size_t* total_bytes);

// Stream-ordered copies and fill. copy_to_host waits for the copy (and all earlier work).
void copy_to_device(void* dst, const void* src, std::size_t nbytes);
void copy_to_host(void* dst, const void* src, std::size_t nbytes);
void copy_on_device(void* dst, const void* src, std::size_t nbytes);
void fill_zero(void* dst, std::size_t nbytes);
// Waits for every queued kernel and copy; rethrows an asynchronous kernel error as kiln::Error.
void synchronize();

}  // namespace kiln::device
