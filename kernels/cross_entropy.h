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

}  // namespace kiln::cpu
