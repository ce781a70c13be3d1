// CPU fused softmax cross-entropy: one pass for the max, one for the sum of exponentials, one
// writing the gradient in place. The probabilities are never stored separately.
#include "kernels/cross_entropy.h"

#include <cmath>

#include "kernels/cpu/fast_math.h"

namespace kiln::cpu {

void softmax_cross_entropy(float* losses, float* logits, const std::int32_t* targets,
                           const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                           std::int64_t padded_vocab, float dlogits_scale) {
  const bool backward = dlogits_scale != 0.0f;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    float* row = logits + i * padded_vocab;
    if (mask != nullptr && mask[i] == 0) {
      losses[i] = 0.0f;
      if (backward)
        for (std::int64_t j = 0; j < padded_vocab; ++j) row[j] = 0.0f;
      continue;
    }
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (std::int64_t j = 0; j < vocab; ++j) maxv = row[j] > maxv ? row[j] : maxv;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t j = 0; j < vocab; ++j) sum += fast_exp(row[j] - maxv);
    const float log_sum = std::log(sum);
    const std::int32_t target = targets[i];
    losses[i] = log_sum + maxv - row[target];
    if (!backward) continue;
    const float inv_sum = 1.0f / sum;
#pragma omp simd
    for (std::int64_t j = 0; j < vocab; ++j) row[j] = fast_exp(row[j] - maxv) * inv_sum * dlogits_scale;
    row[target] -= dlogits_scale;
    for (std::int64_t j = vocab; j < padded_vocab; ++j) row[j] = 0.0f;
  }
}

}  // namespace kiln::cpu
