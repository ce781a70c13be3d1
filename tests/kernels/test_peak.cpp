// kiln::cpu::peak_flops, the denominator of MFU: no matrix product may beat it, or MFU would
// read above 100%. Load from other tests can only lower a timing, so a measured peak below the
// matmul's rate is measured again before it counts as a failure.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/peak.h"

namespace {

// Best FLOP/s of a few square matmuls of the kind training runs (oneDNN).
double matmul_rate(bool bf16) {
  const int n = 1024;
  std::vector<float> a(n * n, 0.01f), b(n * n, 0.02f), c(n * n);
  double best = 0.0;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    if (bf16) kiln::cpu::matmul_bf16(c.data(), a.data(), b.data(), n, n, n, false, false);
    else kiln::cpu::matmul(c.data(), a.data(), b.data(), n, n, n, false, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * n * n * n / s);
  }
  return best;
}

TEST(PeakFlops, NoMatmulBeatsTheMeasuredPeak) {
  for (bool bf16 : {false, true}) {
    const double matmul = matmul_rate(bf16);
    kiln::PeakFlops peak;
    for (int attempt = 0; attempt < 4 && peak.flops_per_s < matmul; ++attempt) {
      const kiln::PeakFlops again = kiln::cpu::peak_flops(bf16);
      if (again.flops_per_s > peak.flops_per_s) peak = again;
    }
    EXPECT_GE(peak.flops_per_s, matmul) << (bf16 ? "bf16" : "fp32") << ": " << peak.how;
    EXPECT_NE(peak.how.find("measured"), std::string::npos) << peak.how;
    // Not absurdly above either: a matmul this size reaches a fair share of the peak.
    EXPECT_LT(peak.flops_per_s, 20 * matmul) << peak.how;
  }
}

}  // namespace
