// The emulator's kernels/cuda/ptx.cuh: the same functions, computed by tests/emu/cuda_emu.cpp as
// the PTX ISA specifies (test_cuda_emu's include path finds this file before the real one).
#pragma once

#include <cstdint>

#include "cuda_emu.h"

namespace kiln::cuda {

inline void ldsm_x4(std::uint32_t (&r)[4], const __nv_bfloat16* p,
                    const emu::Where& where = emu::Where::current()) {
  emu::ldmatrix_x4(r, p, false, where);
}
inline void ldsm_x4_trans(std::uint32_t (&r)[4], const __nv_bfloat16* p,
                          const emu::Where& where = emu::Where::current()) {
  emu::ldmatrix_x4(r, p, true, where);
}
inline void mma_bf16(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1,
                     const emu::Where& where = emu::Where::current()) {
  emu::mma_bf16_16816(d, a, b0, b1, where);
}
inline void cp_async_16(void* dst, const void* src, int src_bytes) { emu::cp_async_16(dst, src, src_bytes); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}

}  // namespace kiln::cuda
