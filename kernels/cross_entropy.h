// Fused softmax + cross-entropy over the vocabulary, with a per-token loss mask.
#pragma once

#include <cstdint>

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
