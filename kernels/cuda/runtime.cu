// The device runtime (kernels/device.h) on CUDA: one stream, a caching allocator, copies.
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "kernels/device.h"

namespace kiln::cuda {

void check(cudaError_t status, const char* what, const char* file, int line) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky-free error so later calls report their own
  throw Error(message("CUDA error ", cudaGetErrorName(status), " (", cudaGetErrorString(status),
                      ") in ", what, " at ", file, ":", line));
}

namespace {
bool stream_made = false;  // device::use_device may not switch devices after this
}  // namespace

cudaStream_t stream() {
  static cudaStream_t s = [] {
    cudaStream_t created = nullptr;
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking));
    stream_made = true;
    return created;
  }();
  return s;
}

Workspace::Workspace(std::size_t nbytes) : ptr_(nbytes ? device::alloc(nbytes) : nullptr) {}
Workspace::~Workspace() { device::free(ptr_); }

}  // namespace kiln::cuda

namespace kiln::device {
namespace {

constexpr std::size_t kSmallLimit = std::size_t{1} << 20;
constexpr std::size_t kSmallRound = 512;
constexpr std::size_t kLargeRound = std::size_t{2} << 20;

std::size_t size_class(std::size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  const std::size_t round = nbytes < kSmallLimit ? kSmallRound : kLargeRound;
  return (nbytes + round - 1) / round * round;
}

// Free blocks by exact size class; blocks in use by pointer. One stream, so a freed block may be
// reused at once (see device.h).
struct CachingAllocator {
  std::mutex mutex;
  std::multimap<std::size_t, void*> free_blocks;
  std::unordered_map<void*, std::size_t> used;
  AllocatorStats stats;

  void* allocate(std::size_t nbytes) {
    const std::size_t size = size_class(nbytes);
    std::lock_guard lock(mutex);
    void* ptr = nullptr;
    if (auto it = free_blocks.find(size); it != free_blocks.end()) {
      ptr = it->second;
      free_blocks.erase(it);
    } else {
      cudaError_t status = cudaMallocAsync(&ptr, size, cuda::stream());
      if (status == cudaErrorMemoryAllocation) {
        // Give the cache back and try once more before reporting.
        cudaGetLastError();
        release_locked();
        status = cudaMallocAsync(&ptr, size, cuda::stream());
      }
      if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        std::size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        throw Error(message("out of GPU memory allocating ", size >> 20, " MiB (", stats.in_use >> 20,
                            " MiB in use by kiln, ", free_b >> 20, " MiB free of ", total_b >> 20,
                            "); reduce train.micro_batch or train.seq_len, or set "
                            "model.recompute=1"));
      }
      cuda::check(status, "cudaMallocAsync", __FILE__, __LINE__);
      stats.reserved += size;
      ++stats.cuda_mallocs;
    }
    used.emplace(ptr, size);
    stats.in_use += size;
    if (stats.in_use > stats.peak_in_use) stats.peak_in_use = stats.in_use;
    return ptr;
  }

  void deallocate(void* ptr) {
    if (!ptr) return;
    std::lock_guard lock(mutex);
    auto it = used.find(ptr);
    KILN_ASSERT(it != used.end());
    stats.in_use -= it->second;
    free_blocks.emplace(it->second, ptr);
    used.erase(it);
  }

  void release_locked() {
    for (auto& [size, ptr] : free_blocks) {
      cudaFreeAsync(ptr, cuda::stream());
      stats.reserved -= size;
    }
    free_blocks.clear();
  }
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator;  // outlives static destructors that free tensors
  return *a;
}

}  // namespace

bool cuda_available() {
  static const bool available = [] {
    int count = 0;  // cudaGetDeviceCount leaves it unwritten on error
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return count > 0;
  }();
  return available;
}

std::string cuda_description() {
  if (!cuda_available()) {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    cudaGetLastError();
    return message("no CUDA device (", cudaGetErrorString(status), ")");
  }
  int dev = 0;
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return message(prop.name, " (sm_", prop.major, prop.minor, ", ",
                 static_cast<double>(prop.totalGlobalMem) / (1 << 30), " GiB)");
}

PeakFlops cuda_peak_flops(bool bf16) {
  int dev = 0, khz = 0;
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev));
  // FLOPs per clock per SM, dense (a multiply-add is two): fp32 CUDA cores; bf16 tensor cores.
  const double fp32 = prop.major <= 8 && prop.minor == 0 ? 128.0 : 256.0;
  const double tensor = prop.major < 8 ? 0.0 : prop.major == 8 ? (prop.minor == 0 ? 2048.0 : 1024.0)
                        : prop.major == 9 ? 4096.0 : 8192.0;
  const bool tensor_cores = bf16 && tensor > 0;
  const double per_clock = tensor_cores ? tensor : fp32;
  const double ghz = khz / 1e6;
  return {per_clock * prop.multiProcessorCount * ghz * 1e9,
          message("from the device's model: ", prop.name, " (sm_", prop.major, prop.minor, "), ",
                  prop.multiProcessorCount, " SMs x ", ghz, " GHz x ", per_clock, " FLOP/clock/SM (",
                  tensor_cores ? "bf16 tensor cores, dense" : "fp32 CUDA cores", ")")};
}

int device_count() {
  int count = 0;
  if (!cuda_available() || cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

std::array<unsigned char, 16> device_uuid() {
  int dev = 0;
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::array<unsigned char, 16> uuid{};
  std::memcpy(uuid.data(), prop.uuid.bytes, uuid.size());
  return uuid;
}

void use_device(int index) {
  const int count = device_count();
  KILN_CHECK(index >= 0 && index < count, "CUDA device ", index, " asked for, but this process sees ",
             count, " (check CUDA_VISIBLE_DEVICES and the number of ranks per machine)");
  int current = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&current));
  KILN_CHECK(current == index || !cuda::stream_made, "use_device(", index, ") after device ", current,
             " was already in use by this process");
  KILN_CUDA_CHECK(cudaSetDevice(index));
}

void* alloc(std::size_t nbytes) { return allocator().allocate(nbytes); }
void free(void* ptr) { allocator().deallocate(ptr); }
void release_cached() {
  auto& a = allocator();
  std::lock_guard lock(a.mutex);
  a.release_locked();
}
AllocatorStats allocator_stats() {
  auto& a = allocator();
  std::lock_guard lock(a.mutex);
  return a.stats;
}
void mem_info(std::size_t* free_bytes, std::size_t* total_bytes) {
  *free_bytes = 0;
  *total_bytes = 0;
  KILN_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

void copy_to_device(void* dst, const void* src, std::size_t nbytes) {
  if (nbytes == 0) return;
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, cuda::stream()));
}
void copy_to_host(void* dst, const void* src, std::size_t nbytes) {
  if (nbytes == 0) return;
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, cuda::stream()));
  KILN_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
}
void copy_on_device(void* dst, const void* src, std::size_t nbytes) {
  if (nbytes == 0) return;
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, cuda::stream()));
}
void fill_zero(void* dst, std::size_t nbytes) {
  if (nbytes == 0) return;
  KILN_CUDA_CHECK(cudaMemsetAsync(dst, 0, nbytes, cuda::stream()));
}
void synchronize() { KILN_CUDA_CHECK(cudaStreamSynchronize(cuda::stream())); }

void* alloc_pinned(std::size_t nbytes) {
  void* ptr = nullptr;
  KILN_CUDA_CHECK(cudaMallocHost(&ptr, nbytes ? nbytes : 1));
  return ptr;
}
void free_pinned(void* ptr) {
  if (ptr) cudaFreeHost(ptr);  // implicitly synchronises the device: only on growth or exit
}
void copy_to_host_async(void* pinned_dst, const void* src, std::size_t nbytes) {
  if (nbytes == 0) return;
  KILN_CUDA_CHECK(cudaMemcpyAsync(pinned_dst, src, nbytes, cudaMemcpyDeviceToHost, cuda::stream()));
}

Event::~Event() {
  if (handle_) cudaEventDestroy(static_cast<cudaEvent_t>(handle_));
}
void Event::record() {
  if (!handle_) {
    cudaEvent_t created = nullptr;
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&created, cudaEventDisableTiming));
    handle_ = created;
  }
  KILN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(handle_), cuda::stream()));
  recorded_ = true;
}
void Event::wait() {
  if (recorded_) KILN_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(handle_)));
}

}  // namespace kiln::device
