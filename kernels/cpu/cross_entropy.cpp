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

void cross_entropy_local_max(float* row_max, const float* logits, std::int64_t n,
                             std::int64_t real_cols, std::int64_t padded_cols) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * padded_cols;
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (std::int64_t j = 0; j < real_cols; ++j) maxv = row[j] > maxv ? row[j] : maxv;
    row_max[i] = maxv;
  }
}

void cross_entropy_local_sums(float* row_sum, float* target_logit, const float* logits,
                              const float* row_max, const std::int32_t* targets, std::int64_t n,
                              std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * padded_cols;
    const float m = row_max[i];
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t j = 0; j < real_cols; ++j) sum += fast_exp(row[j] - m);
    row_sum[i] = sum;
    const std::int64_t t = static_cast<std::int64_t>(targets[i]) - vocab_first;
    target_logit[i] = t >= 0 && t < real_cols ? row[t] : 0.0f;
  }
}

void cross_entropy_local_grad(float* logits, const float* row_max, const float* row_sum,
                              const std::int32_t* targets, const std::uint8_t* mask,
                              std::int64_t n, std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float dlogits_scale) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    float* row = logits + i * padded_cols;
    if (mask != nullptr && mask[i] == 0) {
      for (std::int64_t j = 0; j < padded_cols; ++j) row[j] = 0.0f;
      continue;
    }
    const float m = row_max[i], scale = dlogits_scale / row_sum[i];
#pragma omp simd
    for (std::int64_t j = 0; j < real_cols; ++j) row[j] = fast_exp(row[j] - m) * scale;
    for (std::int64_t j = real_cols; j < padded_cols; ++j) row[j] = 0.0f;
    const std::int64_t t = static_cast<std::int64_t>(targets[i]) - vocab_first;
    if (t >= 0 && t < real_cols) row[t] -= dlogits_scale;
  }
}

}  // namespace kiln::cpu
