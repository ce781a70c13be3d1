// LayerNorm over the last dimension (eps 1e-5, as GPT-2).
#pragma once

#include <cstdint>

namespace kiln::cpu {

// out (rows, c) = (inp - mean) * rstd * gamma + beta; saves mean (rows) and rstd (rows).
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* gamma,
                       const float* beta, std::int64_t rows, std::int64_t c);

// Accumulates dinp += ..., dgamma += ..., dbeta += ... (deterministic for a fixed thread count).
void layernorm_backward(float* dinp, float* dgamma, float* dbeta, const float* dout,
                        const float* inp, const float* gamma, const float* mean,
                        const float* rstd, std::int64_t rows, std::int64_t c);

}  // namespace kiln::cpu
