// CPU LayerNorm forward and backward, one row per iteration, threads over rows; the fused
// residual add + LayerNorm of a Pre-LN block.
#include "kernels/layernorm.h"

#include <omp.h>

#include <cmath>
#include <vector>

#include "kernels/elementwise.h"

namespace kiln::cpu {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* gamma,
                       const float* beta, std::int64_t rows, std::int64_t c) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * c;
    float* y = out + r * c;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t i = 0; i < c; ++i) sum += x[i];
    const float m = sum / c;
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (std::int64_t i = 0; i < c; ++i) var += (x[i] - m) * (x[i] - m);
    const float s = 1.0f / std::sqrt(var / c + 1e-5f);
#pragma omp simd
    for (std::int64_t i = 0; i < c; ++i) y[i] = (x[i] - m) * s * gamma[i] + beta[i];
    mean[r] = m;
    rstd[r] = s;
  }
}

void layernorm_backward(float* dinp, float* dgamma, float* dbeta, const float* dout,
                        const float* inp, const float* gamma, const float* mean,
                        const float* rstd, std::int64_t rows, std::int64_t c) {
  const int threads = omp_get_max_threads();
  // Per-thread partial sums of dgamma/dbeta over a static split of rows, added in thread order.
  std::vector<float> partial(static_cast<std::size_t>(threads) * 2 * c, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    float* pg = partial.data() + static_cast<std::size_t>(omp_get_thread_num()) * 2 * c;
    float* pb = pg + c;
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* x = inp + r * c;
      const float* dy = dout + r * c;
      float* dx = dinp + r * c;
      const float m = mean[r], s = rstd[r];
      float mean_dnorm = 0.0f, mean_dnorm_xhat = 0.0f;
#pragma omp simd reduction(+ : mean_dnorm, mean_dnorm_xhat)
      for (std::int64_t i = 0; i < c; ++i) {
        const float dnorm = dy[i] * gamma[i];
        mean_dnorm += dnorm;
        mean_dnorm_xhat += dnorm * (x[i] - m) * s;
      }
      mean_dnorm /= c;
      mean_dnorm_xhat /= c;
#pragma omp simd
      for (std::int64_t i = 0; i < c; ++i) {
        const float xhat = (x[i] - m) * s;
        const float dnorm = dy[i] * gamma[i];
        dx[i] += (dnorm - mean_dnorm - xhat * mean_dnorm_xhat) * s;
        pg[i] += dy[i] * xhat;
        pb[i] += dy[i];
      }
    }
  }
  for (int t = 0; t < threads; ++t) {
    const float* pg = partial.data() + static_cast<std::size_t>(t) * 2 * c;
    for (std::int64_t i = 0; i < c; ++i) {
      dgamma[i] += pg[i];
      dbeta[i] += pg[c + i];
    }
  }
}

// Two passes (add, then layernorm_forward) so that the result is the unfused sequence's bit for
// bit; the CUDA twin fuses them into one pass over memory.
void residual_layernorm_forward(float* residual, float* out, float* mean, float* rstd,
                                const float* inp, const float* delta, const float* gamma,
                                const float* beta, std::int64_t rows, std::int64_t c) {
  add(residual, inp, delta, rows * c);
  layernorm_forward(out, mean, rstd, residual, gamma, beta, rows, c);
}

}  // namespace kiln::cpu
