// kiln's choice of cuBLASLt epilogue and its fallbacks, through the emulated cuBLASLt's test hooks
// (tests/emu/include/cublasLt.h), so emulator only: which epilogue each linear layer asks for, and
// the separate bias/GELU kernel when cuBLASLt has no algorithm for an epilogue (heuristic) or
// refuses it at launch, on the first call and on later calls through the cached plan.
#include <cublasLt.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda/gpu_test.h"
#include "kernels/matmul.h"

namespace {

using kiln::bf16;
using kiln::emu::EpilogueRefusal;
using kiln::testing::DeviceBuffer;
using kiln::testing::expect_close;

std::vector<float> bf16_normal(std::size_t n, unsigned seed) {
  return kiln::testing::rounded(kiln::testing::random_normal(n, seed));
}

// A bf16 linear layer (with GELU, bias and pre-activation as asked) on the device, checked against
// the CPU twin; returns the epilogues cuBLASLt ran for it.
std::vector<unsigned> run_bf16_linear(std::int64_t rows, std::int64_t in, std::int64_t out, bool gelu,
                                      bool with_bias, bool keep_pre, unsigned seed) {
  const auto x = bf16_normal(rows * in, seed), w = bf16_normal(in * out, seed + 1);
  const auto bias = bf16_normal(out, seed + 2);
  std::vector<float> expected(rows * out), expected_pre(rows * out);
  const float* b = with_bias ? bias.data() : nullptr;
  if (gelu)
    kiln::cpu::linear_forward_gelu(expected.data(), expected_pre.data(), x.data(), w.data(), b, rows, in, out, false);
  else
    kiln::cpu::linear_forward(expected.data(), x.data(), w.data(), b, rows, in, out, false);
  DeviceBuffer<bf16> hx(kiln::testing::to_bf16(x)), hw(kiln::testing::to_bf16(w)), hout(rows * out), hpre(rows * out);
  DeviceBuffer<bf16> dbias(kiln::testing::to_bf16(bias));
  kiln::emu::take_cublaslt_epilogues();
  const bf16* gb = with_bias ? dbias.get() : nullptr;
  if (gelu)
    kiln::cuda::linear_forward_gelu_bf16(hout.get(), keep_pre ? hpre.get() : nullptr, hx.get(), hw.get(), gb, rows,
                                         in, out);
  else
    kiln::cuda::linear_forward_bf16(hout.get(), hx.get(), hw.get(), gb, rows, in, out);
  const std::vector<unsigned> epilogues = kiln::emu::take_cublaslt_epilogues();
  const double atol = 1e-4 * std::sqrt(static_cast<double>(in)) + (gelu ? 1e-3 : 0.0);
  std::vector<float> product(rows * out);  // x w, for the fused bias epilogue's rounding
  kiln::cpu::linear_forward(product.data(), x.data(), w.data(), nullptr, rows, in, out, false);
  const auto slack = kiln::testing::bf16_bias_epilogue_slack(product, gelu);
  const std::vector<double>* per_element = with_bias ? &slack : nullptr;
  expect_close(kiln::testing::to_float(hout.host()), expected, atol, 1e-2, "out", per_element);
  if (keep_pre) expect_close(kiln::testing::to_float(hpre.host()), expected_pre, atol, 1e-2, "pre_gelu", per_element);
  return epilogues;
}

using Epilogues = std::vector<unsigned>;

TEST(EmulatedCublasLt, KilnAsksForTheFusedEpilogueWhereOneApplies) {
  KILN_REQUIRE_GPU();
  // bf16: GELU fused, with the aux matrix only where out_dim is a multiple of 8 (the aux ld rule).
  EXPECT_EQ(run_bf16_linear(5, 24, 16, true, true, true, 1), Epilogues{CUBLASLT_EPILOGUE_GELU_AUX_BIAS});
  EXPECT_EQ(run_bf16_linear(5, 24, 16, true, false, true, 2), Epilogues{CUBLASLT_EPILOGUE_GELU_AUX});
  EXPECT_EQ(run_bf16_linear(5, 24, 13, true, true, false, 3), Epilogues{CUBLASLT_EPILOGUE_GELU_BIAS});
  EXPECT_EQ(run_bf16_linear(5, 24, 13, true, false, false, 4), Epilogues{CUBLASLT_EPILOGUE_GELU});
  // No aux matrix possible: the product alone, then the kernel adds the bias and applies GELU.
  EXPECT_EQ(run_bf16_linear(5, 24, 13, true, true, true, 5), Epilogues{CUBLASLT_EPILOGUE_DEFAULT});
  EXPECT_EQ(run_bf16_linear(5, 24, 13, false, true, false, 6), Epilogues{CUBLASLT_EPILOGUE_BIAS});
  EXPECT_EQ(run_bf16_linear(5, 24, 13, false, false, false, 7), Epilogues{CUBLASLT_EPILOGUE_DEFAULT});
  // fp32: bias fused, GELU always the separate kernel.
  const std::int64_t rows = 6, in = 10, out = 16;
  DeviceBuffer<float> x(std::vector<float>(rows * in, 0.5f)), w(std::vector<float>(in * out, 0.25f));
  DeviceBuffer<float> bias(std::vector<float>(out, 1.0f)), y(rows * out), pre(rows * out);
  kiln::emu::take_cublaslt_epilogues();
  kiln::cuda::linear_forward_gelu(y.get(), pre.get(), x.get(), w.get(), bias.get(), rows, in, out, false);
  EXPECT_EQ(kiln::emu::take_cublaslt_epilogues(), Epilogues{CUBLASLT_EPILOGUE_BIAS});
  kiln::cuda::set_matmul_epilogue_fusion(false);
  kiln::cuda::linear_forward(y.get(), x.get(), w.get(), bias.get(), rows, in, out, true);
  kiln::cuda::set_matmul_epilogue_fusion(true);
  EXPECT_EQ(kiln::emu::take_cublaslt_epilogues(), Epilogues{CUBLASLT_EPILOGUE_DEFAULT});
}

TEST(EmulatedCublasLt, RefusedEpiloguesFallBackToTheSeparateKernel) {
  KILN_REQUIRE_GPU();
  unsigned seed = 100;
  std::int64_t rows = 7;  // a new shape for each refusal: plans are cached per shape
  for (EpilogueRefusal refusal : {EpilogueRefusal::heuristic, EpilogueRefusal::launch}) {
    SCOPED_TRACE(refusal == EpilogueRefusal::heuristic ? "refused by the heuristic" : "refused at launch");
    kiln::emu::refuse_cublaslt_epilogues(refusal);
    // Twice each: the second call goes through the cached (unusable) plan.
    for (int call = 0; call < 2; ++call) {
      EXPECT_EQ(run_bf16_linear(rows, 40, 24, true, true, true, seed++), Epilogues{CUBLASLT_EPILOGUE_DEFAULT});
      EXPECT_EQ(run_bf16_linear(rows, 40, 24, true, false, false, seed++), Epilogues{CUBLASLT_EPILOGUE_DEFAULT});
      EXPECT_EQ(run_bf16_linear(rows, 40, 24, false, true, false, seed++), Epilogues{CUBLASLT_EPILOGUE_DEFAULT});
    }
    ++rows;
  }
  kiln::emu::refuse_cublaslt_epilogues(EpilogueRefusal::none);
}

}  // namespace
