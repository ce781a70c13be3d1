// Token + learned position embedding.
#pragma once

#include <cstdint>

namespace kiln::cpu {

// out (b*t, c) = wte[tokens] + wpe[position]; positions[i] gives the position of token i
// (0..t-1 for plain sequences; restarts per document for packed ones). wte holds the rows of
// token ids [vocab_first, vocab_first + vocab_rows) (a vocabulary-parallel shard; the whole
// table is vocab_first 0); other tokens contribute zero. wpe may be null (no positions added).
void embedding_forward(float* out, const std::int32_t* tokens, const std::int32_t* positions,
                       const float* wte, const float* wpe, std::int64_t n, std::int64_t c,
                       std::int64_t vocab_first, std::int64_t vocab_rows);

// Accumulates dwte[tokens[i] - vocab_first] += dout[i] for tokens in the shard, and
// dwpe[positions[i]] += dout[i] (dwpe may be null). Threads split the channels, so every sum is
// formed in token order: deterministic, no atomics.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const std::int32_t* tokens,
                        const std::int32_t* positions, std::int64_t n, std::int64_t c,
                        std::int64_t vocab_first, std::int64_t vocab_rows);

}  // namespace kiln::cpu
