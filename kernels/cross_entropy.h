// Fused softmax + cross-entropy over the vocabulary, with a per-token loss mask, optional
// per-token float weights and an optional temperature.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace kiln::cpu {

// logits (n, padded_vocab); only the first `vocab` columns are real. With z = logits[i, :vocab]
// * inv_temperature (the logits at temperature 1 / inv_temperature > 0) and w = weights[i] (1
// when weights is null), for each row i:
//   losses[i] = mask[i] ? w * (logsumexp(z) - z[targets[i]]) : 0.
// When dlogits_scale != 0 the logits are overwritten in place by the gradient of
// dlogits_scale * sum_i losses[i] with respect to them: (softmax(z) - onehot) * dlogits_scale *
// w * inv_temperature on real columns of counted rows, 0 elsewhere (padded columns, rows with
// mask 0 or w == 0). mask and weights may be null (all tokens count, weight 1). Weights may be
// negative (a loss that raises a token's probability). With no weights and inv_temperature 1
// the results are those of the plain loss, bit for bit.
void softmax_cross_entropy(float* losses, float* logits, const std::int32_t* targets,
                           const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                           std::int64_t padded_vocab, float dlogits_scale,
                           const float* weights = nullptr, float inv_temperature = 1.0f);

// Vocabulary-parallel cross-entropy in three passes around two reductions over the ranks that
// share the vocabulary: each rank holds logits (n, padded_cols) for token ids
// [vocab_first, vocab_first + padded_cols), of which the first real_cols are real tokens.
// With z = logit * inv_temperature:
//   1. cross_entropy_local_max: row_max[i] = max of z over this rank's real columns (-inf if
//      none); the caller takes the max over ranks.
//   2. cross_entropy_local_sums: row_sum[i] = sum of exp(z - row_max[i]) over real columns,
//      target_logit[i] = z of targets[i] if this rank holds it, else 0; the caller sums both
//      over ranks. Then loss[i] = w * (log(row_sum) + row_max - target_logit) (masked rows: 0).
//   3. cross_entropy_local_grad: overwrites the logits with the gradient of
//      dlogits_scale * sum_i loss[i] (zero on padded columns and uncounted rows), as above.
void cross_entropy_local_max(float* row_max, const float* logits, std::int64_t n,
                             std::int64_t real_cols, std::int64_t padded_cols,
                             float inv_temperature = 1.0f);
void cross_entropy_local_sums(float* row_sum, float* target_logit, const float* logits,
                              const float* row_max, const std::int32_t* targets, std::int64_t n,
                              std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float inv_temperature = 1.0f);
void cross_entropy_local_grad(float* logits, const float* row_max, const float* row_sum,
                              const std::int32_t* targets, const std::uint8_t* mask,
                              std::int64_t n, std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float dlogits_scale,
                              const float* weights = nullptr, float inv_temperature = 1.0f);

}  // namespace kiln::cpu

namespace kiln::cuda {

// The CUDA twins, on device pointers: one block per row, rows read with 16-byte vector loads
// where the row is 16-byte aligned (padded_vocab a multiple of 4 and an aligned base; scalar
// otherwise), the same padded-column / masked-row / weight / temperature contract as the CPU.
// Rows with a target outside [0, vocab) that count (mask set) get a NaN loss and no one-hot term.
//
// Two passes over each row: an online max + sum of exponentials (a running maximum with the
// sum rescaled when it grows), then the gradient written in place.
void softmax_cross_entropy(float* losses, float* logits, const std::int32_t* targets,
                           const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                           std::int64_t padded_vocab, float dlogits_scale,
                           const float* weights = nullptr, float inv_temperature = 1.0f);
void cross_entropy_local_max(float* row_max, const float* logits, std::int64_t n,
                             std::int64_t real_cols, std::int64_t padded_cols,
                             float inv_temperature = 1.0f);
void cross_entropy_local_sums(float* row_sum, float* target_logit, const float* logits,
                              const float* row_max, const std::int32_t* targets, std::int64_t n,
                              std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float inv_temperature = 1.0f);
void cross_entropy_local_grad(float* logits, const float* row_max, const float* row_sum,
                              const std::int32_t* targets, const std::uint8_t* mask,
                              std::int64_t n, std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float dlogits_scale,
                              const float* weights = nullptr, float inv_temperature = 1.0f);

// softmax_cross_entropy on bf16 logits (n, padded_vocab): the max, sum and loss in fp32 from
// the bf16 values; the gradient (fp32, then rounded) overwrites the logits in place. No fp32
// copy of the logits or probabilities is made. Rows 16-byte aligned (padded_vocab a multiple of
// 8) get vector loads.
void softmax_cross_entropy_bf16(float* losses, bf16* logits, const std::int32_t* targets,
                                const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                                std::int64_t padded_vocab, float dlogits_scale,
                           const float* weights = nullptr, float inv_temperature = 1.0f);

}  // namespace kiln::cuda
