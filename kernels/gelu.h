// GELU, tanh form (as GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#pragma once

#include <cstdint>

namespace kiln::cpu {

void gelu_forward(float* out, const float* inp, std::int64_t n);
// dinp = gelu'(inp) * dout (overwrites; dinp may alias dout).
void gelu_backward(float* dinp, const float* inp, const float* dout, std::int64_t n);

}  // namespace kiln::cpu
