// CUDA twins of the LLaMA family's kernels (kernels/llama.h): RMSNorm (plain, fused with the
// residual add, backward), rotary embeddings and SwiGLU, each for fp32 and bf16 activations
// (fp32 arithmetic, fp32 gamma, rstd and parameter gradients, one rounding per bf16 store).
//
// A first, plain version: one 256-thread block per row for the norms (a block-wide sum of
// squares in a fixed tree), one thread per rotated pair or SwiGLU element. dgamma is
// deterministic: blocks of rows write fp32 partial sums per column to a Workspace, and a second
// kernel adds the partials in a fixed order (no float atomics).
#include <algorithm>

#include "kernels/cuda/runtime.h"
#include "kernels/llama.h"

namespace kiln::cuda {
namespace {

constexpr int kNormThreads = 256;
constexpr int kMapThreads = 256;
constexpr int kGradRowsPerChunk = 64;  // rows each partial-dgamma block sums

__nv_bfloat16* nv(bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
const __nv_bfloat16* nv(const bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

unsigned grid_of(std::int64_t n, int threads) {
  const std::int64_t blocks = ceil_div(n, threads);
  KILN_CHECK(blocks < (std::int64_t{1} << 31), "LLaMA kernel over ", n, " elements: too large for one launch");
  return static_cast<unsigned>(blocks);
}

// One block per row. With delta: residual = round(inp + delta) first, and the norm reads the
// rounded residual (the value stored, which the backward reads).
template <class T>
__global__ void __launch_bounds__(kNormThreads)
rmsnorm_forward_kernel(T* out, float* rstd, T* residual, const T* inp, const T* delta, const float* gamma,
                       std::int64_t c, float eps) {
  __shared__ float shared[32];
  const std::int64_t r = blockIdx.x;
  const T* x = inp + r * c;
  float squares = 0.0f;
  for (std::int64_t i = threadIdx.x; i < c; i += blockDim.x) {
    float v = as_float(x[i]);
    if (delta != nullptr) {
      const T sum = from_float<T>(v + as_float(delta[r * c + i]));
      residual[r * c + i] = sum;
      v = as_float(sum);
    }
    squares += v * v;
  }
  squares = block_sum(squares, shared);
  const float s = 1.0f / sqrtf(squares / static_cast<float>(c) + eps);
  const T* read = delta != nullptr ? residual + r * c : x;
  for (std::int64_t i = threadIdx.x; i < c; i += blockDim.x)
    out[r * c + i] = from_float<T>(as_float(read[i]) * s * gamma[i]);
  if (threadIdx.x == 0) rstd[r] = s;
}

// dinp += rstd (dy g - x rstd^2 mean(dy g x)), one block per row.
template <class T>
__global__ void __launch_bounds__(kNormThreads)
rmsnorm_backward_kernel(T* dinp, const T* dout, const T* inp, const float* gamma, const float* rstd, std::int64_t c) {
  __shared__ float shared[32];
  const std::int64_t r = blockIdx.x;
  const T* x = inp + r * c;
  const T* dy = dout + r * c;
  float dot = 0.0f;
  for (std::int64_t i = threadIdx.x; i < c; i += blockDim.x) dot += as_float(dy[i]) * gamma[i] * as_float(x[i]);
  dot = block_sum(dot, shared);
  const float s = rstd[r], k = dot / static_cast<float>(c) * s * s;
  for (std::int64_t i = threadIdx.x; i < c; i += blockDim.x) {
    const float g = (as_float(dy[i]) * gamma[i] - as_float(x[i]) * k) * s;
    dinp[r * c + i] = from_float<T>(as_float(dinp[r * c + i]) + g);
  }
}

// partial[chunk, j] = sum over the chunk's rows of dout * inp * rstd (column j).
template <class T>
__global__ void dgamma_partial_kernel(float* partial, const T* dout, const T* inp, const float* rstd, std::int64_t rows,
                                      std::int64_t c) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= c) return;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.y) * kGradRowsPerChunk;
  const std::int64_t last = std::min<std::int64_t>(first + kGradRowsPerChunk, rows);
  float sum = 0.0f;
  for (std::int64_t r = first; r < last; ++r) sum += as_float(dout[r * c + j]) * as_float(inp[r * c + j]) * rstd[r];
  partial[blockIdx.y * c + j] = sum;
}

__global__ void dgamma_reduce_kernel(float* dgamma, const float* partial, std::int64_t chunks, std::int64_t c) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= c) return;
  float sum = 0.0f;
  for (std::int64_t k = 0; k < chunks; ++k) sum += partial[k * c + j];
  dgamma[j] += sum;
}

// One thread per rotated pair: (row, head among the q and k heads, i < hd/2).
template <class T>
__global__ void rope_kernel(T* qkv, const float* cos, const float* sin, const std::int32_t* positions,
                            std::int64_t rows, std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd, float sign) {
  const std::int64_t half = hd / 2, rotated = q_heads + kv_heads;
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= rows * rotated * half) return;
  const std::int64_t i = t % half, h = t / half % rotated, r = t / (half * rotated);
  const std::int64_t p = positions[r];
  const float c = cos[p * half + i], s = sign * sin[p * half + i];
  T* x = qkv + r * (q_heads + 2 * kv_heads) * hd + h * hd;
  const float a = as_float(x[i]), b = as_float(x[i + half]);
  x[i] = from_float<T>(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
  x[i + half] = from_float<T>(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
}

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <class T>
__global__ void swiglu_forward_kernel(T* out, const T* inp, std::int64_t rows, std::int64_t f) {
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= rows * f) return;
  const std::int64_t r = t / f, i = t % f;
  const float g = as_float(inp[r * 2 * f + i]), u = as_float(inp[r * 2 * f + f + i]);
  out[t] = from_float<T>(g * sigmoid(g) * u);
}

template <class T>
__global__ void swiglu_backward_kernel(T* dinp, const T* inp, const T* dout, std::int64_t rows, std::int64_t f) {
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= rows * f) return;
  const std::int64_t r = t / f, i = t % f;
  const float g = as_float(inp[r * 2 * f + i]), u = as_float(inp[r * 2 * f + f + i]), dy = as_float(dout[t]);
  const float sig = sigmoid(g);
  dinp[r * 2 * f + i] = from_float<T>(dy * u * sig * (1.0f + g * (1.0f - sig)));
  dinp[r * 2 * f + f + i] = from_float<T>(dy * g * sig);
}

template <class T>
void rmsnorm_forward_any(T* out, float* rstd, T* residual, const T* inp, const T* delta, const float* gamma,
                         std::int64_t rows, std::int64_t c, float eps) {
  if (rows == 0 || c == 0) return;
  KILN_CHECK(rows < (std::int64_t{1} << 31), "RMSNorm over ", rows, " rows: at most 2^31 - 1 per call");
  KILN_LAUNCH(static_cast<unsigned>(rows), kNormThreads, 0, rmsnorm_forward_kernel<T>)(out, rstd, residual, inp, delta,
                                                                                      gamma, c, eps);
  KILN_CUDA_LAUNCH_CHECK();
}

template <class T>
void rmsnorm_backward_any(T* dinp, float* dgamma, const T* dout, const T* inp, const float* gamma, const float* rstd,
                          std::int64_t rows, std::int64_t c) {
  if (rows == 0 || c == 0) return;
  KILN_CHECK(rows < (std::int64_t{1} << 31), "RMSNorm over ", rows, " rows: at most 2^31 - 1 per call");
  KILN_LAUNCH(static_cast<unsigned>(rows), kNormThreads, 0, rmsnorm_backward_kernel<T>)(dinp, dout, inp, gamma, rstd, c);
  KILN_CUDA_LAUNCH_CHECK();
  const std::int64_t chunks = ceil_div(rows, kGradRowsPerChunk);
  Workspace partial(static_cast<std::size_t>(chunks * c) * sizeof(float));
  const dim3 grid(grid_of(c, kMapThreads), static_cast<unsigned>(chunks));
  KILN_LAUNCH(grid, kMapThreads, 0, dgamma_partial_kernel<T>)(partial.as<float>(), dout, inp, rstd, rows, c);
  KILN_CUDA_LAUNCH_CHECK();
  KILN_LAUNCH(grid_of(c, kMapThreads), kMapThreads, 0, dgamma_reduce_kernel)(dgamma, partial.as<float>(), chunks, c);
  KILN_CUDA_LAUNCH_CHECK();
}

template <class T>
void rope_any(T* qkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
              std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd, float sign) {
  const std::int64_t n = rows * (q_heads + kv_heads) * (hd / 2);
  if (n == 0) return;
  KILN_LAUNCH(grid_of(n, kMapThreads), kMapThreads, 0, rope_kernel<T>)(qkv, cos, sin, positions, rows, q_heads,
                                                                       kv_heads, hd, sign);
  KILN_CUDA_LAUNCH_CHECK();
}

template <class T>
void swiglu_forward_any(T* out, const T* inp, std::int64_t rows, std::int64_t f) {
  if (rows * f == 0) return;
  KILN_LAUNCH(grid_of(rows * f, kMapThreads), kMapThreads, 0, swiglu_forward_kernel<T>)(out, inp, rows, f);
  KILN_CUDA_LAUNCH_CHECK();
}

template <class T>
void swiglu_backward_any(T* dinp, const T* inp, const T* dout, std::int64_t rows, std::int64_t f) {
  if (rows * f == 0) return;
  KILN_LAUNCH(grid_of(rows * f, kMapThreads), kMapThreads, 0, swiglu_backward_kernel<T>)(dinp, inp, dout, rows, f);
  KILN_CUDA_LAUNCH_CHECK();
}

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* gamma, std::int64_t rows, std::int64_t c,
                     float eps) {
  rmsnorm_forward_any<float>(out, rstd, nullptr, inp, nullptr, gamma, rows, c, eps);
}
void rmsnorm_backward(float* dinp, float* dgamma, const float* dout, const float* inp, const float* gamma,
                      const float* rstd, std::int64_t rows, std::int64_t c) {
  rmsnorm_backward_any<float>(dinp, dgamma, dout, inp, gamma, rstd, rows, c);
}
void residual_rmsnorm_forward(float* residual, float* out, float* rstd, const float* inp, const float* delta,
                              const float* gamma, std::int64_t rows, std::int64_t c, float eps) {
  rmsnorm_forward_any<float>(out, rstd, residual, inp, delta, gamma, rows, c, eps);
}
void rope_forward(float* qkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                  std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd) {
  rope_any<float>(qkv, cos, sin, positions, rows, q_heads, kv_heads, hd, 1.0f);
}
void rope_backward(float* dqkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                   std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd) {
  rope_any<float>(dqkv, cos, sin, positions, rows, q_heads, kv_heads, hd, -1.0f);
}
void swiglu_forward(float* out, const float* inp, std::int64_t rows, std::int64_t f) {
  swiglu_forward_any<float>(out, inp, rows, f);
}
void swiglu_backward(float* dinp, const float* inp, const float* dout, std::int64_t rows, std::int64_t f) {
  swiglu_backward_any<float>(dinp, inp, dout, rows, f);
}

void rmsnorm_forward_bf16(bf16* out, float* rstd, const bf16* inp, const float* gamma, std::int64_t rows,
                          std::int64_t c, float eps) {
  rmsnorm_forward_any<__nv_bfloat16>(nv(out), rstd, nullptr, nv(inp), nullptr, gamma, rows, c, eps);
}
void rmsnorm_backward_bf16(bf16* dinp, float* dgamma, const bf16* dout, const bf16* inp, const float* gamma,
                           const float* rstd, std::int64_t rows, std::int64_t c) {
  rmsnorm_backward_any<__nv_bfloat16>(nv(dinp), dgamma, nv(dout), nv(inp), gamma, rstd, rows, c);
}
void residual_rmsnorm_forward_bf16(bf16* residual, bf16* out, float* rstd, const bf16* inp, const bf16* delta,
                                   const float* gamma, std::int64_t rows, std::int64_t c, float eps) {
  rmsnorm_forward_any<__nv_bfloat16>(nv(out), rstd, nv(residual), nv(inp), nv(delta), gamma, rows, c, eps);
}
void rope_forward_bf16(bf16* qkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                       std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd) {
  rope_any<__nv_bfloat16>(nv(qkv), cos, sin, positions, rows, q_heads, kv_heads, hd, 1.0f);
}
void rope_backward_bf16(bf16* dqkv, const float* cos, const float* sin, const std::int32_t* positions,
                        std::int64_t rows, std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd) {
  rope_any<__nv_bfloat16>(nv(dqkv), cos, sin, positions, rows, q_heads, kv_heads, hd, -1.0f);
}
void swiglu_forward_bf16(bf16* out, const bf16* inp, std::int64_t rows, std::int64_t f) {
  swiglu_forward_any<__nv_bfloat16>(nv(out), nv(inp), rows, f);
}
void swiglu_backward_bf16(bf16* dinp, const bf16* inp, const bf16* dout, std::int64_t rows, std::int64_t f) {
  swiglu_backward_any<__nv_bfloat16>(nv(dinp), nv(inp), nv(dout), rows, f);
}

}  // namespace kiln::cuda
