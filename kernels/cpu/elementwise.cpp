// CPU elementwise helpers.
#include "kernels/elementwise.h"

namespace kiln::cpu {

void add(float* out, const float* a, const float* b, std::int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void accumulate(float* out, const float* in, std::int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) out[i] += in[i];
}

}  // namespace kiln::cpu
