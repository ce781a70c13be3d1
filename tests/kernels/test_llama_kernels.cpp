// The LLaMA family's CPU kernels (kernels/llama.h) against their formulas in double precision
// and their gradients against finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "grad_check.h"
#include "kernels/elementwise.h"
#include "kernels/llama.h"

using kiln::testing::dot;
using kiln::testing::expect_gradient;
using kiln::testing::random_vector;

TEST(LlamaKernels, RmsNormMatchesFormulaAndGradient) {
  const int rows = 5, c = 24;
  const float eps = 1e-6f;
  auto x = random_vector(rows * c, 40, 1.5f), gamma = random_vector(c, 41), weights = random_vector(rows * c, 42);
  std::vector<float> y(rows * c), rstd(rows);
  kiln::cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), gamma.data(), rows, c, eps);
  for (int r = 0; r < rows; ++r) {
    double squares = 0;
    for (int i = 0; i < c; ++i) squares += static_cast<double>(x[r * c + i]) * x[r * c + i];
    const double s = 1.0 / std::sqrt(squares / c + eps);
    EXPECT_NEAR(rstd[r], s, 1e-5 * s);
    for (int i = 0; i < c; ++i) EXPECT_NEAR(y[r * c + i], x[r * c + i] * s * gamma[i], 1e-5);
  }
  auto f = [&] {
    kiln::cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), gamma.data(), rows, c, eps);
    return dot(y, weights);
  };
  f();
  std::vector<float> dx(rows * c, 0.5f), dgamma(c, 0.25f);  // both accumulate
  kiln::cpu::rmsnorm_backward(dx.data(), dgamma.data(), weights.data(), x.data(), gamma.data(), rstd.data(), rows, c);
  for (float& v : dx) v -= 0.5f;
  for (float& v : dgamma) v -= 0.25f;
  expect_gradient("dx", x, dx, f, 1e-2f, 2e-3, 1e-2);
  expect_gradient("dgamma", gamma, dgamma, f, 1e-2f, 2e-3, 1e-2);

  // Fused with the residual add: the same bits as the add then the norm.
  auto delta = random_vector(rows * c, 43);
  std::vector<float> res(rows * c), res2(rows * c), y2(rows * c), rstd2(rows);
  kiln::cpu::residual_rmsnorm_forward(res.data(), y.data(), rstd.data(), x.data(), delta.data(), gamma.data(), rows,
                                      c, eps);
  kiln::cpu::add(res2.data(), x.data(), delta.data(), rows * c);
  kiln::cpu::rmsnorm_forward(y2.data(), rstd2.data(), res2.data(), gamma.data(), rows, c, eps);
  EXPECT_EQ(res, res2);
  EXPECT_EQ(y, y2);
  EXPECT_EQ(rstd, rstd2);
}

// Hugging Face's rotate-half rotation at each row's position, q and k heads only (grouped: 4 q
// heads, 2 kv heads), and its gradient (the inverse rotation).
TEST(LlamaKernels, RopeRotatesQAndKByPosition) {
  const int rows = 6, hd = 8, half = hd / 2, qh = 4, kvh = 2, width = (qh + 2 * kvh) * hd, context = 16;
  const float theta = 10000.0f;
  std::vector<float> cos(context * half), sin(context * half);
  kiln::rope_tables(cos.data(), sin.data(), context, hd, theta);
  const std::vector<std::int32_t> positions = {0, 1, 2, 15, 7, 3};
  auto x = random_vector(rows * width, 50), weights = random_vector(rows * width, 51);
  std::vector<float> y = x;
  kiln::cpu::rope_forward(y.data(), cos.data(), sin.data(), positions.data(), rows, qh, kvh, hd);
  for (int r = 0; r < rows; ++r)
    for (int h = 0; h < qh + 2 * kvh; ++h)
      for (int i = 0; i < hd; ++i) {
        const float* in = x.data() + r * width + h * hd;
        const double got = y[r * width + h * hd + i];
        if (h >= qh + kvh) {  // v
          EXPECT_EQ(got, in[i]);
          continue;
        }
        const int j = i % half;
        const double angle = positions[r] * std::pow(static_cast<double>(theta), -2.0 * j / hd);
        const double want = i < half ? in[i] * std::cos(angle) - in[i + half] * std::sin(angle)
                                     : in[i] * std::cos(angle) + in[i - half] * std::sin(angle);
        EXPECT_NEAR(got, want, 2e-5) << "row " << r << " head " << h << " dim " << i;
      }
  auto f = [&] {
    y = x;
    kiln::cpu::rope_forward(y.data(), cos.data(), sin.data(), positions.data(), rows, qh, kvh, hd);
    return dot(y, weights);
  };
  std::vector<float> dx = weights;
  kiln::cpu::rope_backward(dx.data(), cos.data(), sin.data(), positions.data(), rows, qh, kvh, hd);
  expect_gradient("dqkv", x, dx, f, 1e-2f, 1e-3, 1e-2);
}

TEST(LlamaKernels, SwigluMatchesFormulaAndGradient) {
  const int rows = 3, f = 20;
  auto x = random_vector(rows * 2 * f, 60, 3.0f), weights = random_vector(rows * f, 61);
  std::vector<float> y(rows * f);
  kiln::cpu::swiglu_forward(y.data(), x.data(), rows, f);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < f; ++i) {
      const double g = x[r * 2 * f + i], u = x[r * 2 * f + f + i];
      EXPECT_NEAR(y[r * f + i], g / (1 + std::exp(-g)) * u, 1e-5 + 1e-5 * std::abs(g * u));
    }
  auto obj = [&] {
    kiln::cpu::swiglu_forward(y.data(), x.data(), rows, f);
    return dot(y, weights);
  };
  std::vector<float> dx(rows * 2 * f);
  kiln::cpu::swiglu_backward(dx.data(), x.data(), weights.data(), rows, f);
  expect_gradient("dx", x, dx, obj, 1e-2f, 2e-3, 1e-2);
}

// Llama 3's frequency scaling of the rotary tables against the formula in double precision:
// high frequencies kept, low ones divided by the factor, the band between interpolated.
TEST(LlamaKernels, RopeTablesWithLlama3Scaling) {
  const int positions = 64, hd = 32, half = hd / 2;
  const float theta = 500000.0f;
  kiln::RopeScaling scaling;
  scaling.llama3 = true;
  scaling.factor = 8.0f;
  scaling.low_freq_factor = 1.0f;
  scaling.high_freq_factor = 4.0f;
  scaling.original_context = 64;  // small, so all three bands occur among 16 frequencies
  std::vector<float> cos(positions * half), sin(positions * half), cos0(positions * half), sin0(positions * half);
  kiln::rope_tables(cos.data(), sin.data(), positions, hd, theta, scaling);
  kiln::rope_tables(cos0.data(), sin0.data(), positions, hd, theta);
  int kept = 0, scaled = 0, between = 0;
  for (int i = 0; i < half; ++i) {
    double f = std::pow(static_cast<double>(theta), -2.0 * i / hd);
    const double wavelen = 2 * M_PI / f, original = scaling.original_context;
    if (wavelen < original / 4.0) {
      ++kept;
    } else if (wavelen > original / 1.0) {
      f /= 8.0;
      ++scaled;
    } else {
      const double s = (original / wavelen - 1.0) / (4.0 - 1.0);
      f = (1 - s) * f / 8.0 + s * f;
      ++between;
    }
    for (int p = 0; p < positions; ++p) {
      EXPECT_NEAR(cos[p * half + i], std::cos(p * f), 2e-4) << "position " << p << " frequency " << i;
      EXPECT_NEAR(sin[p * half + i], std::sin(p * f), 2e-4) << "position " << p << " frequency " << i;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(scaled, 0);
  EXPECT_GT(between, 0);
  EXPECT_EQ(cos[5 * half], cos0[5 * half]);  // the highest frequency is kept exactly
}
