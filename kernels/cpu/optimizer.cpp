// CPU AdamW and squared norm.
#include "kernels/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kiln::cpu {

void adamw_update(float* param, const float* grad, float* m, float* v,
                  const AdamWSegment* segments, int num_segments, const AdamWStep& s) {
  // torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  // p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
  const float bc1 = 1.0f - std::pow(s.beta1, static_cast<float>(s.step));
  const float bc2_sqrt = std::sqrt(1.0f - std::pow(s.beta2, static_cast<float>(s.step)));
  const float step_size = s.lr / bc1;
#pragma omp parallel
  for (int k = 0; k < num_segments; ++k) {
    const AdamWSegment seg = segments[k];
    const float decay = 1.0f - s.lr * seg.weight_decay;
    // Segments are independent: no barrier between them (nowait), one at the end.
#pragma omp for simd schedule(static) nowait
    for (std::int64_t i = seg.offset; i < seg.offset + seg.size; ++i) {
      const float g = grad[i] * s.grad_scale;
      const float mi = s.beta1 * m[i] + (1.0f - s.beta1) * g;
      const float vi = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
      m[i] = mi;
      v[i] = vi;
      param[i] = param[i] * decay - step_size * mi / (std::sqrt(vi) / bc2_sqrt + s.eps);
    }
  }
}

double sum_squares(const float* x, std::int64_t n) {
  // Fixed chunks summed in chunk order: the result does not depend on thread timing.
  constexpr std::int64_t kChunk = 1 << 16;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t end = std::min(n, (c + 1) * kChunk);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (std::int64_t i = c * kChunk; i < end; ++i) acc += static_cast<double>(x[i]) * x[i];
    partial[c] = acc;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace kiln::cpu
