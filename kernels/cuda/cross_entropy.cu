// CUDA fused softmax cross-entropy (kernels/cross_entropy.h), fp32 and bf16 logits, and the
// three vocabulary-parallel passes. One block per row; each thread keeps a running maximum and
// a sum of exponentials rescaled to it (online softmax), the block merges them in a fixed tree,
// and a second pass over the row writes the gradient in place. Probabilities are never stored.
#include <cfloat>
#include <cstdint>
#include <cstring>

#include "kernels/cross_entropy.h"
#include "kernels/cuda/runtime.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 512;


// ---------------------------------------------------------------------------------------------
// Row traversal: thread t visits columns t, t + blockDim.x, ... (as 16-byte vectors of 4 fp32 or
// 8 bf16 when the row is 16-byte aligned, then the tail that does not fill a vector as scalars).

template <class T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T values[kSize];
};

__device__ __forceinline__ bool aligned16(const void* ptr) {
  return (reinterpret_cast<std::uintptr_t>(ptr) & 15u) == 0;
}

// f(j, x) for every column j < count owned by this thread, x its value as fp32.
template <class T, class F>
__device__ __forceinline__ void for_each_column(const T* row, std::int64_t count, F&& f) {
  constexpr int kVec = Pack<T>::kSize;
  std::int64_t scalar_from = 0;
  if (aligned16(row)) {
    const std::int64_t vectors = count / kVec;
    for (std::int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
      const int4 raw = reinterpret_cast<const int4*>(row)[v];  // one 16-byte load
      Pack<T> pack;
      memcpy(&pack, &raw, sizeof(pack));
#pragma unroll
      for (int u = 0; u < kVec; ++u) f(v * kVec + u, as_float(pack.values[u]));
    }
    scalar_from = vectors * kVec;
  }
  for (std::int64_t j = scalar_from + threadIdx.x; j < count; j += blockDim.x) f(j, as_float(row[j]));
}

// Replaces every column j < count owned by this thread by f(j, x), x its old value.
template <class T, class F>
__device__ __forceinline__ void transform_columns(T* row, std::int64_t count, F&& f) {
  constexpr int kVec = Pack<T>::kSize;
  std::int64_t scalar_from = 0;
  if (aligned16(row)) {
    const std::int64_t vectors = count / kVec;
    for (std::int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
      int4 raw = reinterpret_cast<const int4*>(row)[v];
      Pack<T> pack;
      memcpy(&pack, &raw, sizeof(pack));
#pragma unroll
      for (int u = 0; u < kVec; ++u) pack.values[u] = from_float<T>(f(v * kVec + u, as_float(pack.values[u])));
      memcpy(&raw, &pack, sizeof(pack));
      reinterpret_cast<int4*>(row)[v] = raw;
    }
    scalar_from = vectors * kVec;
  }
  for (std::int64_t j = scalar_from + threadIdx.x; j < count; j += blockDim.x)
    row[j] = from_float<T>(f(j, as_float(row[j])));
}

// Zeroes the row's first count columns (no reads).
template <class T>
__device__ __forceinline__ void zero_columns(T* row, std::int64_t count) {
  constexpr int kVec = Pack<T>::kSize;
  std::int64_t scalar_from = 0;
  if (aligned16(row)) {
    const std::int64_t vectors = count / kVec;
    for (std::int64_t v = threadIdx.x; v < vectors; v += blockDim.x) reinterpret_cast<int4*>(row)[v] = make_int4(0, 0, 0, 0);
    scalar_from = vectors * kVec;
  }
  for (std::int64_t j = scalar_from + threadIdx.x; j < count; j += blockDim.x) row[j] = from_float<T>(0.0f);
}

// ---------------------------------------------------------------------------------------------
// Online softmax state: the maximum seen and the sum of exp(x - max) over the values seen.
// Starting from -FLT_MAX (not -inf) keeps exp(max - x) and exp(x - max) free of inf - inf.

struct MaxSum {
  float max, sum;
};

__device__ __forceinline__ void online_add(MaxSum& s, float x) {
  if (x > s.max) {
    s.sum = s.sum * expf(s.max - x) + 1.0f;
    s.max = x;
  } else {
    s.sum += expf(x - s.max);
  }
}

// Commutative to the bit (explicitly rounded products and sum, never contracted to an FMA), so
// both lanes of a butterfly exchange compute the same value and every lane ends with the same.
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  return {m, __fadd_rn(__fmul_rn(a.sum, expf(a.max - m)), __fmul_rn(b.sum, expf(b.max - m)))};
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, s.max, offset), __shfl_xor_sync(0xffffffffu, s.sum, offset)};
    s = merge(s, other);
  }
  return s;
}

// Merge over the block (blockDim.x a multiple of 32); every thread gets the result. Called once
// per kernel, so its shared memory needs no barrier before the writes.
__device__ __forceinline__ MaxSum block_merge(MaxSum s) {
  __shared__ float maxes[32], sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  s = warp_merge(s);
  if (lane == 0) {
    maxes[warp] = s.max;
    sums[warp] = s.sum;
  }
  __syncthreads();
  s = lane < warps ? MaxSum{maxes[lane], sums[lane]} : MaxSum{-FLT_MAX, 0.0f};
  return warp_merge(s);
}

// ---------------------------------------------------------------------------------------------
// Kernels: blockIdx.x is the row.

template <class T>
__global__ void __launch_bounds__(kThreads)
softmax_cross_entropy_kernel(float* losses, T* logits, const std::int32_t* targets,
                             const std::uint8_t* mask, std::int64_t vocab,
                             std::int64_t padded_vocab, float dlogits_scale, const float* weights,
                             float inv_temperature) {
  const std::int64_t i = blockIdx.x;
  T* row = logits + i * padded_vocab;
  const bool backward = dlogits_scale != 0.0f;
  const float w = weights != nullptr ? weights[i] : 1.0f, it = inv_temperature;
  const float scale = dlogits_scale * w * it;
  if ((mask != nullptr && mask[i] == 0) || w == 0.0f) {  // uniform over the block
    if (threadIdx.x == 0) losses[i] = 0.0f;
    if (backward) zero_columns(row, padded_vocab);
    return;
  }
  const std::int64_t target = targets[i];
  const bool valid = target >= 0 && target < vocab;
  // Read before block_merge's barrier, so before any thread overwrites the row.
  float target_logit = NAN;
  if (threadIdx.x == 0 && valid) target_logit = __fmul_rn(as_float(row[target]), it);
  MaxSum s{-FLT_MAX, 0.0f};
  for_each_column(row, vocab, [&](std::int64_t, float x) { online_add(s, __fmul_rn(x, it)); });
  s = block_merge(s);
  if (threadIdx.x == 0) losses[i] = ((logf(s.sum) + s.max) - target_logit) * w;
  if (!backward) return;
  const float inv_sum = 1.0f / s.sum;
  transform_columns(row, padded_vocab, [&](std::int64_t j, float x) {
    if (j >= vocab) return 0.0f;
    float g = expf(__fmul_rn(x, it) - s.max) * inv_sum * scale;
    if (j == target) g -= scale;
    return g;
  });
}

__global__ void __launch_bounds__(kThreads)
local_max_kernel(float* row_max, const float* logits, std::int64_t real_cols, std::int64_t padded_cols,
                 float inv_temperature) {
  __shared__ float shared[32];
  const float* row = logits + static_cast<std::int64_t>(blockIdx.x) * padded_cols;
  float m = -INFINITY;
  for_each_column(row, real_cols, [&](std::int64_t, float x) { m = fmaxf(m, __fmul_rn(x, inv_temperature)); });
  m = block_max(m, shared);
  if (threadIdx.x == 0) row_max[blockIdx.x] = m;
}

__global__ void __launch_bounds__(kThreads)
local_sums_kernel(float* row_sum, float* target_logit, const float* logits, const float* row_max,
                  const std::int32_t* targets, std::int64_t real_cols, std::int64_t padded_cols,
                  std::int64_t vocab_first, float inv_temperature) {
  __shared__ float shared[32];
  const std::int64_t i = blockIdx.x;
  const float* row = logits + i * padded_cols;
  const float m = row_max[i], it = inv_temperature;
  float sum = 0.0f;
  for_each_column(row, real_cols, [&](std::int64_t, float x) { sum += expf(__fmul_rn(x, it) - m); });
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) {
    row_sum[i] = sum;
    const std::int64_t t = static_cast<std::int64_t>(targets[i]) - vocab_first;
    target_logit[i] = t >= 0 && t < real_cols ? __fmul_rn(row[t], it) : 0.0f;
  }
}

__global__ void __launch_bounds__(kThreads)
local_grad_kernel(float* logits, const float* row_max, const float* row_sum,
                  const std::int32_t* targets, const std::uint8_t* mask, std::int64_t real_cols,
                  std::int64_t padded_cols, std::int64_t vocab_first, float dlogits_scale,
                  const float* weights, float inv_temperature) {
  const std::int64_t i = blockIdx.x;
  float* row = logits + i * padded_cols;
  const float w = weights != nullptr ? weights[i] : 1.0f, it = inv_temperature;
  if ((mask != nullptr && mask[i] == 0) || w == 0.0f) {
    zero_columns(row, padded_cols);
    return;
  }
  const float g0 = dlogits_scale * w * it, m = row_max[i], scale = g0 / row_sum[i];
  const std::int64_t t = static_cast<std::int64_t>(targets[i]) - vocab_first;
  transform_columns(row, padded_cols, [&](std::int64_t j, float x) {
    if (j >= real_cols) return 0.0f;
    float g = expf(__fmul_rn(x, it) - m) * scale;
    if (j == t) g -= g0;
    return g;
  });
}

unsigned row_blocks(std::int64_t n) {
  KILN_CHECK(n < (std::int64_t{1} << 31), "cross-entropy over ", n, " rows: at most 2^31 - 1 rows per call");
  return static_cast<unsigned>(n);
}

}  // namespace

void softmax_cross_entropy(float* losses, float* logits, const std::int32_t* targets,
                           const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                           std::int64_t padded_vocab, float dlogits_scale, const float* weights,
                           float inv_temperature) {
  if (n == 0) return;
  KILN_LAUNCH(row_blocks(n), kThreads, 0, softmax_cross_entropy_kernel<float>)(
      losses, logits, targets, mask, vocab, padded_vocab, dlogits_scale, weights, inv_temperature);
  KILN_CUDA_LAUNCH_CHECK();
}

void softmax_cross_entropy_bf16(float* losses, bf16* logits, const std::int32_t* targets,
                                const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                                std::int64_t padded_vocab, float dlogits_scale, const float* weights,
                                float inv_temperature) {
  if (n == 0) return;
  KILN_LAUNCH(row_blocks(n), kThreads, 0, softmax_cross_entropy_kernel<__nv_bfloat16>)(
      losses, reinterpret_cast<__nv_bfloat16*>(logits), targets, mask, vocab, padded_vocab, dlogits_scale, weights,
      inv_temperature);
  KILN_CUDA_LAUNCH_CHECK();
}

void cross_entropy_local_max(float* row_max, const float* logits, std::int64_t n,
                             std::int64_t real_cols, std::int64_t padded_cols, float inv_temperature) {
  if (n == 0) return;
  KILN_LAUNCH(row_blocks(n), kThreads, 0, local_max_kernel)(row_max, logits, real_cols, padded_cols, inv_temperature);
  KILN_CUDA_LAUNCH_CHECK();
}

void cross_entropy_local_sums(float* row_sum, float* target_logit, const float* logits,
                              const float* row_max, const std::int32_t* targets, std::int64_t n,
                              std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float inv_temperature) {
  if (n == 0) return;
  KILN_LAUNCH(row_blocks(n), kThreads, 0, local_sums_kernel)(row_sum, target_logit, logits, row_max, targets,
                                                             real_cols, padded_cols, vocab_first, inv_temperature);
  KILN_CUDA_LAUNCH_CHECK();
}

void cross_entropy_local_grad(float* logits, const float* row_max, const float* row_sum,
                              const std::int32_t* targets, const std::uint8_t* mask,
                              std::int64_t n, std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float dlogits_scale, const float* weights,
                              float inv_temperature) {
  if (n == 0) return;
  KILN_LAUNCH(row_blocks(n), kThreads, 0, local_grad_kernel)(logits, row_max, row_sum, targets, mask, real_cols,
                                                             padded_cols, vocab_first, dlogits_scale, weights,
                                                             inv_temperature);
  KILN_CUDA_LAUNCH_CHECK();
}

}  // namespace kiln::cuda
