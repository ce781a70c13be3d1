// Fused softmax + cross-entropy over the vocabulary, with a per-token loss mask.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace kiln::cpu {

// logits (n, padded_vocab); only the first `vocab` columns are real. For each row i:
//   losses[i] = mask[i] ? logsumexp(logits[i, :vocab]) - logits[i, targets[i]] : 0.
// When dlogits_scale != 0 the logits are overwritten in place by the gradient of
// dlogits_scale * sum_i losses[i]: (softmax - onehot) * scale on real columns of masked rows,
// 0 elsewhere (padded columns and unmasked rows). mask may be null (all tokens count).
void softmax_cross_entropy(float* losses, float* logits, const std::int32_t* targets,
                           const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                           std::int64_t padded_vocab, float dlogits_scale);

// Vocabulary-parallel cross-entropy in three passes around two reductions over the ranks that
// share the vocabulary: each rank holds logits (n, padded_cols) for token ids
// [vocab_first, vocab_first + padded_cols), of which the first real_cols are real tokens.
//   1. cross_entropy_local_max: row_max[i] = max over this rank's real columns (-inf if none);
//      the caller takes the max over ranks.
//   2. cross_entropy_local_sums: row_sum[i] = sum of exp(logit - row_max[i]) over real columns,
//      target_logit[i] = logit of targets[i] if this rank holds it, else 0; the caller sums both
//      over ranks. Then loss[i] = log(row_sum) + row_max - target_logit (masked rows: 0).
//   3. cross_entropy_local_grad: overwrites the logits with the gradient of
//      dlogits_scale * sum_i loss[i] (zero on padded columns and unmasked rows).
void cross_entropy_local_max(float* row_max, const float* logits, std::int64_t n,
                             std::int64_t real_cols, std::int64_t padded_cols);
void cross_entropy_local_sums(float* row_sum, float* target_logit, const float* logits,
                              const float* row_max, const std::int32_t* targets, std::int64_t n,
                              std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first);
void cross_entropy_local_grad(float* logits, const float* row_max, const float* row_sum,
                              const std::int32_t* targets, const std::uint8_t* mask,
                              std::int64_t n, std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float dlogits_scale);

}  // namespace kiln::cpu

namespace kiln::cuda {

// The CUDA twins, on device pointers: one block per row, rows read with 16-byte vector loads
// where the row is 16-byte aligned (padded_vocab a multiple of 4 and an aligned base; scalar
// otherwise), the same padded-column / masked-row contract as the CPU. Rows with a target
// outside [0, vocab) that count (mask set) get a NaN loss and no one-hot term.
//
// Two passes over each row: an online max + sum of exponentials (a running maximum with the
// sum rescaled when it grows), then the gradient written in place.
void softmax_cross_entropy(float* losses, float* logits, const std::int32_t* targets,
                           const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                           std::int64_t padded_vocab, float dlogits_scale);
void cross_entropy_local_max(float* row_max, const float* logits, std::int64_t n,
                             std::int64_t real_cols, std::int64_t padded_cols);
void cross_entropy_local_sums(float* row_sum, float* target_logit, const float* logits,
                              const float* row_max, const std::int32_t* targets, std::int64_t n,
                              std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first);
void cross_entropy_local_grad(float* logits, const float* row_max, const float* row_sum,
                              const std::int32_t* targets, const std::uint8_t* mask,
                              std::int64_t n, std::int64_t real_cols, std::int64_t padded_cols,
                              std::int64_t vocab_first, float dlogits_scale);

// softmax_cross_entropy on bf16 logits (n, padded_vocab): the max, sum and loss in fp32 from
// the bf16 values; the gradient (fp32, then rounded) overwrites the logits in place. No fp32
// copy of the logits or probabilities is made. Rows 16-byte aligned (padded_vocab a multiple of
// 8) get vector loads.
void softmax_cross_entropy_bf16(float* losses, bf16* logits, const std::int32_t* targets,
                                const std::uint8_t* mask, std::int64_t n, std::int64_t vocab,
                                std::int64_t padded_vocab, float dlogits_scale);

}  // namespace kiln::cuda
