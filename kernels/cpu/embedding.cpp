// CPU embedding forward and (deterministic) backward.
#include "kernels/embedding.h"

namespace kiln::cpu {

void embedding_forward(float* out, const std::int32_t* tokens, const std::int32_t* positions,
                       const float* wte, const float* wpe, std::int64_t n, std::int64_t c) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* te = wte + static_cast<std::int64_t>(tokens[i]) * c;
    const float* pe = wpe + static_cast<std::int64_t>(positions[i]) * c;
    float* o = out + i * c;
#pragma omp simd
    for (std::int64_t j = 0; j < c; ++j) o[j] = te[j] + pe[j];
  }
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const std::int32_t* tokens,
                        const std::int32_t* positions, std::int64_t n, std::int64_t c) {
  constexpr std::int64_t kChunk = 32;
#pragma omp parallel for schedule(static)
  for (std::int64_t j0 = 0; j0 < c; j0 += kChunk) {
    const std::int64_t j1 = j0 + kChunk < c ? j0 + kChunk : c;
    for (std::int64_t i = 0; i < n; ++i) {
      const float* g = dout + i * c;
      float* te = dwte + static_cast<std::int64_t>(tokens[i]) * c;
      float* pe = dwpe + static_cast<std::int64_t>(positions[i]) * c;
      for (std::int64_t j = j0; j < j1; ++j) {
        te[j] += g[j];
        pe[j] += g[j];
      }
    }
  }
}

}  // namespace kiln::cpu
