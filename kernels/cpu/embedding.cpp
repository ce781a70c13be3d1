// CPU embedding forward and (deterministic) backward, whole table or vocabulary shard.
#include "kernels/embedding.h"

namespace kiln::cpu {

void embedding_forward(float* out, const std::int32_t* tokens, const std::int32_t* positions,
                       const float* wte, const float* wpe, std::int64_t n, std::int64_t c,
                       std::int64_t vocab_first, std::int64_t vocab_rows) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t row = static_cast<std::int64_t>(tokens[i]) - vocab_first;
    const float* te = row >= 0 && row < vocab_rows ? wte + row * c : nullptr;
    const float* pe = wpe ? wpe + static_cast<std::int64_t>(positions[i]) * c : nullptr;
    float* o = out + i * c;
#pragma omp simd
    for (std::int64_t j = 0; j < c; ++j) o[j] = (te ? te[j] : 0.0f) + (pe ? pe[j] : 0.0f);
  }
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const std::int32_t* tokens,
                        const std::int32_t* positions, std::int64_t n, std::int64_t c,
                        std::int64_t vocab_first, std::int64_t vocab_rows) {
  constexpr std::int64_t kChunk = 32;
#pragma omp parallel for schedule(static)
  for (std::int64_t j0 = 0; j0 < c; j0 += kChunk) {
    const std::int64_t j1 = j0 + kChunk < c ? j0 + kChunk : c;
    for (std::int64_t i = 0; i < n; ++i) {
      const float* g = dout + i * c;
      const std::int64_t row = static_cast<std::int64_t>(tokens[i]) - vocab_first;
      if (row >= 0 && row < vocab_rows) {
        float* te = dwte + row * c;
        for (std::int64_t j = j0; j < j1; ++j) te[j] += g[j];
      }
      if (dwpe) {
        float* pe = dwpe + static_cast<std::int64_t>(positions[i]) * c;
        for (std::int64_t j = j0; j < j1; ++j) pe[j] += g[j];
      }
    }
  }
}

}  // namespace kiln::cpu
