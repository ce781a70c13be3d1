// Elementwise helpers for the residual stream.
#pragma once

#include <cstdint>

namespace kiln::cpu {

// out = a + b (out may alias a or b).
void add(float* out, const float* a, const float* b, std::int64_t n);
// out += in.
void accumulate(float* out, const float* in, std::int64_t n);

}  // namespace kiln::cpu
