// CUDA twins of kernels/cpu/embedding.cpp (token + position embedding), plus bf16 variants for
// mixed precision. The backward is deterministic without atomics: a stable radix sort groups the
// tokens of each row in token order (kernels/embedding_tiling.h), then one block per (row,
// channel chunk) adds them up in that order, exactly as the CPU twin does.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/embedding.h"
#include "kernels/embedding_tiling.h"

namespace kiln::cuda {
namespace {

using embedding_tiling::accumulate_chunks;
using embedding_tiling::accumulate_threads;
using embedding_tiling::sort_key_bits;
using embedding_tiling::token_sort_key;

constexpr int kThreads = 256;
constexpr std::int64_t kMaxBlocks = 8192;  // grid-stride loops cover the rest
constexpr std::uint32_t kNoPositionKey = 0xffffffffu;  // never a position (positions < 2^31)

bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

int grid_for(std::int64_t items) {
  return static_cast<int>(std::min<std::int64_t>(ceil_div(items, kThreads), kMaxBlocks));
}

__device__ __forceinline__ float bf16_bits_to_float(std::uint32_t bits) { return __uint_as_float(bits << 16); }

// kiln::to_bf16 (kernels/bf16.h) on the device, bit for bit: nearest even, NaN stays NaN.
__device__ __forceinline__ std::uint32_t float_to_bf16_bits(float x) {
  std::uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}

// Row of `token` in the shard, or -1 outside it.
__device__ __forceinline__ std::int64_t shard_row(std::int32_t token, std::int64_t vocab_first,
                                                  std::int64_t vocab_rows) {
  const std::int64_t row = static_cast<std::int64_t>(token) - vocab_first;
  return row >= 0 && row < vocab_rows ? row : -1;
}

// out (n, c) = wte[row] + wpe[position], W consecutive channels per item (4: one float4; the
// caller checked c % 4 == 0 and 16-byte alignment). Absent terms add 0.0f, as on the CPU.
template <int W>
__global__ void embedding_forward_kernel(float* __restrict__ out, const std::int32_t* __restrict__ tokens,
                                         const std::int32_t* __restrict__ positions,
                                         const float* __restrict__ wte, const float* __restrict__ wpe,
                                         std::int64_t n, std::int64_t c, std::int64_t vocab_first,
                                         std::int64_t vocab_rows) {
  const std::int64_t items_per_row = c / W;
  const std::int64_t total = n * items_per_row;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const std::int64_t i = idx / items_per_row;
    const std::int64_t j = (idx - i * items_per_row) * W;
    const std::int64_t row = shard_row(tokens[i], vocab_first, vocab_rows);
    const float* te = row >= 0 ? wte + row * c + j : nullptr;
    const float* pe = wpe ? wpe + static_cast<std::int64_t>(positions[i]) * c + j : nullptr;
    float* o = out + i * c + j;
    if constexpr (W == 4) {
      const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      const float4 a = te ? *reinterpret_cast<const float4*>(te) : zero;
      const float4 b = pe ? *reinterpret_cast<const float4*>(pe) : zero;
      *reinterpret_cast<float4*>(o) = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
    } else {
      *o = (te ? *te : 0.0f) + (pe ? *pe : 0.0f);
    }
  }
}

// The bf16 forward: W = 8 (one 16-byte load of 8 bf16; c % 8 == 0, 16-byte aligned) or 1.
// Sums in fp32, rounds once.
template <int W>
__global__ void embedding_forward_bf16_kernel(std::uint16_t* __restrict__ out,
                                              const std::int32_t* __restrict__ tokens,
                                              const std::int32_t* __restrict__ positions,
                                              const std::uint16_t* __restrict__ wte,
                                              const std::uint16_t* __restrict__ wpe, std::int64_t n,
                                              std::int64_t c, std::int64_t vocab_first,
                                              std::int64_t vocab_rows) {
  const std::int64_t items_per_row = c / W;
  const std::int64_t total = n * items_per_row;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const std::int64_t i = idx / items_per_row;
    const std::int64_t j = (idx - i * items_per_row) * W;
    const std::int64_t row = shard_row(tokens[i], vocab_first, vocab_rows);
    const std::uint16_t* te = row >= 0 ? wte + row * c + j : nullptr;
    const std::uint16_t* pe = wpe ? wpe + static_cast<std::int64_t>(positions[i]) * c + j : nullptr;
    std::uint16_t* o = out + i * c + j;
    if constexpr (W == 8) {
      const uint4 zero = make_uint4(0u, 0u, 0u, 0u);  // +0.0 in every half
      const uint4 a4 = te ? *reinterpret_cast<const uint4*>(te) : zero;
      const uint4 b4 = pe ? *reinterpret_cast<const uint4*>(pe) : zero;
      const std::uint32_t a[4] = {a4.x, a4.y, a4.z, a4.w}, b[4] = {b4.x, b4.y, b4.z, b4.w};
      std::uint32_t r[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float lo = bf16_bits_to_float(a[k] & 0xffffu) + bf16_bits_to_float(b[k] & 0xffffu);
        const float hi = bf16_bits_to_float(a[k] >> 16) + bf16_bits_to_float(b[k] >> 16);
        r[k] = float_to_bf16_bits(lo) | (float_to_bf16_bits(hi) << 16);
      }
      *reinterpret_cast<uint4*>(o) = make_uint4(r[0], r[1], r[2], r[3]);
    } else {
      const float sum = (te ? bf16_bits_to_float(*te) : 0.0f) + (pe ? bf16_bits_to_float(*pe) : 0.0f);
      *o = static_cast<std::uint16_t>(float_to_bf16_bits(sum));
    }
  }
}

// Sort input for the dwte pass: keys[i] = shard row of token i (vocab_rows outside), order[i] = i.
__global__ void token_keys_kernel(std::uint32_t* __restrict__ keys, std::int32_t* __restrict__ order,
                                  const std::int32_t* __restrict__ tokens, std::int64_t n,
                                  std::int64_t vocab_first, std::int64_t vocab_rows) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    keys[i] = token_sort_key(tokens[i], vocab_first, vocab_rows);
    order[i] = static_cast<std::int32_t>(i);
  }
}

// Sort input for the dwpe pass: keys[i] = positions[i], order[i] = i.
__global__ void position_keys_kernel(std::uint32_t* __restrict__ keys, std::int32_t* __restrict__ order,
                                     const std::int32_t* __restrict__ positions, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    keys[i] = static_cast<std::uint32_t>(positions[i]);
    order[i] = static_cast<std::int32_t>(i);
  }
}

__device__ __forceinline__ float load_grad(const float* p) { return *p; }
__device__ __forceinline__ float load_grad(const std::uint16_t* p) { return bf16_bits_to_float(*p); }

// grid (n, channel chunks): block x looks at sorted entry x; if it starts a run of equal keys
// (and the key is not skip_key) it adds dout[order[e]] for every e of the run, in run order (=
// token order: the sort is stable), to row `key` of dw over its chunk of channels. Blocks of
// entries inside a run return at once. No shared memory, no barriers.
template <class T>
__global__ void accumulate_sorted_kernel(float* __restrict__ dw, const T* __restrict__ dout,
                                         const std::uint32_t* __restrict__ keys,
                                         const std::int32_t* __restrict__ order, std::int64_t n,
                                         std::int64_t c, std::uint32_t skip_key) {
  const std::int64_t first = blockIdx.x;
  const std::uint32_t key = keys[first];
  if (key == skip_key || (first > 0 && keys[first - 1] == key)) return;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= c) return;
  std::int64_t last = first + 1;
  while (last < n && keys[last] == key) ++last;
  float* dst = dw + static_cast<std::int64_t>(key) * c + j;
  float acc = *dst;
#pragma unroll 8
  for (std::int64_t e = first; e < last; ++e) acc += load_grad(dout + static_cast<std::int64_t>(order[e]) * c + j);
  *dst = acc;
}

std::size_t align256(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

template <class T>
void embedding_backward_impl(float* dwte, float* dwpe, const T* dout, const std::int32_t* tokens,
                             const std::int32_t* positions, std::int64_t n, std::int64_t c,
                             std::int64_t vocab_first, std::int64_t vocab_rows) {
  const bool wte_pass = dwte != nullptr && vocab_rows > 0;
  const bool wpe_pass = dwpe != nullptr;
  if (n <= 0 || c <= 0 || (!wte_pass && !wpe_pass)) return;
  KILN_CHECK(n <= INT32_MAX, "embedding_backward on CUDA takes at most 2^31 - 1 tokens per call, got ",
             n, "; split the batch");
  KILN_CHECK(vocab_rows < (std::int64_t{1} << 32), "embedding_backward on CUDA takes a vocabulary shard of fewer "
             "than 2^32 rows, got ", vocab_rows);
  KILN_CHECK(accumulate_chunks(c) <= embedding_tiling::kMaxGridY, "embedding_backward on CUDA: ", c,
             " channels is more than it supports");
  const int num = static_cast<int>(n);
  const int token_bits = wte_pass ? sort_key_bits(static_cast<std::uint64_t>(vocab_rows)) : 0;

  // Scratch: CUB's temp storage, then keys and token indices before and after the sort. One set
  // serves both passes (stream order: the second pass starts after the first finished).
  std::size_t temp_bytes = 0;
  if (wte_pass) {
    std::size_t bytes = 0;
    KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const std::uint32_t*>(nullptr),
                                                    static_cast<std::uint32_t*>(nullptr),
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr), num, 0, token_bits,
                                                    stream()));
    temp_bytes = std::max(temp_bytes, bytes);
  }
  if (wpe_pass) {
    std::size_t bytes = 0;
    KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const std::uint32_t*>(nullptr),
                                                    static_cast<std::uint32_t*>(nullptr),
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr), num, 0, 32, stream()));
    temp_bytes = std::max(temp_bytes, bytes);
  }
  const std::size_t array_bytes = align256(static_cast<std::size_t>(n) * 4);
  Workspace workspace(align256(temp_bytes) + 4 * array_bytes);
  char* base = workspace.as<char>();
  void* temp = base;
  auto* keys_in = reinterpret_cast<std::uint32_t*>(base + align256(temp_bytes));
  auto* keys_out = reinterpret_cast<std::uint32_t*>(base + align256(temp_bytes) + array_bytes);
  auto* order_in = reinterpret_cast<std::int32_t*>(base + align256(temp_bytes) + 2 * array_bytes);
  auto* order_out = reinterpret_cast<std::int32_t*>(base + align256(temp_bytes) + 3 * array_bytes);

  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(accumulate_chunks(c)));
  const dim3 block(static_cast<unsigned>(accumulate_threads(c)));
  if (wte_pass) {
    KILN_LAUNCH(grid_for(n), kThreads, 0, token_keys_kernel)(keys_in, order_in, tokens, n, vocab_first, vocab_rows);
    KILN_CUDA_LAUNCH_CHECK();
    std::size_t bytes = temp_bytes;
    KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys_in, keys_out, order_in, order_out, num, 0,
                                                    token_bits, stream()));
    KILN_LAUNCH(grid, block, 0, accumulate_sorted_kernel<T>)(dwte, dout, keys_out, order_out, n, c,
                                                             static_cast<std::uint32_t>(vocab_rows));
    KILN_CUDA_LAUNCH_CHECK();
  }
  if (wpe_pass) {
    KILN_LAUNCH(grid_for(n), kThreads, 0, position_keys_kernel)(keys_in, order_in, positions, n);
    KILN_CUDA_LAUNCH_CHECK();
    std::size_t bytes = temp_bytes;
    KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys_in, keys_out, order_in, order_out, num, 0, 32,
                                                    stream()));
    KILN_LAUNCH(grid, block, 0, accumulate_sorted_kernel<T>)(dwpe, dout, keys_out, order_out, n, c, kNoPositionKey);
    KILN_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace

void embedding_forward(float* out, const std::int32_t* tokens, const std::int32_t* positions,
                       const float* wte, const float* wpe, std::int64_t n, std::int64_t c,
                       std::int64_t vocab_first, std::int64_t vocab_rows) {
  if (n <= 0 || c <= 0) return;
  if (c % 4 == 0 && aligned(out, 16) && aligned(wte, 16) && aligned(wpe, 16)) {
    KILN_LAUNCH(grid_for(n * (c / 4)), kThreads, 0, embedding_forward_kernel<4>)(
        out, tokens, positions, wte, wpe, n, c, vocab_first, vocab_rows);
  } else {
    KILN_LAUNCH(grid_for(n * c), kThreads, 0, embedding_forward_kernel<1>)(out, tokens, positions, wte, wpe, n, c,
                                                                           vocab_first, vocab_rows);
  }
  KILN_CUDA_LAUNCH_CHECK();
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const std::int32_t* tokens,
                        const std::int32_t* positions, std::int64_t n, std::int64_t c,
                        std::int64_t vocab_first, std::int64_t vocab_rows) {
  embedding_backward_impl(dwte, dwpe, dout, tokens, positions, n, c, vocab_first, vocab_rows);
}

void embedding_forward_bf16(bf16* out, const std::int32_t* tokens, const std::int32_t* positions,
                            const bf16* wte, const bf16* wpe, std::int64_t n, std::int64_t c,
                            std::int64_t vocab_first, std::int64_t vocab_rows) {
  if (n <= 0 || c <= 0) return;
  auto* o = reinterpret_cast<std::uint16_t*>(out);
  const auto* te = reinterpret_cast<const std::uint16_t*>(wte);
  const auto* pe = reinterpret_cast<const std::uint16_t*>(wpe);
  if (c % 8 == 0 && aligned(o, 16) && aligned(te, 16) && aligned(pe, 16)) {
    KILN_LAUNCH(grid_for(n * (c / 8)), kThreads, 0, embedding_forward_bf16_kernel<8>)(
        o, tokens, positions, te, pe, n, c, vocab_first, vocab_rows);
  } else {
    KILN_LAUNCH(grid_for(n * c), kThreads, 0, embedding_forward_bf16_kernel<1>)(o, tokens, positions, te, pe, n,
                                                                                c, vocab_first, vocab_rows);
  }
  KILN_CUDA_LAUNCH_CHECK();
}

void embedding_backward_bf16(float* dwte, float* dwpe, const bf16* dout, const std::int32_t* tokens,
                             const std::int32_t* positions, std::int64_t n, std::int64_t c,
                             std::int64_t vocab_first, std::int64_t vocab_rows) {
  embedding_backward_impl(dwte, dwpe, reinterpret_cast<const std::uint16_t*>(dout), tokens, positions, n, c,
                          vocab_first, vocab_rows);
}

}  // namespace kiln::cuda
