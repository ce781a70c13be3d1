// The bf16 storage type seen from plain C++ (CUDA code reinterprets it as __nv_bfloat16):
// the upper 16 bits of an fp32, rounded to nearest even.
#pragma once

#include <cstdint>
#include <cstring>

namespace kiln {

struct alignas(2) bf16 {
  std::uint16_t bits;
};

inline bf16 to_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<std::uint16_t>(u >> 16)};
}

inline float to_float(bf16 x) {
  const std::uint32_t u = static_cast<std::uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace kiln
