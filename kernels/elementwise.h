// Elementwise helpers for the residual stream, and the fp32 <-> bf16 conversions of mixed
// precision. Under nvcc this header also carries the device-side building blocks that the
// elementwise, GELU and LayerNorm CUDA kernels share (128-bit loads/stores, bf16 rounding, a
// vectorised map kernel); plain C++ sees only the declarations.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace kiln::cpu {

// out = a + b (out may alias a or b).
void add(float* out, const float* a, const float* b, std::int64_t n);
// out += in.
void accumulate(float* out, const float* in, std::int64_t n);

}  // namespace kiln::cpu

namespace kiln::cuda {

// Same contracts as the kiln::cpu twins; device pointers, queued on kiln::cuda::stream().
// 128-bit accesses when every pointer is 16-byte aligned, scalar accesses otherwise.
void add(float* out, const float* a, const float* b, std::int64_t n);
void accumulate(float* out, const float* in, std::int64_t n);

// bf16 twins: fp32 arithmetic, one rounding to nearest even at the store.
// out = round(a + b) (out may alias a or b).
void add_bf16(bf16* out, const bf16* a, const bf16* b, std::int64_t n);
// out = round(out + in).
void accumulate_bf16(bf16* out, const bf16* in, std::int64_t n);

// out = to_bf16(in), bit for bit as kiln::to_bf16 (round to nearest even; NaN stays a quiet
// NaN with the input's upper payload bits).
void convert_f32_to_bf16(bf16* out, const float* in, std::int64_t n);
// out = to_float(in) (exact).
void convert_bf16_to_f32(float* out, const bf16* in, std::int64_t n);

}  // namespace kiln::cuda
