// The device runtime of a CPU-only build: there is no device, and asking for device memory is an
// Error that says how to get one.
#include <cstdlib>

#include "kernels/error.h"
#include "kernels/device.h"

namespace kiln::device {
namespace {
[[noreturn]] void no_cuda() {
  KILN_CHECK(false, "this build of kiln has no CUDA backend (nvcc was not found when it was "
                    "configured); install the CUDA toolkit and rebuild, or run on the cpu");
  std::abort();
}
}  // namespace

bool cuda_available() { return false; }
std::string cuda_description() { return "no CUDA backend in this build"; }
int device_count() { return 0; }
PeakFlops cuda_peak_flops(bool) { no_cuda(); }
std::array<unsigned char, 16> device_uuid() { no_cuda(); }
void use_device(int) { no_cuda(); }
void* alloc(std::size_t) { no_cuda(); }
void free(void* ptr) {
  if (ptr) no_cuda();
}
void release_cached() {}
AllocatorStats allocator_stats() { return {}; }
void mem_info(std::size_t* free_bytes, std::size_t* total_bytes) {
  *free_bytes = 0;
  *total_bytes = 0;
}
void copy_to_device(void*, const void*, std::size_t) { no_cuda(); }
void copy_to_host(void*, const void*, std::size_t) { no_cuda(); }
void copy_on_device(void*, const void*, std::size_t) { no_cuda(); }
void fill_zero(void*, std::size_t) { no_cuda(); }
void synchronize() {}
void* alloc_pinned(std::size_t) { no_cuda(); }
void free_pinned(void* ptr) {
  if (ptr) no_cuda();
}
void copy_to_host_async(void*, const void*, std::size_t) { no_cuda(); }
Event::~Event() = default;
void Event::record() { no_cuda(); }
void Event::wait() {}

}  // namespace kiln::device
