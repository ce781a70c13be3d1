// CPU fused softmax cross-entropy: one pass for the max, one for the sum of exponentials, one
// writing the gradient in place. The probabilities are never stored separately.
#include "kernels/cross_entropy.h"

#include <cmath>

#include "kernels/cpu/fast_math.h"

namespace kiln::cpu {
namespace {

// sum_j exp(row[j] * t - m), as fp32 partial sums over blocks of 512 columns added up in double.
// One fp32 sum over a whole row drifts with its length and with the vector width the compiler
// picked: measured over GPT-2's 50257 columns, 1.8e-6 relative with AVX-512 but 7e-5 with the
// baseline x86-64's SSE2, far from the GPU kernel's tree sum. Blocked, it stays near 1e-6 for
// every width.
double sum_exp(const float* row, std::int64_t count, float t, float m) {
  constexpr std::int64_t kBlock = 512;
  double total = 0.0;
  for (std::int64_t first = 0; first < count; first += kBlock) {
    const std::int64_t last = first + kBlock < count ? first + kBlock : count;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (std::int64_t j = first; j < last; ++j) sum += fast_exp(row[j] * t - m);
    total += sum;
  }
  return total;
}

}  // namespace

void softmax_cross_entropy(float* losses, float* logits, const std::int32_t* targets,
                           const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                           std::int64_t padded_vocab, float dlogits_scale, const float* weights,
                           float inv_temperature) {
  const bool backward = dlogits_scale != 0.0f;
  const float t = inv_temperature;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    float* row = logits + i * padded_vocab;
    const float w = weights != nullptr ? weights[i] : 1.0f;
    if ((mask != nullptr && mask[i] == 0) || w == 0.0f) {
      losses[i] = 0.0f;
      if (backward)
        for (std::int64_t j = 0; j < padded_vocab; ++j) row[j] = 0.0f;
      continue;
    }
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (std::int64_t j = 0; j < vocab; ++j) maxv = row[j] * t > maxv ? row[j] * t : maxv;
    const float sum = static_cast<float>(sum_exp(row, vocab, t, maxv));
    const float log_sum = std::log(sum);
    const std::int32_t target = targets[i];
    losses[i] = (log_sum + maxv - row[target] * t) * w;
    if (!backward) continue;
    const float inv_sum = 1.0f / sum, scale = dlogits_scale * w * t;
#pragma omp simd
    for (std::int64_t j = 0; j < vocab; ++j) row[j] = fast_exp(row[j] * t - maxv) * inv_sum * scale;
    row[target] -= scale;
    for (std::int64_t j = vocab; j < padded_vocab; ++j) row[j] = 0.0f;
  }
}

void cross_entropy_local_max(float* row_max, const float* logits, std::int64_t n,
                             std::int64_t real_cols, std::int64_t padded_cols, float inv_temperature) {
  const float t = inv_temperature;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * padded_cols;
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (std::int64_t j = 0; j < real_cols; ++j) maxv = row[j] * t > maxv ? row[j] * t : maxv;
    row_max[i] = maxv;
  }
}

void cross_entropy_local_sums(float* row_sum, float* target_logit, const float* logits,
                              const float* row_max, const std::int32_t* targets, std::int64_t n,
                              std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float inv_temperature) {
  const float it = inv_temperature;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = logits + i * padded_cols;
    const float m = row_max[i];
    row_sum[i] = static_cast<float>(sum_exp(row, real_cols, it, m));
    const std::int64_t t = static_cast<std::int64_t>(targets[i]) - vocab_first;
    target_logit[i] = t >= 0 && t < real_cols ? row[t] * it : 0.0f;
  }
}

void cross_entropy_local_grad(float* logits, const float* row_max, const float* row_sum,
                              const std::int32_t* targets, const std::uint8_t* mask,
                              std::int64_t n, std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float dlogits_scale, const float* weights,
                              float inv_temperature) {
  const float it = inv_temperature;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    float* row = logits + i * padded_cols;
    const float w = weights != nullptr ? weights[i] : 1.0f;
    if ((mask != nullptr && mask[i] == 0) || w == 0.0f) {
      for (std::int64_t j = 0; j < padded_cols; ++j) row[j] = 0.0f;
      continue;
    }
    const float g = dlogits_scale * w * it, m = row_max[i], scale = g / row_sum[i];
#pragma omp simd
    for (std::int64_t j = 0; j < real_cols; ++j) row[j] = fast_exp(row[j] * it - m) * scale;
    for (std::int64_t j = real_cols; j < padded_cols; ++j) row[j] = 0.0f;
    const std::int64_t t = static_cast<std::int64_t>(targets[i]) - vocab_first;
    if (t >= 0 && t < real_cols) row[t] -= g;
  }
}

}  // namespace kiln::cpu
