// GELU, tanh form (as GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace kiln::cpu {

void gelu_forward(float* out, const float* inp, std::int64_t n);
// dinp = gelu'(inp) * dout (overwrites; dinp may alias dout).
void gelu_backward(float* dinp, const float* inp, const float* dout, std::int64_t n);

}  // namespace kiln::cpu

namespace kiln::cuda {

// Same contracts as the kiln::cpu twins; device pointers, queued on kiln::cuda::stream().
// tanh(u) is computed as 1 - 2 / (exp(2u) + 1), as on the CPU; 128-bit accesses when every
// pointer is 16-byte aligned.
void gelu_forward(float* out, const float* inp, std::int64_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, std::int64_t n);

// bf16 activations, fp32 arithmetic, one rounding at the store.
void gelu_forward_bf16(bf16* out, const bf16* inp, std::int64_t n);
// dinp = round(gelu'(inp) * dout) (overwrites; dinp may alias dout).
void gelu_backward_bf16(bf16* dinp, const bf16* inp, const bf16* dout, std::int64_t n);

}  // namespace kiln::cuda
