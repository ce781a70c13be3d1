// Device-side building blocks of the elementwise, GELU and LayerNorm kernels: 128-bit loads
// and stores, bf16 rounding that matches kiln::to_bf16, and a generic elementwise kernel.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/bf16.h"

#include "kernels/cuda/runtime.h"

// ---- Device-side building blocks (nvcc only) ----------------------------------------------
namespace kiln::cuda::detail {

// The bits of kiln::to_bf16(x): round to nearest even (the hardware conversion) and, for NaN,
// the upper half with the quiet bit set (the hardware would give the canonical 0x7fff).
__device__ __forceinline__ unsigned short bf16_bits(float x) {
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40u);
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
__device__ __forceinline__ float bf16_to_float(unsigned short bits) {
  return __uint_as_float(static_cast<unsigned>(bits) << 16);
}

// x as the storage type T (float or __nv_bfloat16) holds it: identity for float, the bf16
// rounding otherwise.
template <class T>
__device__ __forceinline__ float round_to(float x) {
  if constexpr (sizeof(T) == 2) return bf16_to_float(bf16_bits(x));
  else return x;
}

// v[0..V) = p[0..V) as float. V * sizeof(T) a multiple of 16 means 128-bit loads and p must be
// 16-byte aligned; any other V loads element by element.
template <int V>
__device__ __forceinline__ void load(const float* p, float (&v)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V / 4; ++i) {
      const float4 q = reinterpret_cast<const float4*>(p)[i];
      v[4 * i] = q.x;
      v[4 * i + 1] = q.y;
      v[4 * i + 2] = q.z;
      v[4 * i + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = p[i];
  }
}

template <int V>
__device__ __forceinline__ void load(const __nv_bfloat16* p, float (&v)[V]) {
  if constexpr (V % 8 == 0) {
#pragma unroll
    for (int i = 0; i < V / 8; ++i) {
      const uint4 q = reinterpret_cast<const uint4*>(p)[i];
      const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[8 * i + 2 * j] = __uint_as_float(w[j] << 16);
        v[8 * i + 2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
      }
    }
  } else {
    const unsigned short* bits = reinterpret_cast<const unsigned short*>(p);
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = bf16_to_float(bits[i]);
  }
}

template <int V>
__device__ __forceinline__ void store(float* p, const float (&v)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V / 4; ++i)
      reinterpret_cast<float4*>(p)[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = v[i];
  }
}

// Rounds each value to bf16 (bf16_bits) on the way out.
template <int V>
__device__ __forceinline__ void store(__nv_bfloat16* p, const float (&v)[V]) {
  if constexpr (V % 8 == 0) {
#pragma unroll
    for (int i = 0; i < V / 8; ++i) {
      unsigned w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        w[j] = static_cast<unsigned>(bf16_bits(v[8 * i + 2 * j])) |
               (static_cast<unsigned>(bf16_bits(v[8 * i + 2 * j + 1])) << 16);
      reinterpret_cast<uint4*>(p)[i] = make_uint4(w[0], w[1], w[2], w[3]);
    }
  } else {
    unsigned short* bits = reinterpret_cast<unsigned short*>(p);
#pragma unroll
    for (int i = 0; i < V; ++i) bits[i] = bf16_bits(v[i]);
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// va[i] = op(va[i], vb[i]) (op(va[i], 0) for one input).
template <int kInputs, int V, class Op>
__device__ __forceinline__ void apply(const Op& op, float (&va)[V], const float (&vb)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) va[i] = op(va[i], kInputs == 2 ? vb[i] : 0.0f);
}

// out[i] = op(a[i], b[i]) over n elements (b unused when kInputs == 1), arithmetic in fp32.
// Each thread handles up to two V-wide units (both loaded before either is computed, for more
// bytes in flight); a grid-stride loop covers any n. With V > 1 every pointer must be 16-byte
// aligned and the n % V tail elements are done one by one by block 0. out may alias a or b:
// each element is read and written by the same thread.
template <int V, int kInputs, class TOut, class TA, class TB, class Op>
__global__ void __launch_bounds__(256)
    map_kernel(TOut* out, const TA* a, const TB* b, std::int64_t n, Op op) {
  const std::int64_t units = n / V;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t u = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < units;
       u += 2 * stride) {
    const std::int64_t u2 = u + stride;
    const bool second = u2 < units;
    float va[2][V], vb[2][V] = {};
    load(a + u * V, va[0]);
    if constexpr (kInputs == 2) load(b + u * V, vb[0]);
    if (second) {
      load(a + u2 * V, va[1]);
      if constexpr (kInputs == 2) load(b + u2 * V, vb[1]);
    }
    apply<kInputs>(op, va[0], vb[0]);
    store(out + u * V, va[0]);
    if (second) {
      apply<kInputs>(op, va[1], vb[1]);
      store(out + u2 * V, va[1]);
    }
  }
  if constexpr (V > 1) {
    const std::int64_t tail = n - units * V;  // < V <= blockDim.x
    if (blockIdx.x == 0 && threadIdx.x < tail) {
      const std::int64_t i = units * V + threadIdx.x;
      float x[1], y[1] = {0.0f};
      load(a + i, x);
      if constexpr (kInputs == 2) load(b + i, y);
      apply<kInputs>(op, x, y);
      store(out + i, x);
    }
  }
}

// Queues map_kernel on stream(): 128-bit units (16 bytes of the narrowest type) when every
// pointer is 16-byte aligned, scalar otherwise. n == 0 launches nothing.
template <int kInputs, class TOut, class TA, class TB, class Op>
void launch_map(TOut* out, const TA* a, const TB* b, std::int64_t n, Op op) {
  if (n <= 0) return;
  constexpr int kThreads = 256;  // map_kernel's __launch_bounds__
  constexpr std::size_t kNarrowAB = sizeof(TA) < sizeof(TB) ? sizeof(TA) : sizeof(TB);
  constexpr std::size_t kNarrowest = sizeof(TOut) < kNarrowAB ? sizeof(TOut) : kNarrowAB;
  constexpr int kVec = static_cast<int>(16 / kNarrowest);
  const bool vector = aligned16(out) && aligned16(a) && (kInputs == 1 || aligned16(b));
  const std::int64_t units = vector ? n / kVec : n;
  std::int64_t blocks = ceil_div(units > 0 ? units : 1, 2 * kThreads);
  if (blocks > (std::int64_t{1} << 20)) blocks = std::int64_t{1} << 20;  // grid-stride beyond
  const auto grid = static_cast<unsigned>(blocks);
  if (vector)
    KILN_LAUNCH(grid, kThreads, 0, map_kernel<kVec, kInputs, TOut, TA, TB, Op>)(out, a, b, n, op);
  else
    KILN_LAUNCH(grid, kThreads, 0, map_kernel<1, kInputs, TOut, TA, TB, Op>)(out, a, b, n, op);
  KILN_CUDA_LAUNCH_CHECK();
}

}  // namespace kiln::cuda::detail
