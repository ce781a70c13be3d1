// CUDA LayerNorm: forward (plain and fused with the Pre-LN residual add) and backward, fp32 and
// bf16 activations, fp32 statistics and parameters.
//
// Rows are split as plan_layernorm (kernels/layernorm.h) says: a group of threads (one warp or
// several) per row, several groups per block for short rows, each thread holding up to 16
// channels of its row in registers, loaded with 128-bit accesses when the tensors allow. So a
// row is read from memory once: two-pass statistics (mean, then the centred variance) come from
// registers, and the backward recomputes x-hat from the saved mean/rstd. Rows too long for
// registers take a slower path that re-reads the row (from L2).
//
// dgamma/dbeta are deterministic: each backward block sums its rows into registers, its groups
// combine in shared memory in group order, the block writes one fp32 partial row to a
// Workspace, and param_grad_kernel adds the partials up in a fixed order. No float atomics.
#include <algorithm>
#include <climits>
#include <type_traits>

#include "kernels/cuda/runtime.h"
#include "kernels/cuda/vector_io.cuh"
#include "kernels/elementwise.h"
#include "kernels/layernorm.h"

namespace kiln::cuda {
namespace {

using detail::aligned16;
using detail::load;
using detail::round_to;
using detail::store;

constexpr float kEps = 1e-5f;
constexpr int kForwardMaxGroup = 1024;  // forward kernels' __launch_bounds__
constexpr int kForwardBlock = 256;
constexpr int kBackwardMaxGroup = 512;  // backward kernels' __launch_bounds__ (room for registers)
// Backward threads hold about 120 registers: 256-thread blocks let two blocks share an SM, so
// one block's loads overlap the other's reductions.
constexpr int kBackwardBlock = 256;
constexpr std::int64_t kMaxGrid = std::int64_t{1} << 30;  // grid-stride loops beyond

// Sum over the `group` threads (a multiple of 32 dividing blockDim.x) that share a row; every
// thread of the group gets it. group is block-uniform and every thread of the block must call
// this (it synchronises the block when group > 32). scratch holds 32 floats. Fixed order.
__device__ __forceinline__ float group_sum(float v, float* scratch, int group) {
  v = warp_sum(v);
  if (group == 32) return v;
  const int warp = threadIdx.x / 32;
  __syncthreads();  // earlier readers of scratch are done
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = group / 32, first = warp - warp % warps;
  float sum = 0.0f;
  for (int w = 0; w < warps; ++w) sum += scratch[first + w];
  return sum;
}

// group_sum of two values at once (one pair of barriers). scratch holds 64 floats.
__device__ __forceinline__ void group_sum2(float& a, float& b, float* scratch, int group) {
  a = warp_sum(a);
  b = warp_sum(b);
  if (group == 32) return;
  const int warp = threadIdx.x / 32;
  __syncthreads();
  if (threadIdx.x % 32 == 0) {
    scratch[2 * warp] = a;
    scratch[2 * warp + 1] = b;
  }
  __syncthreads();
  const int warps = group / 32, first = warp - warp % warps;
  a = b = 0.0f;
  for (int w = first; w < first + warps; ++w) {
    a += scratch[2 * w];
    b += scratch[2 * w + 1];
  }
}

template <class T>
__device__ __forceinline__ float load1(const T* p) {
  float v[1];
  load(p, v);
  return v[0];
}
template <class T>
__device__ __forceinline__ void store1(T* p, float x) {
  const float v[1] = {x};
  store(p, v);
}

// ---- Forward ---------------------------------------------------------------------------------

// out = LayerNorm(x) per row, x = inp or, with kResidual, residual = round_to<T>(inp + delta)
// (stored, and the statistics taken from the stored value). T is float or __nv_bfloat16; each
// thread holds K accesses of V channels of its row (plan_layernorm). blockDim.x = group * rows
// per block. residual may alias inp (each element is loaded and stored by one thread).
template <class T, int V, int K, bool kResidual>
__global__ void __launch_bounds__(kForwardMaxGroup)
    forward_kernel(T* residual, T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                   const T* inp, const T* __restrict__ delta, const float* __restrict__ gamma,
                   const float* __restrict__ beta, std::int64_t rows, int c, int group) {
  __shared__ float scratch[32];
  const int lane = threadIdx.x % group, slot = threadIdx.x / group;
  const int rows_per_block = blockDim.x / group, accesses = c / V;
  const float count = static_cast<float>(c);
  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * rows_per_block; first < rows;
       first += static_cast<std::int64_t>(gridDim.x) * rows_per_block) {
    const std::int64_t row = first + slot;
    const bool active = row < rows;  // uniform over the group (and its warps)
    const std::int64_t base = row * c;
    float x[K][V], d[K][V];
    // Every load of the row first, so that they are all in flight together.
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int a = lane + k * group;
      if (active && a < accesses) {
        load(inp + base + a * V, x[k]);
        if constexpr (kResidual) load(delta + base + a * V, d[k]);
      }
    }
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int a = lane + k * group;
      if (active && a < accesses) {
        if constexpr (kResidual) {
#pragma unroll
          for (int t = 0; t < V; ++t) x[k][t] = round_to<T>(x[k][t] + d[k][t]);
          store(residual + base + a * V, x[k]);
        }
#pragma unroll
        for (int t = 0; t < V; ++t) sum += x[k][t];
      }
    }
    const float m = group_sum(sum, scratch, group) / count;
    float var = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int a = lane + k * group;
      if (active && a < accesses) {
#pragma unroll
        for (int t = 0; t < V; ++t) {
          const float e = x[k][t] - m;
          var += e * e;
        }
      }
    }
    const float s = 1.0f / sqrtf(group_sum(var, scratch, group) / count + kEps);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int a = lane + k * group;
      if (active && a < accesses) {
        float g[V], b[V];
        load(gamma + a * V, g);
        load(beta + a * V, b);
#pragma unroll
        for (int t = 0; t < V; ++t) x[k][t] = (x[k][t] - m) * s * g[t] + b[t];
        store(out + base + a * V, x[k]);
      }
    }
    if (active && lane == 0) {
      mean[row] = m;
      rstd[row] = s;
    }
  }
}

// forward_kernel for rows too long for registers: one row per block at a time, scalar accesses,
// the row read three times (the second and third reads mostly from L2).
template <class T, bool kResidual>
__global__ void __launch_bounds__(kForwardMaxGroup)
    forward_long_kernel(T* residual, T* __restrict__ out, float* __restrict__ mean,
                        float* __restrict__ rstd, const T* inp, const T* __restrict__ delta,
                        const float* __restrict__ gamma, const float* __restrict__ beta,
                        std::int64_t rows, int c) {
  __shared__ float scratch[32];
  const float count = static_cast<float>(c);
  const T* x = kResidual ? residual : inp;  // what the statistics read after the first pass
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const std::int64_t base = row * c;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
      float v = load1(inp + base + i);
      if constexpr (kResidual) {
        v = round_to<T>(v + load1(delta + base + i));
        store1(residual + base + i, v);  // re-read below by this same thread
      }
      sum += v;
    }
    const float m = group_sum(sum, scratch, blockDim.x) / count;
    float var = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
      const float e = load1(x + base + i) - m;
      var += e * e;
    }
    const float s = 1.0f / sqrtf(group_sum(var, scratch, blockDim.x) / count + kEps);
    for (int i = threadIdx.x; i < c; i += blockDim.x)
      store1(out + base + i, (load1(x + base + i) - m) * s * gamma[i] + beta[i]);
    if (threadIdx.x == 0) {
      mean[row] = m;
      rstd[row] = s;
    }
  }
}

// ---- Backward --------------------------------------------------------------------------------

// dinp += LayerNorm backward per row; this block's sums of dout * x-hat (dgamma) and dout
// (dbeta) over its rows go to partials[blockIdx.x] = {dgamma[c], dbeta[c]}. Dynamic shared
// memory: 64 floats, plus 2 * c floats when several rows share the block.
template <class T, int V, int K>
__global__ void __launch_bounds__(kBackwardMaxGroup)
    backward_kernel(T* dinp, float* __restrict__ partials, const T* dout, const T* __restrict__ inp,
                    const float* __restrict__ gamma, const float* __restrict__ mean,
                    const float* __restrict__ rstd, std::int64_t rows, int c, int group) {
  KILN_DYNAMIC_SHARED(float, smem);
  float* scratch = smem;
  const int lane = threadIdx.x % group, slot = threadIdx.x / group;
  const int rows_per_block = blockDim.x / group, accesses = c / V;
  const float count = static_cast<float>(c);
  float dg[K][V], db[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int t = 0; t < V; ++t) dg[k][t] = db[k][t] = 0.0f;

  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * rows_per_block; first < rows;
       first += static_cast<std::int64_t>(gridDim.x) * rows_per_block) {
    const std::int64_t row = first + slot;
    const bool active = row < rows;
    const std::int64_t base = row * c;
    const float m = active ? mean[row] : 0.0f, s = active ? rstd[row] : 0.0f;
    float xhat[K][V], dnorm[K][V], acc[K][V];  // x -> x-hat, dout -> dout * gamma, old dinp
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int a = lane + k * group;
      if (active && a < accesses) {
        load(inp + base + a * V, xhat[k]);
        load(dout + base + a * V, dnorm[k]);
        load(dinp + base + a * V, acc[k]);
      }
    }
    float sum_dnorm = 0.0f, sum_dnorm_xhat = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int a = lane + k * group;
      if (active && a < accesses) {
        float g[V];
        load(gamma + a * V, g);
#pragma unroll
        for (int t = 0; t < V; ++t) {
          const float xh = (xhat[k][t] - m) * s, dy = dnorm[k][t], dn = dy * g[t];
          dg[k][t] += dy * xh;
          db[k][t] += dy;
          sum_dnorm += dn;
          sum_dnorm_xhat += dn * xh;
          xhat[k][t] = xh;
          dnorm[k][t] = dn;
        }
      }
    }
    group_sum2(sum_dnorm, sum_dnorm_xhat, scratch, group);
    const float mean_dnorm = sum_dnorm / count, mean_dnorm_xhat = sum_dnorm_xhat / count;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int a = lane + k * group;
      if (active && a < accesses) {
#pragma unroll
        for (int t = 0; t < V; ++t)
          acc[k][t] += (dnorm[k][t] - mean_dnorm - xhat[k][t] * mean_dnorm_xhat) * s;
        store(dinp + base + a * V, acc[k]);
      }
    }
  }

  float* part = partials + static_cast<std::int64_t>(blockIdx.x) * 2 * c;
  if (rows_per_block == 1) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int a = lane + k * group;
      if (a < accesses) {
        store(part + a * V, dg[k]);
        store(part + c + a * V, db[k]);
      }
    }
    return;
  }
  // Several groups: add their sums into shared memory one group after another (fixed order).
  float* sums = smem + 64;  // {dgamma[c], dbeta[c]}
  for (int g = 0; g < rows_per_block; ++g) {
    if (slot == g) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int a = lane + k * group;
        if (a < accesses) {
#pragma unroll
          for (int t = 0; t < V; ++t) {
            const int i = a * V + t;
            sums[i] = (g == 0 ? 0.0f : sums[i]) + dg[k][t];
            sums[c + i] = (g == 0 ? 0.0f : sums[c + i]) + db[k][t];
          }
        }
      }
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < 2 * c; i += blockDim.x) part[i] = sums[i];
}

// backward_kernel for rows too long for registers: one row per block at a time, scalar
// accesses, two reads of the row; each thread keeps its columns' partial sums in its block's
// partial row in global memory (only it touches them).
template <class T>
__global__ void __launch_bounds__(kBackwardMaxGroup)
    backward_long_kernel(T* dinp, float* __restrict__ partials, const T* dout, const T* __restrict__ inp,
                         const float* __restrict__ gamma, const float* __restrict__ mean,
                         const float* __restrict__ rstd, std::int64_t rows, int c) {
  __shared__ float scratch[64];
  const float count = static_cast<float>(c);
  float* part = partials + static_cast<std::int64_t>(blockIdx.x) * 2 * c;
  for (int i = threadIdx.x; i < c; i += blockDim.x) part[i] = part[c + i] = 0.0f;
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const std::int64_t base = row * c;
    const float m = mean[row], s = rstd[row];
    float sum_dnorm = 0.0f, sum_dnorm_xhat = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
      const float xh = (load1(inp + base + i) - m) * s, dn = load1(dout + base + i) * gamma[i];
      sum_dnorm += dn;
      sum_dnorm_xhat += dn * xh;
    }
    group_sum2(sum_dnorm, sum_dnorm_xhat, scratch, blockDim.x);
    const float mean_dnorm = sum_dnorm / count, mean_dnorm_xhat = sum_dnorm_xhat / count;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
      const float xh = (load1(inp + base + i) - m) * s, dy = load1(dout + base + i), dn = dy * gamma[i];
      const float old = load1(dinp + base + i);
      store1(dinp + base + i, old + (dn - mean_dnorm - xh * mean_dnorm_xhat) * s);
      part[i] += dy * xh;
      part[c + i] += dy;
    }
  }
}

// dgamma[j] += sum over blocks b of partials[b][0][j], dbeta[j] likewise with [b][1][j].
// blockDim (32, 32): x picks the column within a 32-column slab (blockIdx.x), y strides over the
// partial rows; the 32 strided sums are then added in y order. blockIdx.y: 0 dgamma, 1 dbeta.
__global__ void __launch_bounds__(1024)
    param_grad_kernel(float* __restrict__ dgamma, float* __restrict__ dbeta,
                      const float* __restrict__ partials, int blocks, int c) {
  __shared__ float tile[32][33];
  const int j = blockIdx.x * 32 + threadIdx.x;
  const int which = blockIdx.y;
  float sum = 0.0f;
  if (j < c) {
    const float* column = partials + static_cast<std::int64_t>(which) * c + j;
#pragma unroll 8
    for (int b = threadIdx.y; b < blocks; b += 32) sum += column[static_cast<std::int64_t>(b) * 2 * c];
  }
  tile[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < c) {
    float total = 0.0f;
    for (int y = 0; y < 32; ++y) total += tile[y][threadIdx.x];
    (which == 0 ? dgamma : dbeta)[j] += total;
  }
}

// ---- Launchers -------------------------------------------------------------------------------

int sm_count() {
  static const int count = [] {
    int dev = 0, n = 0;
    KILN_CUDA_CHECK(cudaGetDevice(&dev));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return count;
}

// Calls f(integral_constant<V>, integral_constant<K>) for the plan's (vec, units), K >= 1.
template <int V, int K, class F>
void dispatch_units(int units, F& f) {
  if constexpr (K <= layernorm_max_units(V)) {
    if (units == K) return f(std::integral_constant<int, V>{}, std::integral_constant<int, K>{});
    return dispatch_units<V, 2 * K>(units, f);
  } else {
    KILN_ASSERT(false && "LayerNorm plan with an unsupported units count");
  }
}

template <class T, class F>
void dispatch_plan(const LayerNormPlan& plan, F&& f) {
  constexpr int kVec = 16 / sizeof(T);
  if (plan.vec == kVec) return dispatch_units<kVec, 1>(plan.units, f);
  KILN_ASSERT(plan.vec == 1);
  dispatch_units<1, 1>(plan.units, f);
}

void check_channels(std::int64_t c) {
  KILN_CHECK(c <= INT_MAX / 2, "LayerNorm over c=", c, " channels: at most ", INT_MAX / 2,
             " are supported");
}

template <class T, bool kResidual>
void forward(T* residual, T* out, float* mean, float* rstd, const T* inp, const T* delta,
             const float* gamma, const float* beta, std::int64_t rows, std::int64_t c) {
  if (rows <= 0 || c <= 0) return;
  check_channels(c);
  constexpr int kVec = 16 / sizeof(T);
  const bool vector = c % kVec == 0 && aligned16(out) && aligned16(inp) && aligned16(gamma) &&
                      aligned16(beta) && (!kResidual || (aligned16(residual) && aligned16(delta)));
  const LayerNormPlan plan = plan_layernorm(c, vector ? kVec : 1, kForwardMaxGroup, kForwardBlock);
  const int ci = static_cast<int>(c);
  if (plan.units == 0) {
    const auto blocks = static_cast<unsigned>(std::min(rows, kMaxGrid));
    KILN_LAUNCH(blocks, plan.group, 0, forward_long_kernel<T, kResidual>)(
        residual, out, mean, rstd, inp, delta, gamma, beta, rows, ci);
    KILN_CUDA_LAUNCH_CHECK();
    return;
  }
  const int threads = plan.group * plan.rows_per_block;
  const auto blocks = static_cast<unsigned>(std::min(ceil_div(rows, plan.rows_per_block), kMaxGrid));
  dispatch_plan<T>(plan, [&](auto v, auto k) {
    constexpr int V = decltype(v)::value, K = decltype(k)::value;
    KILN_LAUNCH(blocks, threads, 0, forward_kernel<T, V, K, kResidual>)(
        residual, out, mean, rstd, inp, delta, gamma, beta, rows, ci, plan.group);
    KILN_CUDA_LAUNCH_CHECK();
  });
}

// Grid of a persistent backward kernel: as many blocks as fit on the GPU at once (fewer partial
// rows to reduce), at most one per row set.
template <class Kernel>
std::int64_t resident_blocks(Kernel kernel, int threads, std::size_t smem, std::int64_t row_sets) {
  int per_sm = 0;
  KILN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return std::min<std::int64_t>(row_sets, std::max(per_sm, 1) * static_cast<std::int64_t>(sm_count()));
}

template <class T>
void backward(T* dinp, float* dgamma, float* dbeta, const T* dout, const T* inp, const float* gamma,
              const float* mean, const float* rstd, std::int64_t rows, std::int64_t c) {
  if (rows <= 0 || c <= 0) return;
  check_channels(c);
  constexpr int kVec = 16 / sizeof(T);
  const bool vector = c % kVec == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) &&
                      aligned16(gamma);
  const LayerNormPlan plan = plan_layernorm(c, vector ? kVec : 1, kBackwardMaxGroup, kBackwardBlock);
  const int ci = static_cast<int>(c);
  std::int64_t blocks = 0;
  // The partials live until param_grad_kernel has read them: both are queued before ws is freed.
  auto reduce = [&](const Workspace& ws) {
    const dim3 grid(static_cast<unsigned>(ceil_div(c, 32)), 2);
    KILN_LAUNCH(grid, dim3(32, 32), 0, param_grad_kernel)(dgamma, dbeta, ws.as<float>(),
                                                          static_cast<int>(blocks), ci);
    KILN_CUDA_LAUNCH_CHECK();
  };
  if (plan.units == 0) {
    blocks = resident_blocks(backward_long_kernel<T>, plan.group, 0, rows);
    Workspace ws(static_cast<std::size_t>(blocks) * 2 * c * sizeof(float));
    KILN_LAUNCH(static_cast<unsigned>(blocks), plan.group, 0, backward_long_kernel<T>)(
        dinp, ws.as<float>(), dout, inp, gamma, mean, rstd, rows, ci);
    KILN_CUDA_LAUNCH_CHECK();
    reduce(ws);
    return;
  }
  const int threads = plan.group * plan.rows_per_block;
  const std::size_t smem = (64 + (plan.rows_per_block > 1 ? 2 * c : 0)) * sizeof(float);
  // plan_layernorm puts several rows in a block only for group <= kBackwardBlock / 2 = 128, so
  // c <= 128 * 16 and smem <= 16 KiB.
  KILN_ASSERT(smem <= 48 * 1024);
  dispatch_plan<T>(plan, [&](auto v, auto k) {
    constexpr int V = decltype(v)::value, K = decltype(k)::value;
    blocks = resident_blocks(backward_kernel<T, V, K>, threads, smem, ceil_div(rows, plan.rows_per_block));
    Workspace ws(static_cast<std::size_t>(blocks) * 2 * c * sizeof(float));
    KILN_LAUNCH(static_cast<unsigned>(blocks), threads, smem, backward_kernel<T, V, K>)(
        dinp, ws.as<float>(), dout, inp, gamma, mean, rstd, rows, ci, plan.group);
    KILN_CUDA_LAUNCH_CHECK();
    reduce(ws);
  });
}

__nv_bfloat16* nv(bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
const __nv_bfloat16* nv(const bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* gamma,
                       const float* beta, std::int64_t rows, std::int64_t c) {
  forward<float, false>(nullptr, out, mean, rstd, inp, nullptr, gamma, beta, rows, c);
}

void residual_layernorm_forward(float* residual, float* out, float* mean, float* rstd,
                                const float* inp, const float* delta, const float* gamma,
                                const float* beta, std::int64_t rows, std::int64_t c) {
  forward<float, true>(residual, out, mean, rstd, inp, delta, gamma, beta, rows, c);
}

void layernorm_backward(float* dinp, float* dgamma, float* dbeta, const float* dout,
                        const float* inp, const float* gamma, const float* mean,
                        const float* rstd, std::int64_t rows, std::int64_t c) {
  backward<float>(dinp, dgamma, dbeta, dout, inp, gamma, mean, rstd, rows, c);
}

void layernorm_forward_bf16(bf16* out, float* mean, float* rstd, const bf16* inp,
                            const float* gamma, const float* beta, std::int64_t rows,
                            std::int64_t c) {
  forward<__nv_bfloat16, false>(nullptr, nv(out), mean, rstd, nv(inp), nullptr, gamma, beta, rows, c);
}

void residual_layernorm_forward_bf16(bf16* residual, bf16* out, float* mean, float* rstd,
                                     const bf16* inp, const bf16* delta, const float* gamma,
                                     const float* beta, std::int64_t rows, std::int64_t c) {
  forward<__nv_bfloat16, true>(nv(residual), nv(out), mean, rstd, nv(inp), nv(delta), gamma, beta,
                               rows, c);
}

void layernorm_backward_bf16(bf16* dinp, float* dgamma, float* dbeta, const bf16* dout,
                             const bf16* inp, const float* gamma, const float* mean,
                             const float* rstd, std::int64_t rows, std::int64_t c) {
  backward<__nv_bfloat16>(nv(dinp), dgamma, dbeta, nv(dout), nv(inp), gamma, mean, rstd, rows, c);
}

}  // namespace kiln::cuda
