// The host emulator's streams and CUDA runtime API (what and how: tests/emu/cuda_emu.h): device
// and pinned memory on the host, copies, memsets, events, the device's properties, and the stream
// queues that hold launched grids (cuda_emu.cpp runs them), copies and library calls until the
// host must see their effect.
#include "cuda_emu.h"
#include "cuda_emu_internal.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

// A stream: work queued and not yet run, in order; `queued` and `done` count the ops ever queued
// and run. An op may first wait until another stream has run `after` ops (cudaStreamWaitEvent).
struct CUstream_st {
  struct Op {
    std::function<void()> run;
    CUstream_st* after_stream = nullptr;
    std::uint64_t after = 0;
  };
  std::deque<Op> ops;
  std::uint64_t queued = 0, done = 0;
  bool eager = false;  // a communication stream: runs as early as its waits allow
};

namespace kiln::emu {
namespace {

struct RuntimeState {
  cudaError_t last_error = cudaSuccess;
  std::map<void*, std::size_t> allocations;
  std::size_t allocated = 0;
  std::map<const void*, std::size_t> pinned;  // cudaMallocHost blocks
  // The streams (cuda_emu.h): the legacy default stream and every one created, never freed (an
  // event may still name a destroyed one).
  std::mutex stream_mutex;
  CUstream_st legacy;
  std::vector<CUstream_st*> streams{&legacy};
};
RuntimeState& runtime() {
  static auto* s = new RuntimeState;  // outlives static destructors that free device memory
  return *s;
}

}  // namespace

void set_last_error(cudaError_t error) { runtime().last_error = error; }

bool in_device_memory(const void* p, std::size_t bytes) {
  const auto& allocations = runtime().allocations;
  auto it = allocations.upper_bound(const_cast<void*>(p));
  if (it == allocations.begin()) return false;
  --it;
  const auto* begin = static_cast<const unsigned char*>(it->first);
  const auto* q = static_cast<const unsigned char*>(p);
  return q >= begin && bytes <= it->second && static_cast<std::size_t>(q - begin) <= it->second - bytes;
}

CUstream_st* stream_of(cudaStream_t stream) { return stream != nullptr ? stream : &runtime().legacy; }

void enqueue(cudaStream_t stream, std::function<void()> op) {
  std::lock_guard lock(runtime().stream_mutex);
  CUstream_st* s = stream_of(stream);
  s->ops.push_back({std::move(op)});
  ++s->queued;
}
void make_eager(cudaStream_t stream) {
  std::lock_guard lock(runtime().stream_mutex);
  stream_of(stream)->eager = true;
}

namespace {
// Whether s's next op may run (it has one, and what it waits for has run).
bool ready(const CUstream_st* s) {
  return !s->ops.empty() && (s->ops.front().after_stream == nullptr ||
                             s->ops.front().after_stream->done >= s->ops.front().after);
}
void run_next(CUstream_st* s) {
  CUstream_st::Op op;
  {
    std::lock_guard lock(runtime().stream_mutex);
    op = std::move(s->ops.front());
    s->ops.pop_front();
  }
  if (op.run) op.run();
  std::lock_guard lock(runtime().stream_mutex);
  ++s->done;
}
// Runs one op of an eager stream that is ready; false if none is.
bool run_eager() {
  for (CUstream_st* s : runtime().streams)
    if (s->eager && ready(s)) {
      run_next(s);
      return true;
    }
  return false;
}
// Runs one op toward s's next: that op, or first one of the stream it waits for.
void step(CUstream_st* s) {
  while (!ready(s)) s = s->ops.front().after_stream;  // a waited-for stream has ops left
  run_next(s);
}
}  // namespace

// Runs queued work until s has run `target` ops in all (or has none left), eager streams first.
void run_stream_until(CUstream_st* s, std::uint64_t target) {
  while (s->done < target && !s->ops.empty())
    if (!run_eager()) step(s);
}
// Runs every stream's work (a device-wide synchronisation).
void run_all() {
  for (bool left = true; left;) {
    left = false;
    for (CUstream_st* s : runtime().streams)
      if (!s->ops.empty()) {
        run_stream_until(s, UINT64_MAX);
        left = true;
      }
  }
}

}  // namespace kiln::emu

// ---- The runtime API ---------------------------------------------------------------------------
namespace {
constexpr std::size_t kTotalMemory = std::size_t{16} << 30;
constexpr int kSmCount = 8;
kiln::emu::RuntimeState& rt() { return kiln::emu::runtime(); }
}  // namespace

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unknown error";
  }
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = rt().last_error;
  rt().last_error = cudaSuccess;
  return e;
}
namespace {
// One device, or KILN_EMU_DEVICES of them (for mpirun's ranks on one host, each using its own).
int device_count() {
  static const int count = [] {
    const char* env = std::getenv("KILN_EMU_DEVICES");
    return env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : 1;
  }();
  return count;
}
int current_device = 0;
}  // namespace
cudaError_t cudaGetDeviceCount(int* count) {
  *count = device_count();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= device_count()) return cudaErrorInvalidValue;
  current_device = device;
  return cudaSuccess;
}
// Every process is its own GPU: the UUID holds the process id and the device (a pair of ranks
// checks that they use two GPUs).
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "kiln CUDA emulator on the host");
  char uuid[17];
  std::snprintf(uuid, sizeof uuid, "kiln%02x%010x", device & 0xff, static_cast<unsigned>(getpid()));
  std::memcpy(prop->uuid.bytes, uuid, 16);
  prop->totalGlobalMem = kTotalMemory;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = kSmCount;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr == cudaDevAttrMultiProcessorCount) *value = kSmCount;
  else if (attr == cudaDevAttrMaxThreadsPerBlock) *value = 1024;
  else if (attr == cudaDevAttrClockRate) *value = 1980000;  // kHz, an H200's peak clock
  else return cudaErrorInvalidValue;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes) {
  *free_bytes = kTotalMemory - rt().allocated;
  *total_bytes = kTotalMemory;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  std::lock_guard lock(rt().stream_mutex);
  *stream = new CUstream_st;
  rt().streams.push_back(*stream);
  return cudaSuccess;
}
// The work queued runs first; the stream itself stays (events may name it).
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return cudaErrorInvalidValue;
  kiln::emu::run_stream_until(stream, UINT64_MAX);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  kiln::emu::run_stream_until(kiln::emu::stream_of(stream), UINT64_MAX);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  kiln::emu::run_all();
  return cudaSuccess;
}
// Fresh device memory holds 0xff bytes (NaN as fp32 and bf16): reading it unwritten shows.
cudaError_t cudaMallocAsync(void** ptr, std::size_t nbytes, cudaStream_t) {
  if (nbytes > kTotalMemory - rt().allocated) return rt().last_error = cudaErrorMemoryAllocation;
  *ptr = ::operator new(nbytes ? nbytes : 1, std::align_val_t{256});
  std::memset(*ptr, 0xff, nbytes);
  rt().allocations[*ptr] = nbytes;
  rt().allocated += nbytes;
  return cudaSuccess;
}
// Freed when the stream gets there (stream-ordered).
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  if (rt().allocations.find(ptr) == rt().allocations.end()) return cudaErrorInvalidValue;
  kiln::emu::enqueue(stream, [ptr] {
    const auto it = rt().allocations.find(ptr);
    if (it == rt().allocations.end()) return;
    rt().allocated -= it->second;
    rt().allocations.erase(it);
    ::operator delete(ptr, std::align_val_t{256});
  });
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** ptr, std::size_t nbytes) { return cudaMallocAsync(ptr, nbytes, nullptr); }
cudaError_t cudaFree(void* ptr) {  // synchronises the device
  if (ptr == nullptr) return cudaSuccess;
  kiln::emu::run_all();
  const auto it = rt().allocations.find(ptr);
  if (it == rt().allocations.end()) return cudaErrorInvalidValue;
  rt().allocated -= it->second;
  rt().allocations.erase(it);
  ::operator delete(ptr, std::align_val_t{256});
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, std::size_t nbytes) {
  *ptr = ::operator new(nbytes ? nbytes : 1, std::align_val_t{256});
  rt().pinned[*ptr] = nbytes;
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* ptr) {  // synchronises the device
  kiln::emu::run_all();
  if (rt().pinned.erase(ptr) == 0) return cudaErrorInvalidValue;
  ::operator delete(ptr, std::align_val_t{256});
  return cudaSuccess;
}
namespace {
// Whether [p, p + bytes) lies inside one cudaMallocHost block.
bool in_pinned_memory(const void* p, std::size_t bytes) {
  auto it = rt().pinned.upper_bound(p);
  if (it == rt().pinned.begin()) return false;
  --it;
  const auto* begin = static_cast<const unsigned char*>(it->first);
  const auto* q = static_cast<const unsigned char*>(p);
  return q >= begin && bytes <= it->second && static_cast<std::size_t>(q - begin) <= it->second - bytes;
}
}  // namespace
// As late as CUDA allows (cuda_emu.h): pinned host memory is read or written when the copy runs;
// pageable memory is read at once (staged) or written before the call returns.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t nbytes, cudaMemcpyKind kind, cudaStream_t stream) {
  if (nbytes == 0) return cudaSuccess;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      if (!kiln::emu::in_device_memory(dst, nbytes)) return cudaErrorInvalidValue;
      if (in_pinned_memory(src, nbytes)) {
        kiln::emu::enqueue(stream, [=] { std::memmove(dst, src, nbytes); });
      } else {
        auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                                   static_cast<const unsigned char*>(src) + nbytes);
        kiln::emu::enqueue(stream, [=] { std::memcpy(dst, staged->data(), nbytes); });
      }
      return cudaSuccess;
    case cudaMemcpyDeviceToHost:
      if (!kiln::emu::in_device_memory(src, nbytes)) return cudaErrorInvalidValue;
      if (in_pinned_memory(dst, nbytes)) {
        std::memset(dst, 0xff, nbytes);
        kiln::emu::enqueue(stream, [=] { std::memmove(dst, src, nbytes); });
      } else {
        kiln::emu::run_stream_until(kiln::emu::stream_of(stream), UINT64_MAX);
        std::memmove(dst, src, nbytes);
      }
      return cudaSuccess;
    case cudaMemcpyDeviceToDevice:
      if (!kiln::emu::in_device_memory(src, nbytes) || !kiln::emu::in_device_memory(dst, nbytes))
        return cudaErrorInvalidValue;
      kiln::emu::enqueue(stream, [=] { std::memmove(dst, src, nbytes); });
      return cudaSuccess;
    default:  // host to host, or cudaMemcpyDefault: not emulated
      return cudaErrorInvalidValue;
  }
}
cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t nbytes, cudaStream_t stream) {
  if (nbytes == 0) return cudaSuccess;
  if (!kiln::emu::in_device_memory(dst, nbytes)) return cudaErrorInvalidValue;
  kiln::emu::enqueue(stream, [=] { std::memset(dst, value, nbytes); });
  return cudaSuccess;
}
// As a copy on the legacy stream that the host then waits for.
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t nbytes, cudaMemcpyKind kind) {
  const cudaError_t status = cudaMemcpyAsync(dst, src, nbytes, kind, nullptr);
  cudaStreamSynchronize(nullptr);
  return status;
}
// An event is a point in one stream: the count of its ops queued when it was recorded.
struct CUevent_st {
  CUstream_st* stream = nullptr;
  std::uint64_t recorded = 0;
};
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  *event = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard lock(rt().stream_mutex);
  event->stream = kiln::emu::stream_of(stream);
  event->recorded = event->stream->queued;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event->stream != nullptr) kiln::emu::run_stream_until(event->stream, event->recorded);
  return cudaSuccess;
}
// Lazy: the host asks, so the work runs now and the event has always completed.
cudaError_t cudaEventQuery(cudaEvent_t event) { return cudaEventSynchronize(event); }
// The stream's later work waits until the event's stream has run to the record.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  if (event->stream == nullptr) return cudaSuccess;
  std::lock_guard lock(rt().stream_mutex);
  CUstream_st* s = kiln::emu::stream_of(stream);
  s->ops.push_back({nullptr, event->stream, event->recorded});
  ++s->queued;
  return cudaSuccess;
}
