// CPU kernels of the LLaMA family (kernels/llama.h): RMSNorm, rotary embeddings, SwiGLU.
#include "kernels/llama.h"

#include <omp.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/fast_math.h"
#include "kernels/elementwise.h"

namespace kiln::cpu {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* gamma, std::int64_t rows,
                     std::int64_t c, float eps) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* x = inp + r * c;
    float* y = out + r * c;
    float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
    for (std::int64_t i = 0; i < c; ++i) squares += x[i] * x[i];
    const float s = 1.0f / std::sqrt(squares / c + eps);
#pragma omp simd
    for (std::int64_t i = 0; i < c; ++i) y[i] = x[i] * s * gamma[i];
    rstd[r] = s;
  }
}

void rmsnorm_backward(float* dinp, float* dgamma, const float* dout, const float* inp, const float* gamma,
                      const float* rstd, std::int64_t rows, std::int64_t c) {
  const int threads = omp_get_max_threads();
  std::vector<float> partial(static_cast<std::size_t>(threads) * c, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    float* pg = partial.data() + static_cast<std::size_t>(omp_get_thread_num()) * c;
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* x = inp + r * c;
      const float* dy = dout + r * c;
      float* dx = dinp + r * c;
      const float s = rstd[r];
      // y = x s g, s = (mean x^2 + eps)^-1/2: dx = s (dy g - x s^2 mean(dy g x)).
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (std::int64_t i = 0; i < c; ++i) dot += dy[i] * gamma[i] * x[i];
      const float k = dot / c * s * s;
#pragma omp simd
      for (std::int64_t i = 0; i < c; ++i) {
        dx[i] += (dy[i] * gamma[i] - x[i] * k) * s;
        pg[i] += dy[i] * x[i] * s;
      }
    }
  }
  for (int t = 0; t < threads; ++t) {
    const float* pg = partial.data() + static_cast<std::size_t>(t) * c;
    for (std::int64_t i = 0; i < c; ++i) dgamma[i] += pg[i];
  }
}

void residual_rmsnorm_forward(float* residual, float* out, float* rstd, const float* inp, const float* delta,
                              const float* gamma, std::int64_t rows, std::int64_t c, float eps) {
  add(residual, inp, delta, rows * c);
  rmsnorm_forward(out, rstd, residual, gamma, rows, c, eps);
}

namespace {
// Rotates the q and k heads of every row by sign * angle.
void rope(float* qkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
          std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd, float sign) {
  const std::int64_t half = hd / 2, width = (q_heads + 2 * kv_heads) * hd, rotated = q_heads + kv_heads;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* c = cos + static_cast<std::int64_t>(positions[r]) * half;
    const float* s = sin + static_cast<std::int64_t>(positions[r]) * half;
    for (std::int64_t h = 0; h < rotated; ++h) {
      float* x = qkv + r * width + h * hd;
#pragma omp simd
      for (std::int64_t i = 0; i < half; ++i) {
        const float a = x[i], b = x[i + half], sn = sign * s[i];
        x[i] = a * c[i] - b * sn;
        x[i + half] = b * c[i] + a * sn;
      }
    }
  }
}
}  // namespace

void rope_forward(float* qkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                  std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd) {
  rope(qkv, cos, sin, positions, rows, q_heads, kv_heads, hd, 1.0f);
}

void rope_backward(float* dqkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                   std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd) {
  rope(dqkv, cos, sin, positions, rows, q_heads, kv_heads, hd, -1.0f);
}

void swiglu_forward(float* out, const float* inp, std::int64_t rows, std::int64_t f) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* g = inp + r * 2 * f;
    const float* u = g + f;
    float* y = out + r * f;
#pragma omp simd
    for (std::int64_t i = 0; i < f; ++i) y[i] = g[i] / (1.0f + fast_exp(-g[i])) * u[i];
  }
}

void swiglu_backward(float* dinp, const float* inp, const float* dout, std::int64_t rows, std::int64_t f) {
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* g = inp + r * 2 * f;
    const float* u = g + f;
    const float* dy = dout + r * f;
    float* dg = dinp + r * 2 * f;
    float* du = dg + f;
#pragma omp simd
    for (std::int64_t i = 0; i < f; ++i) {
      const float sig = 1.0f / (1.0f + fast_exp(-g[i]));
      const float silu = g[i] * sig;
      dg[i] = dy[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
      du[i] = dy[i] * silu;
    }
  }
}

}  // namespace kiln::cpu

namespace kiln {

void rope_tables(float* cos, float* sin, std::int64_t positions, std::int64_t hd, float theta,
                 const RopeScaling& scaling) {
  const std::int64_t half = hd / 2;
  std::vector<float> inv_freq(half);
  for (std::int64_t i = 0; i < half; ++i)
    inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(hd));
  if (scaling.llama3) {
    const float pi = 3.14159265358979323846f;
    const float original = static_cast<float>(scaling.original_context);
    const float low_wavelen = original / scaling.low_freq_factor, high_wavelen = original / scaling.high_freq_factor;
    for (float& f : inv_freq) {
      const float wavelen = 2.0f * pi / f;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        f /= scaling.factor;
        continue;
      }
      const float s = (original / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor);
      f = (1.0f - s) * f / scaling.factor + s * f;
    }
  }
  for (std::int64_t p = 0; p < positions; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv_freq[i];
      cos[p * half + i] = std::cos(angle);
      sin[p * half + i] = std::sin(angle);
    }
}

}  // namespace kiln
