// CPU GELU (tanh form) forward and backward, vectorised through fast_exp.
#include "kernels/gelu.h"

#include "kernels/cpu/fast_math.h"

namespace kiln::cpu {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
// tanh(u) = 1 - 2 / (exp(2u) + 1): exact at both tails, vectorisable.
inline float fast_tanh(float u) { return 1.0f - 2.0f / (fast_exp(2.0f * u) + 1.0f); }
}  // namespace

void gelu_forward(float* out, const float* inp, std::int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    out[i] = 0.5f * x * (1.0f + fast_tanh(u));
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, std::int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    const float t = fast_tanh(u);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
    const float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    dinp[i] = grad * dout[i];
  }
}

}  // namespace kiln::cpu
