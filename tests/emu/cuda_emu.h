// A host emulator of the CUDA that kiln's kernels use, so that the GPU tests (tests/cuda/) run the
// real kernels/cuda/*.cu against their CPU twins on machines without a GPU (target test_cuda_emu,
// ctest label "emu"). The .cu files are compiled unchanged by the host compiler; the seams are
// KILN_LAUNCH / KILN_DYNAMIC_SHARED (kernels/cuda/runtime.h, defined here first), the CUDA headers
// (tests/emu/include/cuda_runtime.h, cuda_bf16.h, cub/..., and cublasLt.h with its own notes) and
// kernels/cuda/ptx.cuh, the one file with inline PTX (tests/emu/include/kernels/cuda/ptx.cuh stands
// in for it).
//
// What is emulated, and how:
//  - Every CUDA thread is a fiber (its own stack) on one host thread. The blocks of a grid run one
//    after another in blockIdx order (x fastest). In a block, a thread runs until it finishes or waits at a barrier or warp collective; the lowest
//    threadIdx that can go on runs first (the highest in odd blocks), so one warp gets as far
//    ahead of the others as the barriers allow: a missing barrier shows whether the race needs a
//    reader too early or a writer too early.
//  - __syncthreads waits for every thread of the block, all at the same call site; a divergent
//    barrier, or one that exited threads never reach (undefined in CUDA), is reported as an error.
//  - Warp collectives (__shfl_*_sync, ldmatrix, mma.sync) wait for all 32 lanes of the warp at the
//    same call site (full masks only), then compute the result from every lane's operands as the
//    PTX ISA specifies: shuffles by source lane, ldmatrix fragments from the 32 row addresses
//    (plain and .trans), mma.m16n8k16 bf16 with exact products accumulated in fp32 in k order.
//  - cp.async: the destination turns to 0xff bytes when the copy is issued and gets the data (and
//    the zero-fill beyond src_bytes) at the cp.async.wait_group that retires its group, the latest
//    point allowed; so reading it too early and overwriting it while others read it both show.
//  - Shared memory, dynamic and static, and fresh device allocations start out as 0xff bytes
//    (NaN in fp32 and bf16) in every block, so a read before a write shows.
//  - bf16 conversions round to nearest even (NaN -> 0x7fff, as the hardware); __f*_rn intrinsics
//    are never contracted to an FMA. Other arithmetic is the host's: the host's expf/logf, and FMA
//    contraction as the host compiler chooses (nvcc contracts too, so tolerances already allow it).
//  - Launch checks as on an H100/H200 (sm_90): block <= 1024 threads, grid.y/z <= 65535, dynamic
//    shared memory over 48 KiB only after cudaFuncSetAttribute allowed it, at most 227 KiB; a bad
//    launch runs nothing and cudaGetLastError reports it. 8 SMs are reported (grid-stride loops
//    then cover several rows per block). Device memory is host memory (16 GiB
//    reported; cudaMemGetInfo's free memory is that minus what is allocated).
//  - Streams, run as late as CUDA allows: kernels (on kiln::cuda::stream(), as KILN_LAUNCH says),
//    copies, memsets, stream-ordered frees and library calls (cuBLASLt, CUB, NCCL) are queued on
//    their stream (one queue each; the legacy stream is one more, with no implicit ordering, as
//    kiln's streams are non-blocking), and run only when the host must see their effect --
//    cudaStreamSynchronize (that stream), cudaEventSynchronize and cudaEventQuery (up to the
//    event's record in its stream; a query always finds it complete), a copy to pageable host
//    memory (its stream), cudaMemcpy (the legacy stream), cudaFree, cudaFreeHost and
//    cudaDeviceSynchronize (all streams).
//    An event is a position in one stream; cudaStreamWaitEvent queues a wait, and the stream's
//    later work runs only after the event's stream has run that far. To reach what the host waits
//    for, the emulator runs that stream in order, first running the streams it waits for as far
//    as they must go; but streams that carry NCCL collectives (make_eager) run every op as soon as
//    its waits allow, before anything else: a collective whose stream does not wait for the
//    kernels that write its input reads the input before they run. Work no wait needs stays
//    queued. A copy from pinned host memory reads it when it runs (the host may
//    have overwritten it by then); a copy to pinned host memory turns it to 0xff bytes when queued
//    and lands when it runs; a copy from pageable memory reads it at once (the driver stages it).
//    So a host that reads or reuses pinned memory without waiting for the copy sees it.
//  - Devices: one, or KILN_EMU_DEVICES (for ranks on one host that each take one, as
//    parallel.emu_nccl_np2 does); all share the host's memory. Each process's GPUs have their own
//    UUID (process id and device), so mpirun's ranks look like separate GPUs.
//  - NCCL: tests/emu/include/nccl.h, collectives over MPI when their stream runs.
//  - cub::DeviceRadixSort::SortPairs is a host stable sort on the bits [begin_bit, end_bit).
//  - atomicAdd is a plain read-modify-write (one thread runs at a time).
// What is not: timing and concurrency (no two threads truly run together, so races that need two
// SMs, missing __threadfence or memory-ordering bugs do not show), warp lockstep (code that
// assumes lanes run in step without a _sync primitive is not emulated), out-of-bounds accesses to
// device memory that stay inside the host heap (a crash names the kernel, block and thread),
// host pointers passed to kernels, partial-mask shuffles, __launch_bounds__, register and occupancy
// limits, streams running concurrently (a stream's ops run whole, one at a time), stream
// priorities and blocking streams' implicit sync with the legacy stream, and PTX other than what
// ptx.cuh uses.
#pragma once

#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <source_location>
#include <tuple>
#include <type_traits>

// ---- Keywords ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Static shared variables live in one section, which the emulator refills with 0xff per block.
#define __shared__ __attribute__((section("kiln_emu_shared"))) static

// ---- Built-in types and variables -------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }

inline uint3 threadIdx, blockIdx;  // set by the emulator before it resumes a thread
inline dim3 blockDim, gridDim;

// ---- bf16 and float intrinsics ------------------------------------------------------------------
struct alignas(2) __nv_bfloat16 {
  unsigned short bits;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 x) { return x.bits; }
inline float __bfloat162float(__nv_bfloat16 x) { return __uint_as_float(static_cast<unsigned>(x.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) {  // cvt.rn.bf16.f32
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
  return {static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline std::size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<std::size_t>(p); }

namespace kiln::emu {
// The value through a volatile: the compiler can neither fuse it into an FMA nor reorder around it.
template <class T>
inline T rounded(T x) {
  volatile T v = x;
  return v;
}
}  // namespace kiln::emu
inline float __fadd_rn(float a, float b) { return kiln::emu::rounded(a + b); }
inline float __fmul_rn(float a, float b) { return kiln::emu::rounded(a * b); }
inline float __fsub_rn(float a, float b) { return kiln::emu::rounded(a - b); }
inline float __frcp_rn(float x) { return kiln::emu::rounded(1.0f / x); }

// ---- CUDA runtime API (the part kernels/cuda/ uses) --------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNotReady = 600,
};
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaDeviceAttr { cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrClockRate = 13, cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDisableTiming = 2;
struct cudaUUID_t {
  char bytes[16];
};
struct cudaDeviceProp {
  char name[256];
  cudaUUID_t uuid;
  std::size_t totalGlobalMem;
  int major, minor, multiProcessorCount;
};

const char* cudaGetErrorName(cudaError_t error);
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaMalloc(void** ptr, std::size_t nbytes);
template <class T>
cudaError_t cudaMalloc(T** ptr, std::size_t nbytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), nbytes);
}
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocAsync(void** ptr, std::size_t nbytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
cudaError_t cudaMallocHost(void** ptr, std::size_t nbytes);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t nbytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t nbytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t nbytes, cudaMemcpyKind kind);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);

// ---- The emulator -------------------------------------------------------------------------------
namespace kiln::emu {

using Where = std::source_location;

// One lane's operands and results in the warp collective under way.
struct Lane {
  std::uint64_t value, result;  // shuffles
  int source;                   // shuffles: the lane read (out of range: this lane's own value)
  const void* address;          // ldmatrix: this lane's row
  std::uint32_t a[4], b[2], r[4];  // mma A and B fragments; ldmatrix results
  float c[4];                   // mma accumulator in and out
};
// Reports a misuse of CUDA in the running kernel (which kernel, block and thread) and aborts.
[[noreturn]] void fail(const char* what, const Where& where);
int lane_id();
// This thread's Lane in its warp.
Lane& lane();
// Waits until all 32 lanes of the warp called it with the same op at the same site; the last to
// arrive runs compute(lanes) for the whole warp first.
void warp_collective(const char* op, const Where& where, void (*compute)(Lane* lanes));
// __syncthreads.
void sync_block(const Where& where);

void* dynamic_shared();
void ldmatrix_x4(std::uint32_t (&r)[4], const void* row, bool trans, const Where& where);
void mma_bf16_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1,
                    const Where& where);
void cp_async_16(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);

struct LaunchConfig {
  dim3 grid, block;
  std::size_t smem;
  const char* name;
  const void* kernel;
};
// Queues every block of the grid on the stream; body(ctx) is one thread. A bad configuration
// queues nothing, and cudaGetLastError reports it next.
void launch(const LaunchConfig& config, cudaStream_t stream, void (*body)(const void*),
            std::shared_ptr<const void> ctx);
// Queues host work (a library call: cuBLASLt, CUB, NCCL) on the stream.
void enqueue(cudaStream_t stream, std::function<void()> op);
// Marks a communication stream (the NCCL shim's): its work runs as early as its waits allow.
void make_eager(cudaStream_t stream);
void set_max_dynamic_shared(const void* kernel, int bytes);
// Whether [p, p + bytes) lies inside one live device allocation (cudaMallocAsync).
bool in_device_memory(const void* p, std::size_t bytes);

// KILN_LAUNCH(grid, block, smem, kernel)(args...): the arguments are converted to the kernel's
// parameter types once, and every thread calls the kernel with its own copy of them.
template <class... P>
class Launch {
 public:
  Launch(dim3 grid, dim3 block, std::size_t smem, const char* name, void (*kernel)(P...), cudaStream_t stream)
      : config_{grid, block, smem, name, reinterpret_cast<const void*>(kernel)}, kernel_(kernel), stream_(stream) {}
  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    auto call = std::make_shared<const Call>(Call{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)});
    launch(config_, stream_, [](const void* c) {
      const Call& call = *static_cast<const Call*>(c);
      std::apply(call.kernel, call.params);
    }, std::move(call));
  }

 private:
  struct Call {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;
  };
  LaunchConfig config_;
  void (*kernel_)(P...);
  cudaStream_t stream_;
};

template <class T>
T shuffle(unsigned mask, T var, int source, int width, const Where& where) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 32- or 64-bit values");
  if (mask != 0xffffffffu || width != 32) fail("shuffles with a partial mask or width are not emulated", where);
  Lane& me = lane();
  me.value = 0;
  std::memcpy(&me.value, &var, sizeof(T));
  me.source = source;
  warp_collective("__shfl_sync", where, [](Lane* lanes) {
    for (int i = 0; i < 32; ++i)
      lanes[i].result = lanes[i].source >= 0 && lanes[i].source < 32 ? lanes[lanes[i].source].value : lanes[i].value;
  });
  T out;
  std::memcpy(&out, &me.result, sizeof(T));
  return out;
}
}  // namespace kiln::emu

inline void __syncthreads(const kiln::emu::Where& where = kiln::emu::Where::current()) {
  kiln::emu::sync_block(where);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  const kiln::emu::Where& where = kiln::emu::Where::current()) {
  return kiln::emu::shuffle(mask, var, kiln::emu::lane_id() ^ lane_mask, width, where);
}
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
              const kiln::emu::Where& where = kiln::emu::Where::current()) {
  return kiln::emu::shuffle(mask, var, src_lane & 31, width, where);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   const kiln::emu::Where& where = kiln::emu::Where::current()) {
  return kiln::emu::shuffle(mask, var, kiln::emu::lane_id() + static_cast<int>(delta), width, where);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 const kiln::emu::Where& where = kiln::emu::Where::current()) {
  return kiln::emu::shuffle(mask, var, kiln::emu::lane_id() - static_cast<int>(delta), width, where);
}
template <class T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > 227 * 1024)
    return cudaErrorInvalidValue;
  kiln::emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}
// As many blocks as fit in 2048 threads and 228 KiB of shared memory, at most 32.
template <class... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*)(P...), int threads,
                                                          std::size_t smem) {
  if (threads <= 0 || threads > 1024) return cudaErrorInvalidValue;
  int n = 2048 / threads;
  if (smem > 0 && static_cast<std::size_t>(n) * (smem + 1024) > 228 * 1024)
    n = static_cast<int>(228 * 1024 / (smem + 1024));
  *blocks = n < 32 ? n : 32;
  return cudaSuccess;
}

// On kiln's stream, as kernels/cuda/runtime.h's KILN_LAUNCH (expanded where runtime.h declares it).
#define KILN_LAUNCH(grid, block, smem, ...) \
  ::kiln::emu::Launch(grid, block, smem, #__VA_ARGS__, __VA_ARGS__, ::kiln::cuda::stream())
#define KILN_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::kiln::emu::dynamic_shared())
