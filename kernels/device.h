// The device runtime seen from plain C++: allocation, copies and synchronisation of GPU memory,
// without CUDA headers. kernels/cuda/runtime.cu implements it when kiln is built with nvcc;
// kernels/no_cuda.cpp implements it otherwise (no device; every allocation is an Error saying
// how to get a CUDA build).
//
// All device work is ordered on one stream per process (kiln::cuda::stream() in
// kernels/cuda/runtime.h): kernels, copies and the caching allocator's reuse of freed blocks.
// A block freed here can be handed out again at once, because any later use is queued behind
// every earlier use on that same stream. Host code waits for the device only in copy_to_host,
// synchronize and Event::wait; a training step uses them only where a logged value is read.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/peak.h"

namespace kiln::device {

// True when this build has CUDA and at least one device answers. Any CUDA error (no driver, no
// device) means false; the answer is computed once per process.
bool cuda_available();
// "NVIDIA H200 (sm_90, 139.8 GiB)" or why there is none.
std::string cuda_description();
// The current device's dense multiply-add peak, from its model: SMs x peak clock x FLOPs per
// clock per SM of its architecture (bf16: tensor cores with fp32 accumulation; else fp32 CUDA
// cores, kiln's fp32 matmuls using no TF32). Where a generation has parts of two rates (GeForce
// tensor cores accumulate fp32 at half the data-centre rate) the higher is taken, so MFU is never
// overstated.
PeakFlops cuda_peak_flops(bool bf16);
// How many CUDA devices this process sees (0 on any error).
int device_count();
// The 16-byte UUID of this process's current device: ranks compare them to find two on one GPU.
std::array<unsigned char, 16> device_uuid();
// Makes `index` this process's device (one process per GPU under mpirun). Must come before
// anything touches the device: the stream and every allocation belong to the current device.
void use_device(int index);

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

// Page-locked host memory. Copies between it and the device are queued and return at once (from
// pageable memory the driver may make the host wait for the stream); the caller must not touch
// the bytes until the copy is known to be done (Event::wait, synchronize).
void* alloc_pinned(std::size_t nbytes);
void free_pinned(void* ptr);
// Queues a copy into pinned host memory without waiting for it.
void copy_to_host_async(void* pinned_dst, const void* src, std::size_t nbytes);

// Owns page-locked memory of at least the size last reserved (contents are not kept on growth).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { free_pinned(ptr_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void reserve(std::size_t nbytes) {
    if (nbytes <= size_) return;
    free_pinned(ptr_);
    ptr_ = nullptr;
    size_ = 0;
    ptr_ = alloc_pinned(nbytes);
    size_ = nbytes;
  }
  std::byte* data() const { return static_cast<std::byte*>(ptr_); }
  std::size_t size() const { return size_; }

 private:
  void* ptr_ = nullptr;
  std::size_t size_ = 0;
};

// A point in the stream: record() marks the end of the work queued so far, wait() blocks the host
// until the device has passed it (at once when never recorded). Used to reuse a pinned staging
// buffer only after the device has read it.
class Event {
 public:
  Event() = default;
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record();
  void wait();
  // The cudaEvent_t, for another stream to wait on (nullptr before the first record()).
  void* native() const { return handle_; }

 private:
  void* handle_ = nullptr;  // cudaEvent_t, created on the first record()
  bool recorded_ = false;
};

}  // namespace kiln::device
