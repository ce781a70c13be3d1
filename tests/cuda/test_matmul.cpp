// The CUDA matrix products (kernels/cuda/matmul.cu, cuBLASLt) against their CPU twins on seeded
// random inputs and odd shapes: all four transposes, alpha/beta, bias and GELU epilogues (fused
// and unfused), accumulation of weight and bias gradients, bit-identical parameter gradients
// between runs, and zero sizes.
//
// Tolerances. Inputs are N(0, 1), so a product's entries are of size sqrt(k). fp32 products:
// atol = 2e-5 sqrt(k) (fp32 rounding of k sequential sums in either order stays well below it),
// rtol 1e-5. bf16 inputs with fp32 outputs: the products of bf16 values are exact in fp32, so
// the CPU twin fed the same rounded values differs only in summation order: atol 1e-4 sqrt(k),
// rtol 1e-4. bf16 outputs: rounded once to 8 bits, rtol 1e-2 (about 2 ulp) + the same atol.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gpu_test.h"
#include "kernels/matmul.h"

namespace {

using kiln::bf16;
using kiln::testing::DeviceBuffer;
using kiln::testing::expect_close;
using kiln::testing::random_normal;
using kiln::testing::round_bf16;
using kiln::testing::rounded;

double fp32_atol(std::int64_t k) { return 2e-5 * std::sqrt(static_cast<double>(k > 0 ? k : 1)); }
double bf16_atol(std::int64_t k) { return 1e-4 * std::sqrt(static_cast<double>(k > 0 ? k : 1)); }

std::vector<float> device_to_float(const DeviceBuffer<bf16>& buffer) {
  return kiln::testing::to_float(buffer.host());
}

// Sets the epilogue fusion for one scope; restores the default (fused) after.
struct EpilogueFusion {
  explicit EpilogueFusion(bool enabled) { kiln::cuda::set_matmul_epilogue_fusion(enabled); }
  ~EpilogueFusion() { kiln::cuda::set_matmul_epilogue_fusion(true); }
};

struct Shape {
  std::int64_t m, n, k;
};
// Non-square, odd, and a few model-sized (768, 3072) shapes.
const Shape kShapes[] = {{1, 7, 33},   {7, 33, 65},    {33, 65, 1},    {65, 129, 7},
                         {129, 1, 768}, {7, 768, 129}, {33, 3072, 65}, {768, 65, 3072}};

TEST(CudaMatmul, Fp32MatchesCpuForAllTransposesOnOddShapes) {
  KILN_REQUIRE_GPU();
  unsigned seed = 1;
  for (const Shape& s : kShapes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k << " ta=" << ta << " tb=" << tb);
        const auto a = random_normal(s.m * s.k, seed++), b = random_normal(s.k * s.n, seed++);
        const auto c0 = random_normal(s.m * s.n, seed++);
        // alpha and beta both in play.
        std::vector<float> expected = c0;
        kiln::cpu::matmul(expected.data(), a.data(), b.data(), s.m, s.n, s.k, ta, tb, 1.5f, 0.5f);
        DeviceBuffer<float> da(a), db(b), dc(c0);
        kiln::cuda::matmul(dc.get(), da.get(), db.get(), s.m, s.n, s.k, ta, tb, 1.5f, 0.5f);
        expect_close(dc.host(), expected, 1.5 * fp32_atol(s.k), 1e-5, "c (alpha 1.5, beta 0.5)");
        // beta = 0 must not read c (NaN there stays out of the result).
        std::vector<float> zero_c(s.m * s.n, 0.0f);
        kiln::cpu::matmul(zero_c.data(), a.data(), b.data(), s.m, s.n, s.k, ta, tb);
        DeviceBuffer<float> nan_c(std::vector<float>(s.m * s.n, std::numeric_limits<float>::quiet_NaN()));
        kiln::cuda::matmul(nan_c.get(), da.get(), db.get(), s.m, s.n, s.k, ta, tb);
        expect_close(nan_c.host(), zero_c, fp32_atol(s.k), 1e-5, "c (beta 0 over NaN)");
      }
    }
  }
}

TEST(CudaMatmul, Bf16MatchesCpuTwinForAllTransposes) {
  KILN_REQUIRE_GPU();
  unsigned seed = 100;
  for (const Shape& s : kShapes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        for (float beta : {0.0f, 1.0f}) {
          SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k << " ta=" << ta
                                          << " tb=" << tb << " beta=" << beta);
          // Unrounded inputs: both twins round them to nearest even.
          const auto a = random_normal(s.m * s.k, seed++), b = random_normal(s.k * s.n, seed++);
          const auto c0 = random_normal(s.m * s.n, seed++);
          std::vector<float> expected = c0;
          kiln::cpu::matmul_bf16(expected.data(), a.data(), b.data(), s.m, s.n, s.k, ta, tb, beta);
          DeviceBuffer<float> da(a), db(b), dc(c0);
          kiln::cuda::matmul_bf16(dc.get(), da.get(), db.get(), s.m, s.n, s.k, ta, tb, beta);
          expect_close(dc.host(), expected, bf16_atol(s.k), 1e-4, "c");
        }
      }
    }
  }
}

TEST(CudaMatmul, ZeroSizesLaunchNothingAndEmptyProductsScaleC) {
  KILN_REQUIRE_GPU();
  DeviceBuffer<float> a(std::vector<float>{1.0f}), b(std::vector<float>{1.0f});
  DeviceBuffer<float> c(std::vector<float>{1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f});
  kiln::cuda::matmul(c.get(), a.get(), b.get(), 0, 3, 5, false, false);
  kiln::cuda::matmul(c.get(), a.get(), b.get(), 2, 0, 5, false, false);
  kiln::cuda::matmul_bf16(c.get(), a.get(), b.get(), 0, 3, 5, false, false);
  EXPECT_EQ(c.host(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  // k = 0: c = beta c, as the CPU's BLAS.
  kiln::cuda::matmul(c.get(), a.get(), b.get(), 2, 3, 0, false, false, 1.0f, 0.5f);
  EXPECT_EQ(c.host(), (std::vector<float>{0.5f, 1, 1.5f, 2, 2.5f, 3}));
  kiln::cuda::matmul_bf16(c.get(), a.get(), b.get(), 2, 3, 0, true, true, 0.0f);
  EXPECT_EQ(c.host(), std::vector<float>(6, 0.0f));
  kiln::cuda::linear_backward(nullptr, c.get(), c.get(), a.get(), a.get(), b.get(), 0, 2, 3, false);
  kiln::cuda::linear_backward_bf16(nullptr, c.get(), c.get(), nullptr, nullptr, nullptr, 0, 2, 3);
  kiln::cuda::linear_forward_bf16(nullptr, nullptr, nullptr, nullptr, 0, 2, 3);
  kiln::cuda::linear_forward_gelu_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 2, 3);
  kiln::device::synchronize();
  EXPECT_EQ(c.host(), std::vector<float>(6, 0.0f));
}

struct LinearShape {
  std::int64_t rows, in, out;
};
const LinearShape kLinearShapes[] = {{1, 3, 7},     {7, 768, 2050}, {333, 769, 1},
                                     {333, 1, 768}, {33, 65, 129},  {64, 768, 3072}};

TEST(CudaLinear, ForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  unsigned seed = 200;
  for (bool fused : {true, false}) {
    EpilogueFusion fusion(fused);
    for (const LinearShape& s : kLinearShapes) {
      for (bool bf16 : {false, true}) {
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(testing::Message() << "rows=" << s.rows << " in=" << s.in << " out=" << s.out
                                          << " bf16=" << bf16 << " bias=" << with_bias << " fused=" << fused);
          const auto x = random_normal(s.rows * s.in, seed++), w = random_normal(s.in * s.out, seed++);
          const auto bias = random_normal(s.out, seed++);
          std::vector<float> expected(s.rows * s.out);
          kiln::cpu::linear_forward(expected.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr,
                                    s.rows, s.in, s.out, bf16);
          DeviceBuffer<float> dx(x), dw(w), dbias(bias), dout(s.rows * s.out);
          kiln::cuda::linear_forward(dout.get(), dx.get(), dw.get(), with_bias ? dbias.get() : nullptr,
                                     s.rows, s.in, s.out, bf16);
          expect_close(dout.host(), expected, bf16 ? bf16_atol(s.in) : fp32_atol(s.in), bf16 ? 1e-4 : 1e-5, "out");
        }
      }
    }
  }
}

TEST(CudaLinear, ForwardGeluMatchesCpu) {
  KILN_REQUIRE_GPU();
  const LinearShape shapes[] = {{7, 33, 8}, {33, 65, 33}, {64, 768, 3072}, {5, 3, 768}};
  unsigned seed = 300;
  for (bool fused : {true, false}) {
    EpilogueFusion fusion(fused);
    for (const LinearShape& s : shapes) {
      for (bool bf16 : {false, true}) {
        for (bool with_bias : {false, true}) {
          for (bool keep_pre : {false, true}) {
            SCOPED_TRACE(testing::Message() << "rows=" << s.rows << " in=" << s.in << " out=" << s.out << " bf16="
                                            << bf16 << " bias=" << with_bias << " pre=" << keep_pre << " fused=" << fused);
            const auto x = random_normal(s.rows * s.in, seed++), w = random_normal(s.in * s.out, seed++);
            const auto bias = random_normal(s.out, seed++);
            std::vector<float> out(s.rows * s.out), pre(s.rows * s.out);
            kiln::cpu::linear_forward_gelu(out.data(), pre.data(), x.data(), w.data(),
                                           with_bias ? bias.data() : nullptr, s.rows, s.in, s.out, bf16);
            DeviceBuffer<float> dx(x), dw(w), dbias(bias), dout(s.rows * s.out), dpre(s.rows * s.out);
            kiln::cuda::linear_forward_gelu(dout.get(), keep_pre ? dpre.get() : nullptr, dx.get(), dw.get(),
                                            with_bias ? dbias.get() : nullptr, s.rows, s.in, s.out, bf16);
            const double atol = bf16 ? bf16_atol(s.in) : fp32_atol(s.in);
            expect_close(dout.host(), out, atol, bf16 ? 1e-4 : 1e-5, "out");
            if (keep_pre) expect_close(dpre.host(), pre, atol, bf16 ? 1e-4 : 1e-5, "pre_gelu");
          }
        }
      }
    }
  }
}

TEST(CudaLinear, BackwardAccumulatesLikeCpu) {
  KILN_REQUIRE_GPU();
  unsigned seed = 400;
  for (const LinearShape& s : kLinearShapes) {
    for (bool bf16 : {false, true}) {
      for (bool with_dinp : {false, true}) {
        for (bool with_dbias : {false, true}) {
          SCOPED_TRACE(testing::Message() << "rows=" << s.rows << " in=" << s.in << " out=" << s.out << " bf16="
                                          << bf16 << " dinp=" << with_dinp << " dbias=" << with_dbias);
          const auto x = random_normal(s.rows * s.in, seed++), w = random_normal(s.in * s.out, seed++);
          const auto dy = random_normal(s.rows * s.out, seed++);
          // Non-zero gradients already there: the backward pass must add to them.
          const auto dw0 = random_normal(s.in * s.out, seed++), db0 = random_normal(s.out, seed++);
          std::vector<float> dx(s.rows * s.in), dw = dw0, db = db0;
          kiln::cpu::linear_backward(with_dinp ? dx.data() : nullptr, dw.data(), with_dbias ? db.data() : nullptr,
                                     dy.data(), x.data(), w.data(), s.rows, s.in, s.out, bf16);
          DeviceBuffer<float> gx(x), gw(w), gdy(dy), gdx(s.rows * s.in), gdw(dw0), gdb(db0);
          kiln::cuda::linear_backward(with_dinp ? gdx.get() : nullptr, gdw.get(), with_dbias ? gdb.get() : nullptr,
                                      gdy.get(), gx.get(), gw.get(), s.rows, s.in, s.out, bf16);
          if (with_dinp) expect_close(gdx.host(), dx, bf16 ? bf16_atol(s.out) : fp32_atol(s.out), bf16 ? 1e-4 : 1e-5, "dinp");
          expect_close(gdw.host(), dw, bf16 ? bf16_atol(s.rows) : fp32_atol(s.rows), bf16 ? 1e-4 : 1e-5, "dweight");
          // dbias sums fp32 dout in both precisions.
          expect_close(gdb.host(), db, fp32_atol(s.rows), 1e-5, "dbias");
        }
      }
    }
  }
}

TEST(CudaLinear, ParameterGradientsAreBitIdenticalBetweenRuns) {
  KILN_REQUIRE_GPU();
  const std::int64_t rows = 4099, in = 768, out = 769;
  const auto x = random_normal(rows * in, 500), w = random_normal(in * out, 501);
  const auto dy = random_normal(rows * out, 502);
  const auto dw0 = random_normal(in * out, 503), db0 = random_normal(out, 504);
  for (bool bf16 : {false, true}) {
    DeviceBuffer<float> gx(x), gw(w), gdy(dy), gdx(rows * in);
    DeviceBuffer<float> dw_first(dw0), db_first(db0), dw_second(dw0), db_second(db0);
    kiln::cuda::linear_backward(gdx.get(), dw_first.get(), db_first.get(), gdy.get(), gx.get(), gw.get(), rows, in, out, bf16);
    kiln::cuda::linear_backward(gdx.get(), dw_second.get(), db_second.get(), gdy.get(), gx.get(), gw.get(), rows, in, out, bf16);
    EXPECT_EQ(dw_first.host(), dw_second.host()) << "bf16=" << bf16;
    EXPECT_EQ(db_first.host(), db_second.host()) << "bf16=" << bf16;
  }
  // The bf16 training path.
  DeviceBuffer<bf16> hx(kiln::testing::to_bf16(x)), hw(kiln::testing::to_bf16(w)), hdy(kiln::testing::to_bf16(dy));
  DeviceBuffer<bf16> hdx(rows * in);
  DeviceBuffer<float> dw_first(dw0), db_first(db0), dw_second(dw0), db_second(db0);
  kiln::cuda::linear_backward_bf16(hdx.get(), dw_first.get(), db_first.get(), hdy.get(), hx.get(), hw.get(), rows, in, out);
  kiln::cuda::linear_backward_bf16(hdx.get(), dw_second.get(), db_second.get(), hdy.get(), hx.get(), hw.get(), rows, in, out);
  EXPECT_EQ(dw_first.host(), dw_second.host()) << "linear_backward_bf16";
  EXPECT_EQ(db_first.host(), db_second.host()) << "linear_backward_bf16";
}

TEST(CudaLinearBf16, ForwardMatchesCpuOnRoundedInputs) {
  KILN_REQUIRE_GPU();
  unsigned seed = 600;
  for (bool fused : {true, false}) {
    EpilogueFusion fusion(fused);
    for (const LinearShape& s : kLinearShapes) {
      for (bool with_bias : {false, true}) {
        for (bool gelu : {false, true}) {
          for (bool keep_pre : {false, true}) {
            if (!gelu && keep_pre) continue;
            SCOPED_TRACE(testing::Message() << "rows=" << s.rows << " in=" << s.in << " out=" << s.out << " bias="
                                            << with_bias << " gelu=" << gelu << " pre=" << keep_pre << " fused=" << fused);
            const auto x = rounded(random_normal(s.rows * s.in, seed++)), w = rounded(random_normal(s.in * s.out, seed++));
            const auto bias = rounded(random_normal(s.out, seed++));  // the bf16 weight copy's
            std::vector<float> out(s.rows * s.out), pre(s.rows * s.out);
            const float* b = with_bias ? bias.data() : nullptr;
            if (gelu)
              kiln::cpu::linear_forward_gelu(out.data(), pre.data(), x.data(), w.data(), b, s.rows, s.in, s.out, false);
            else
              kiln::cpu::linear_forward(out.data(), x.data(), w.data(), b, s.rows, s.in, s.out, false);
            DeviceBuffer<bf16> hx(kiln::testing::to_bf16(x)), hw(kiln::testing::to_bf16(w));
            DeviceBuffer<bf16> hout(s.rows * s.out), hpre(s.rows * s.out);
            DeviceBuffer<bf16> dbias(kiln::testing::to_bf16(bias));
            const bf16* gb = with_bias ? dbias.get() : nullptr;
            if (gelu)
              kiln::cuda::linear_forward_gelu_bf16(hout.get(), keep_pre ? hpre.get() : nullptr, hx.get(), hw.get(), gb,
                                                   s.rows, s.in, s.out);
            else
              kiln::cuda::linear_forward_bf16(hout.get(), hx.get(), hw.get(), gb, s.rows, s.in, s.out);
            // cuBLASLt's GELU accuracy is not documented: 1e-3 absolute on top (see the next test).
            const double atol = bf16_atol(s.in) + (gelu ? 1e-3 : 0.0);
            // The fused bias epilogue rounds x w to bf16 first (kiln::testing::bf16_bias_epilogue_slack).
            std::vector<double> slack;
            if (fused && with_bias) {
              std::vector<float> product(s.rows * s.out);
              kiln::cpu::linear_forward(product.data(), x.data(), w.data(), nullptr, s.rows, s.in, s.out, false);
              slack = kiln::testing::bf16_bias_epilogue_slack(product, gelu);
            }
            const std::vector<double>* per_element = slack.empty() ? nullptr : &slack;
            expect_close(device_to_float(hout), out, atol, 1e-2, "out", per_element);
            if (keep_pre) expect_close(device_to_float(hpre), pre, bf16_atol(s.in), 1e-2, "pre_gelu", per_element);
          }
        }
      }
    }
  }
}

// cuBLASLt documents GELU epilogues without saying which GELU. GPT-2 uses the tanh form; the
// erf form differs from it by up to 4.7e-4, and by 10-80% of the value for x in [-4, -3].
// Exact pre-activations x (in_dim 1, weight 1, out_dim 8 so the fused epilogue is eligible)
// and the tanh form in double: rounding to bf16 (rtol 8e-3) plus 1e-4 absolute.
TEST(CudaLinearBf16, GeluEpilogueIsTheTanhForm) {
  KILN_REQUIRE_GPU();
  const std::int64_t rows = 161, out = 8;
  std::vector<float> x(rows);
  for (std::int64_t i = 0; i < rows; ++i) x[i] = round_bf16(-5.0f + 0.0625f * static_cast<float>(i));
  std::vector<float> expected(rows * out), expected_pre(rows * out);
  for (std::int64_t i = 0; i < rows; ++i) {
    const double v = x[i];
    const double g = 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    for (std::int64_t j = 0; j < out; ++j) {
      expected[i * out + j] = static_cast<float>(g);
      expected_pre[i * out + j] = x[i];
    }
  }
  for (bool with_bias : {false, true}) {
    DeviceBuffer<bf16> hx(kiln::testing::to_bf16(x)), hw(kiln::testing::to_bf16(std::vector<float>(out, 1.0f)));
    DeviceBuffer<bf16> hout(rows * out), hpre(rows * out);
    DeviceBuffer<bf16> zero_bias(out);
    kiln::cuda::linear_forward_gelu_bf16(hout.get(), hpre.get(), hx.get(), hw.get(), with_bias ? zero_bias.get() : nullptr,
                                         rows, 1, out);
    expect_close(device_to_float(hout), expected, 1e-4, 8e-3, "gelu");
    expect_close(device_to_float(hpre), expected_pre, 0.0, 0.0, "pre_gelu");
  }
}

TEST(CudaLinearBf16, BackwardMatchesCpuOnRoundedInputs) {
  KILN_REQUIRE_GPU();
  unsigned seed = 700;
  for (const LinearShape& s : kLinearShapes) {
    for (bool with_dinp : {false, true}) {
      for (bool with_dbias : {false, true}) {
        SCOPED_TRACE(testing::Message() << "rows=" << s.rows << " in=" << s.in << " out=" << s.out
                                        << " dinp=" << with_dinp << " dbias=" << with_dbias);
        const auto x = rounded(random_normal(s.rows * s.in, seed++)), w = rounded(random_normal(s.in * s.out, seed++));
        const auto dy = rounded(random_normal(s.rows * s.out, seed++));
        const auto dw0 = random_normal(s.in * s.out, seed++), db0 = random_normal(s.out, seed++);
        std::vector<float> dx(s.rows * s.in), dw = dw0, db = db0;
        kiln::cpu::linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), s.rows, s.in,
                                   s.out, false);
        DeviceBuffer<bf16> hx(kiln::testing::to_bf16(x)), hw(kiln::testing::to_bf16(w)), hdy(kiln::testing::to_bf16(dy));
        DeviceBuffer<bf16> hdx(s.rows * s.in);
        DeviceBuffer<float> gdw(dw0), gdb(db0);
        kiln::cuda::linear_backward_bf16(with_dinp ? hdx.get() : nullptr, gdw.get(), with_dbias ? gdb.get() : nullptr,
                                         hdy.get(), hx.get(), hw.get(), s.rows, s.in, s.out);
        if (with_dinp) expect_close(device_to_float(hdx), dx, bf16_atol(s.out), 1e-2, "dinp");
        expect_close(gdw.host(), dw, bf16_atol(s.rows), 1e-4, "dweight");
        expect_close(gdb.host(), with_dbias ? db : db0, fp32_atol(s.rows), 1e-5, "dbias");
      }
    }
  }
}

}  // namespace
