// CUDA twins of kernels/cpu/optimizer.cpp: AdamW over every segment in one launch (optionally
// writing the bf16 copy of the updated weights and reading the clip factor from device memory),
// the deterministic sum of squares behind the gradient norm, and the clip factor computed on the
// device. Work split: kernels/optimizer_tiling.h.
#include <climits>
#include <cmath>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "kernels/device.h"
#include "kernels/optimizer.h"
#include "kernels/optimizer_tiling.h"

namespace kiln::cuda {
namespace {

using optimizer_tiling::AdamWQuadSegment;
using optimizer_tiling::kAdamWQuadsPerBlock;
using optimizer_tiling::kAdamWQuadsPerThread;
using optimizer_tiling::kAdamWThreads;
using optimizer_tiling::kSumSquaresThreads;

bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

// kiln::to_bf16 (kernels/bf16.h) on the device, bit for bit: nearest even, NaN stays NaN.
__device__ __forceinline__ std::uint32_t float_to_bf16_bits(float x) {
  std::uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}

// Step constants, the bias corrections computed on the host exactly as the CPU twin does.
struct AdamWConstants {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float grad_scale;  // used when no device scale is given
  float step_size;   // lr / (1 - beta1^step)
  float bc2_sqrt;    // sqrt(1 - beta2^step)
};

// One element, the CPU twin's expression order.
__device__ __forceinline__ void adamw_element(float& p, float g_raw, float& m, float& v, const AdamWConstants& k,
                                              float scale, float decay) {
  const float g = g_raw * scale;
  const float mi = k.beta1 * m + (1.0f - k.beta1) * g;
  const float vi = k.beta2 * v + (1.0f - k.beta2) * g * g;
  m = mi;
  v = vi;
  p = p * decay - k.step_size * mi / (sqrtf(vi) / k.bc2_sqrt + k.eps);
}

// Block b takes virtual quads [b * kAdamWQuadsPerBlock, ...), thread t every kAdamWThreads-th of
// them (coalesced). kVector: whole quads by float4 (the host checked 16-byte alignment of param,
// grad, m, v and 8-byte alignment of param_bf16); quads cut by a segment edge go element-wise.
template <bool kVector>
__global__ void __launch_bounds__(kAdamWThreads)
    adamw_kernel(float* __restrict__ param, std::uint16_t* __restrict__ param_bf16, const float* __restrict__ grad,
                 float* __restrict__ m, float* __restrict__ v, const AdamWQuadSegment* __restrict__ table, int count,
                 std::int64_t total_quads, AdamWConstants k, const float* __restrict__ scale_device) {
  std::int64_t u = static_cast<std::int64_t>(blockIdx.x) * kAdamWQuadsPerBlock + threadIdx.x;
  if (u >= total_quads) return;
  const float scale = scale_device ? *scale_device : k.grad_scale;
  int s = optimizer_tiling::find_quad_segment(table, count, u);
  AdamWQuadSegment seg = table[s];
  std::int64_t next_first = s + 1 < count ? table[s + 1].first_virtual : INT64_MAX;
  for (int r = 0; r < kAdamWQuadsPerThread; ++r, u += kAdamWThreads) {
    if (u >= total_quads) return;
    while (u >= next_first) {  // u only grows: step to the segment holding it
      seg = table[++s];
      next_first = s + 1 < count ? table[s + 1].first_virtual : INT64_MAX;
    }
    const float decay = 1.0f - k.lr * seg.weight_decay;
    const std::int64_t e0 = (seg.first_quad + (u - seg.first_virtual)) * 4;
    if (kVector && e0 >= seg.begin && e0 + 4 <= seg.end) {
      float4 p = *reinterpret_cast<const float4*>(param + e0);
      const float4 g = *reinterpret_cast<const float4*>(grad + e0);
      float4 mm = *reinterpret_cast<const float4*>(m + e0);
      float4 vv = *reinterpret_cast<const float4*>(v + e0);
      adamw_element(p.x, g.x, mm.x, vv.x, k, scale, decay);
      adamw_element(p.y, g.y, mm.y, vv.y, k, scale, decay);
      adamw_element(p.z, g.z, mm.z, vv.z, k, scale, decay);
      adamw_element(p.w, g.w, mm.w, vv.w, k, scale, decay);
      *reinterpret_cast<float4*>(param + e0) = p;
      *reinterpret_cast<float4*>(m + e0) = mm;
      *reinterpret_cast<float4*>(v + e0) = vv;
      if (param_bf16) {
        const uint2 packed = make_uint2(float_to_bf16_bits(p.x) | (float_to_bf16_bits(p.y) << 16),
                                        float_to_bf16_bits(p.z) | (float_to_bf16_bits(p.w) << 16));
        *reinterpret_cast<uint2*>(param_bf16 + e0) = packed;
      }
    } else {
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const std::int64_t e = e0 + t;
        if (e < seg.begin || e >= seg.end) continue;
        float p = param[e], mm = m[e], vv = v[e];
        adamw_element(p, grad[e], mm, vv, k, scale, decay);
        param[e] = p;
        m[e] = mm;
        v[e] = vv;
        if (param_bf16) param_bf16[e] = static_cast<std::uint16_t>(float_to_bf16_bits(p));
      }
    }
  }
}

void adamw_launch(float* param, std::uint16_t* param_bf16, const float* grad, float* m, float* v,
                  const AdamWSegment* segments, int num_segments, const AdamWStep& s,
                  const float* scale_device) {
  KILN_CHECK(num_segments >= 0, "adamw_update: ", num_segments, " segments");
  for (int i = 0; i < num_segments; ++i)
    KILN_CHECK(segments[i].offset >= 0 && segments[i].size >= 0, "adamw_update: segment ", i, " has offset ",
               segments[i].offset, " and size ", segments[i].size);
  std::vector<AdamWQuadSegment> table;
  const std::int64_t total_quads = optimizer_tiling::build_adamw_table(segments, num_segments, table);
  if (total_quads == 0) return;
  const std::int64_t blocks = optimizer_tiling::adamw_blocks(total_quads);
  KILN_CHECK(blocks <= INT_MAX && table.size() <= static_cast<std::size_t>(INT_MAX),
             "adamw_update on CUDA: too many parameters (", total_quads * 4, ")");

  // As kiln::cpu::adamw_update, so both twins start from the same constants.
  const float bc1 = 1.0f - std::pow(s.beta1, static_cast<float>(s.step));
  const float bc2_sqrt = std::sqrt(1.0f - std::pow(s.beta2, static_cast<float>(s.step)));
  const AdamWConstants k{s.lr, s.beta1, s.beta2, s.eps, s.grad_scale, s.lr / bc1, bc2_sqrt};

  // The table goes through a scratch block: pageable host memory is staged by the copy itself,
  // so `table` may die when this returns.
  const std::size_t table_bytes = table.size() * sizeof(AdamWQuadSegment);
  Workspace workspace(table_bytes);
  auto* device_table = workspace.as<AdamWQuadSegment>();
  device::copy_to_device(device_table, table.data(), table_bytes);

  const int count = static_cast<int>(table.size());
  const bool vector = aligned(param, 16) && aligned(grad, 16) && aligned(m, 16) && aligned(v, 16) &&
                      aligned(param_bf16, 8);
  if (vector)
    KILN_LAUNCH(static_cast<unsigned>(blocks), kAdamWThreads, 0, adamw_kernel<true>)(
        param, param_bf16, grad, m, v, device_table, count, total_quads, k, scale_device);
  else
    KILN_LAUNCH(static_cast<unsigned>(blocks), kAdamWThreads, 0, adamw_kernel<false>)(
        param, param_bf16, grad, m, v, device_table, count, total_quads, k, scale_device);
  KILN_CUDA_LAUNCH_CHECK();
}

__device__ __forceinline__ double add_square(double acc, float x) {
  const double d = x;
  return fma(d, d, acc);  // explicit, so the vector and scalar paths give the same bits
}

// Sum over the block (blockDim.x == kSumSquaresThreads); `shared` holds 32 doubles. Fixed tree.
__device__ __forceinline__ double block_sum_double(double v, double* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < kSumSquaresThreads / 32 ? shared[lane] : 0.0;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// partials[b] = sum of x[i]^2 over the quads (4 consecutive elements) q = t, t + T, ... of thread
// t (T = all threads), each quad's elements in order, then the block's fixed tree. The same
// order whether the quads are read as float4 (x 16-byte aligned) or element by element.
template <bool kVector>
__global__ void __launch_bounds__(kSumSquaresThreads)
    sum_squares_partial_kernel(double* __restrict__ partials, const float* __restrict__ x, std::int64_t n) {
  __shared__ double shared[32];
  const std::int64_t quads = (n + 3) / 4;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kSumSquaresThreads;
  double acc = 0.0;
#pragma unroll 4
  for (std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * kSumSquaresThreads + threadIdx.x; q < quads;
       q += stride) {
    const std::int64_t e0 = q * 4;
    if (kVector && e0 + 4 <= n) {
      const float4 f = *reinterpret_cast<const float4*>(x + e0);
      acc = add_square(acc, f.x);
      acc = add_square(acc, f.y);
      acc = add_square(acc, f.z);
      acc = add_square(acc, f.w);
    } else {
      for (int t = 0; t < 4; ++t)
        if (e0 + t < n) acc = add_square(acc, x[e0 + t]);
    }
  }
  acc = block_sum_double(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// *out = sum of partials[0..count), one block, fixed order.
__global__ void __launch_bounds__(kSumSquaresThreads)
    sum_squares_final_kernel(double* __restrict__ out, const double* __restrict__ partials, int count) {
  __shared__ double shared[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += kSumSquaresThreads) acc += partials[i];
  acc = block_sum_double(acc, shared);
  if (threadIdx.x == 0) *out = acc;
}

// Queues both kernels; partials holds sum_squares_blocks(n) doubles. n > 0.
void sum_squares_queue(double* out_device, double* partials, const float* x, std::int64_t n) {
  const int blocks = optimizer_tiling::sum_squares_blocks(n);
  if (aligned(x, 16))
    KILN_LAUNCH(blocks, kSumSquaresThreads, 0, sum_squares_partial_kernel<true>)(partials, x, n);
  else
    KILN_LAUNCH(blocks, kSumSquaresThreads, 0, sum_squares_partial_kernel<false>)(partials, x, n);
  KILN_CUDA_LAUNCH_CHECK();
  KILN_LAUNCH(1, kSumSquaresThreads, 0, sum_squares_final_kernel)(out_device, partials, blocks);
  KILN_CUDA_LAUNCH_CHECK();
}

// The clip factor of kiln::AdamW::step (core/optim/adamw.cpp), same types and operations.
__global__ void clip_scale_kernel(float* scale_out, const double* sum_squares_device, float max_norm) {
  const double norm = sqrt(*sum_squares_device);
  float scale = 1.0f;
  if (max_norm > 0.0f && norm > max_norm) scale = static_cast<float>(max_norm / (norm + 1e-6));
  *scale_out = scale;
}

}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v, const AdamWSegment* segments,
                  int num_segments, const AdamWStep& step) {
  adamw_launch(param, nullptr, grad, m, v, segments, num_segments, step, nullptr);
}

void adamw_update_bf16_copy(float* param, bf16* param_bf16, const float* grad, float* m, float* v,
                            const AdamWSegment* segments, int num_segments, const AdamWStep& step) {
  KILN_CHECK(param_bf16 != nullptr, "adamw_update_bf16_copy needs the bf16 copy; call adamw_update without one");
  adamw_launch(param, reinterpret_cast<std::uint16_t*>(param_bf16), grad, m, v, segments, num_segments, step,
               nullptr);
}

void adamw_update_scaled(float* param, bf16* param_bf16, const float* grad, float* m, float* v,
                         const AdamWSegment* segments, int num_segments, const AdamWStep& step,
                         const float* grad_scale_device) {
  KILN_CHECK(grad_scale_device != nullptr, "adamw_update_scaled needs a device gradient scale");
  adamw_launch(param, reinterpret_cast<std::uint16_t*>(param_bf16), grad, m, v, segments, num_segments, step,
               grad_scale_device);
}

double sum_squares(const float* x, std::int64_t n) {
  if (n <= 0) return 0.0;
  Workspace workspace((1 + optimizer_tiling::sum_squares_blocks(n)) * sizeof(double));
  double* result = workspace.as<double>();
  sum_squares_queue(result, result + 1, x, n);
  double host = 0.0;
  device::copy_to_host(&host, result, sizeof(double));
  return host;
}

void sum_squares_async(double* out_device, const float* x, std::int64_t n) {
  if (n <= 0) {
    device::fill_zero(out_device, sizeof(double));
    return;
  }
  Workspace workspace(optimizer_tiling::sum_squares_blocks(n) * sizeof(double));
  sum_squares_queue(out_device, workspace.as<double>(), x, n);
}

void clip_scale_from_sum_squares(float* scale_out, const double* sum_squares_device, float max_norm) {
  KILN_LAUNCH(1, 1, 0, clip_scale_kernel)(scale_out, sum_squares_device, max_norm);
  KILN_CUDA_LAUNCH_CHECK();
}

}  // namespace kiln::cuda
