// Token + learned position embedding.
#pragma once

#include <cstdint>

namespace kiln::cpu {

// out (b*t, c) = wte[tokens] + wpe[position]; positions[i] gives the position of token i
// (0..t-1 for plain sequences; restarts per document for packed ones).
void embedding_forward(float* out, const std::int32_t* tokens, const std::int32_t* positions,
                       const float* wte, const float* wpe, std::int64_t n, std::int64_t c);

// Accumulates dwte[tokens[i]] += dout[i], dwpe[positions[i]] += dout[i]. Threads split the
// channels, so every sum is formed in token order: deterministic, no atomics.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const std::int32_t* tokens,
                        const std::int32_t* positions, std::int64_t n, std::int64_t c);

}  // namespace kiln::cpu
