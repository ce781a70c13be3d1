// Gradient and reference checks of every CPU kernel: finite differences for backward passes,
// a naive double-precision attention for the tiled one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "grad_check.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/optimizer.h"

using kiln::testing::dot;
using kiln::testing::expect_gradient;
using kiln::testing::random_vector;

TEST(Kernels, MatmulMatchesNaiveForAllTransposes) {
  const int m = 7, n = 5, k = 9;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      auto a = random_vector(m * k, 1), b = random_vector(k * n, 2);
      std::vector<float> c(m * n, 1.0f);
      kiln::cpu::matmul(c.data(), a.data(), b.data(), m, n, k, ta, tb, 1.0f, 0.5f);
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
          double ref = 0.5;
          for (int p = 0; p < k; ++p)
            ref += static_cast<double>(ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
          EXPECT_NEAR(c[i * n + j], ref, 1e-4) << "ta=" << ta << " tb=" << tb;
        }
    }
  }
}

TEST(Kernels, Bf16MatmulIsCloseToFp32) {
  const int m = 33, n = 17, k = 65;
  auto a = random_vector(m * k, 3), b = random_vector(k * n, 4);
  std::vector<float> c32(m * n), c16(m * n);
  kiln::cpu::matmul(c32.data(), a.data(), b.data(), m, n, k, false, true);
  kiln::cpu::matmul_bf16(c16.data(), a.data(), b.data(), m, n, k, false, true);
  for (int i = 0; i < m * n; ++i) EXPECT_NEAR(c16[i], c32[i], 0.05 + 0.02 * std::abs(c32[i]));
}

TEST(Kernels, LinearGradients) {
  const int rows = 6, in = 5, out = 4;
  auto x = random_vector(rows * in, 5), w = random_vector(in * out, 6), b = random_vector(out, 7);
  auto weights = random_vector(rows * out, 8);
  auto f = [&] {
    std::vector<float> y(rows * out);
    kiln::cpu::linear_forward(y.data(), x.data(), w.data(), b.data(), rows, in, out, false);
    return dot(y, weights);
  };
  std::vector<float> dx(rows * in), dw(in * out, 0.0f), db(out, 0.0f);
  kiln::cpu::linear_backward(dx.data(), dw.data(), db.data(), weights.data(), x.data(), w.data(), rows, in, out, false);
  expect_gradient("dx", x, dx, f);
  expect_gradient("dw", w, dw, f);
  expect_gradient("db", b, db, f);
}

TEST(Kernels, LayerNormGradients) {
  const int rows = 5, c = 11;
  auto x = random_vector(rows * c, 9, 2.0f), g = random_vector(c, 10), b = random_vector(c, 11);
  auto weights = random_vector(rows * c, 12);
  std::vector<float> y(rows * c), mean(rows), rstd(rows);
  auto f = [&] {
    kiln::cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), g.data(), b.data(), rows, c);
    return dot(y, weights);
  };
  f();
  for (int r = 0; r < rows; ++r) {  // normalised rows have mean 0 and unit variance before gamma
    double m = 0;
    for (int i = 0; i < c; ++i) m += x[r * c + i];
    EXPECT_NEAR(mean[r], m / c, 1e-5);
  }
  std::vector<float> dx(rows * c, 0.0f), dg(c, 0.0f), db(c, 0.0f);
  kiln::cpu::layernorm_backward(dx.data(), dg.data(), db.data(), weights.data(), x.data(), g.data(), mean.data(), rstd.data(), rows, c);
  expect_gradient("dx", x, dx, f, 1e-2f, 5e-3, 3e-2);
  expect_gradient("dgamma", g, dg, f);
  expect_gradient("dbeta", b, db, f);
}

TEST(Kernels, GeluMatchesFormulaAndGradient) {
  auto x = random_vector(257, 13, 3.0f), weights = random_vector(257, 14);
  std::vector<float> y(x.size());
  kiln::cpu::gelu_forward(y.data(), x.data(), x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    const double ref = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    EXPECT_NEAR(y[i], ref, 1e-5 + 1e-5 * std::abs(ref));
  }
  auto f = [&] {
    kiln::cpu::gelu_forward(y.data(), x.data(), x.size());
    return dot(y, weights);
  };
  std::vector<float> dx(x.size());
  kiln::cpu::gelu_backward(dx.data(), x.data(), weights.data(), x.size());
  expect_gradient("dx", x, dx, f, 1e-2f, 2e-3, 1e-2);
}

TEST(Kernels, CrossEntropyWithMaskAndPaddedVocab) {
  const int n = 6, vocab = 13, padded = 16;
  auto logits = random_vector(n * padded, 15, 2.0f);
  for (int i = 0; i < n; ++i)
    for (int j = vocab; j < padded; ++j) logits[i * padded + j] = 50.0f;  // must be ignored
  std::vector<std::int32_t> targets = {0, 3, 12, 7, 7, 1};
  std::vector<std::uint8_t> mask = {1, 0, 1, 1, 0, 1};
  std::vector<float> losses(n);
  auto f = [&] {
    auto copy = logits;
    kiln::cpu::softmax_cross_entropy(losses.data(), copy.data(), targets.data(), mask.data(), n, vocab, padded, 0.0f);
    double s = 0;
    for (float l : losses) s += l;
    return s * 0.25;
  };
  f();
  for (int i = 0; i < n; ++i) {
    if (!mask[i]) {
      EXPECT_EQ(losses[i], 0.0f);
      continue;
    }
    double z = 0;
    for (int j = 0; j < vocab; ++j) z += std::exp(static_cast<double>(logits[i * padded + j]));
    EXPECT_NEAR(losses[i], std::log(z) - logits[i * padded + targets[i]], 1e-5);
  }
  auto grad = logits;
  kiln::cpu::softmax_cross_entropy(losses.data(), grad.data(), targets.data(), mask.data(), n, vocab, padded, 0.25f);
  for (int i = 0; i < n; ++i)
    for (int j = vocab; j < padded; ++j) EXPECT_EQ(grad[i * padded + j], 0.0f);
  expect_gradient("dlogits", logits, grad, f, 1e-2f, 1e-3, 2e-2);
}

// Per-token float weights (negative and zero among them) and a temperature: each loss is
// w * (logsumexp(z) - z[target]) with z = logits / T, and the gradient is that of the weighted
// sum (finite differences). Weights of 1 and T = 1 give the plain loss's bits.
TEST(Kernels, CrossEntropyWithWeightsAndTemperature) {
  const int n = 6, vocab = 13, padded = 16;
  const float temperature = 0.7f, it = 1.0f / temperature;
  auto logits = random_vector(n * padded, 16, 2.0f);
  std::vector<std::int32_t> targets = {0, 3, 12, 7, 7, 1};
  std::vector<std::uint8_t> mask = {1, 0, 1, 1, 1, 1};
  std::vector<float> weights = {0.5f, 3.0f, -1.25f, 0.0f, 2.0f, 1.0f};
  std::vector<float> losses(n);
  auto f = [&] {
    auto copy = logits;
    kiln::cpu::softmax_cross_entropy(losses.data(), copy.data(), targets.data(), mask.data(), n, vocab, padded, 0.0f,
                                     weights.data(), it);
    double s = 0;
    for (float l : losses) s += l;
    return s * 0.25;
  };
  f();
  for (int i = 0; i < n; ++i) {
    if (!mask[i] || weights[i] == 0.0f) {
      EXPECT_EQ(losses[i], 0.0f);
      continue;
    }
    double z = 0;
    for (int j = 0; j < vocab; ++j) z += std::exp(static_cast<double>(logits[i * padded + j]) * it);
    EXPECT_NEAR(losses[i], weights[i] * (std::log(z) - logits[i * padded + targets[i]] * it), 2e-5);
  }
  auto grad = logits;
  kiln::cpu::softmax_cross_entropy(losses.data(), grad.data(), targets.data(), mask.data(), n, vocab, padded, 0.25f,
                                   weights.data(), it);
  for (int j = 0; j < padded; ++j) EXPECT_EQ(grad[3 * padded + j], 0.0f);  // weight 0: no gradient
  expect_gradient("dlogits", logits, grad, f, 1e-2f, 1e-3, 2e-2);

  const std::vector<float> ones(n, 1.0f);
  auto plain = logits, weighted = logits;
  std::vector<float> plain_losses(n), weighted_losses(n);
  kiln::cpu::softmax_cross_entropy(plain_losses.data(), plain.data(), targets.data(), mask.data(), n, vocab, padded, 0.25f);
  kiln::cpu::softmax_cross_entropy(weighted_losses.data(), weighted.data(), targets.data(), mask.data(), n, vocab,
                                   padded, 0.25f, ones.data(), 1.0f);
  EXPECT_EQ(plain, weighted);
  EXPECT_EQ(plain_losses, weighted_losses);
}

TEST(Kernels, EmbeddingGradients) {
  const int n = 7, c = 40, vocab = 5, positions = 4;
  std::vector<std::int32_t> tokens = {0, 3, 3, 1, 4, 0, 3}, pos = {0, 1, 2, 3, 0, 1, 2};
  auto wte = random_vector(vocab * c, 16), wpe = random_vector(positions * c, 17);
  auto weights = random_vector(n * c, 18);
  auto f = [&] {
    std::vector<float> y(n * c);
    kiln::cpu::embedding_forward(y.data(), tokens.data(), pos.data(), wte.data(), wpe.data(), n, c, 0, vocab);
    return dot(y, weights);
  };
  std::vector<float> dwte(vocab * c, 0.0f), dwpe(positions * c, 0.0f);
  kiln::cpu::embedding_backward(dwte.data(), dwpe.data(), weights.data(), tokens.data(), pos.data(), n, c, 0, vocab);
  expect_gradient("dwte", wte, dwte, f);
  expect_gradient("dwpe", wpe, dwpe, f);
}

// Attention (dense and every sparse layout) is checked against a naive implementation in
// tests/core/test_attention_layout.cpp, beside the layouts it takes.

TEST(Kernels, AdamWMatchesReferenceFormula) {
  auto p = random_vector(10, 21), g = random_vector(10, 22);
  std::vector<float> m(10, 0.1f), v(10, 0.2f);
  auto p0 = p, m0 = m, v0 = v;
  kiln::cpu::AdamWStep s{1e-2f, 0.9f, 0.95f, 1e-8f, 0.5f, 3};
  // Elements 0..5 decay, 6..9 do not.
  const kiln::cpu::AdamWSegment segments[] = {{0, 6, 0.1f}, {6, 4, 0.0f}};
  kiln::cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), segments, 2, s);
  for (int i = 0; i < 10; ++i) {
    const double wd = i < 6 ? 0.1 : 0.0;
    const double gi = g[i] * 0.5;
    const double mi = 0.9 * m0[i] + 0.1 * gi, vi = 0.95 * v0[i] + 0.05 * gi * gi;
    const double bc1 = 1 - std::pow(0.9, 3), bc2 = 1 - std::pow(0.95, 3);
    const double ref = p0[i] * (1 - 1e-2 * wd) - 1e-2 / bc1 * mi / (std::sqrt(vi) / std::sqrt(bc2) + 1e-8);
    EXPECT_NEAR(p[i], ref, 1e-6);
    EXPECT_NEAR(m[i], mi, 1e-7);
    EXPECT_NEAR(v[i], vi, 1e-7);
  }
}

TEST(Kernels, SumSquaresIsExactForSmallIntegers) {
  std::vector<float> x(200001, 2.0f);
  EXPECT_EQ(kiln::cpu::sum_squares(x.data(), x.size()), 800004.0);
}

// GPT-2's 50257 columns, logits of spread 3: the loss and every probability against a softmax in
// double. The GPU kernel's tree sum meets 1e-5 relative here; the CPU twin must too, whatever
// vector width the compiler chose (a single fp32 sum over the row was 7e-5 off on baseline x86-64,
// which is how the first run on a real GPU found it).
TEST(Kernels, CrossEntropyOverAGpt2VocabularyMatchesDoublePrecision) {
  const int n = 3, vocab = 50257, padded = 50304;
  auto logits = random_vector(n * padded, 41, 3.0f);
  const std::vector<std::int32_t> targets = {0, 1234, vocab - 1};
  auto grad = logits;
  std::vector<float> losses(n);
  kiln::cpu::softmax_cross_entropy(losses.data(), grad.data(), targets.data(), nullptr, n, vocab, padded, 1.0f);
  for (int i = 0; i < n; ++i) {
    const float* row = &logits[static_cast<std::size_t>(i) * padded];
    double m = -INFINITY, sum = 0.0;
    for (int j = 0; j < vocab; ++j) m = std::max(m, static_cast<double>(row[j]));
    for (int j = 0; j < vocab; ++j) sum += std::exp(row[j] - m);
    EXPECT_NEAR(losses[i], std::log(sum) + m - row[targets[i]], 1e-5 * (std::log(sum) + m - row[targets[i]]));
    int bad = 0;
    for (int j = 0; j < vocab; ++j) {
      const double p = std::exp(row[j] - m) / sum - (j == targets[i] ? 1.0 : 0.0);
      if (std::fabs(grad[static_cast<std::size_t>(i) * padded + j] - p) > 1e-5 * std::fabs(p) + 1e-12) ++bad;
    }
    EXPECT_EQ(bad, 0) << "row " << i;
  }
}

TEST(Kernels, VocabParallelCrossEntropyMatchesFused) {
  for (const bool weighted : {false, true}) {
    SCOPED_TRACE(weighted ? "weights, temperature 2" : "plain");
    const std::vector<float> w = {1.5f, -0.5f, 2.0f, 0.0f, 1.0f};
    const float* weights = weighted ? w.data() : nullptr;
    const float it = weighted ? 0.5f : 1.0f;
    // Vocabulary 27 padded to 32, split over 2 "ranks" of 16 columns (the second holds 11 real).
    const int n = 5, vocab = 27, padded = 32, shard = 16;
    auto logits = random_vector(n * padded, 31, 2.0f);
    std::vector<std::int32_t> targets = {0, 15, 16, 26, 3};
    std::vector<std::uint8_t> mask = {1, 1, 0, 1, 1};
    auto fused = logits;
    std::vector<float> losses(n);
    kiln::cpu::softmax_cross_entropy(losses.data(), fused.data(), targets.data(), mask.data(), n, vocab, padded, 0.5f, weights, it);
    std::vector<std::vector<float>> parts(2, std::vector<float>(n * shard));
    for (int r = 0; r < 2; ++r)
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < shard; ++j) parts[r][i * shard + j] = logits[i * padded + r * shard + j];
    auto real = [&](int r) { return std::min(shard, std::max(0, vocab - r * shard)); };
    std::vector<float> m(n, -INFINITY), sum(n, 0.0f), target(n, 0.0f), tmp(n), tmp2(n);
    for (int r = 0; r < 2; ++r) {
      kiln::cpu::cross_entropy_local_max(tmp.data(), parts[r].data(), n, real(r), shard, it);
      for (int i = 0; i < n; ++i) m[i] = std::max(m[i], tmp[i]);
    }
    for (int r = 0; r < 2; ++r) {
      kiln::cpu::cross_entropy_local_sums(tmp.data(), tmp2.data(), parts[r].data(), m.data(), targets.data(), n, real(r), shard, r * shard, it);
      for (int i = 0; i < n; ++i) {
        sum[i] += tmp[i];
        target[i] += tmp2[i];
      }
    }
    for (int i = 0; i < n; ++i)
      if (mask[i] && (!weights || weights[i] != 0.0f))
        EXPECT_NEAR((std::log(sum[i]) + m[i] - target[i]) * (weights ? weights[i] : 1.0f), losses[i], 1e-5);
    for (int r = 0; r < 2; ++r) {
      kiln::cpu::cross_entropy_local_grad(parts[r].data(), m.data(), sum.data(), targets.data(), mask.data(), n, real(r), shard, r * shard, 0.5f, weights, it);
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < shard; ++j)
          EXPECT_NEAR(parts[r][i * shard + j], fused[i * padded + r * shard + j], 1e-6) << r << " " << i << " " << j;
    }
  }
}

TEST(Kernels, EmbeddingShardSeesOnlyItsTokens) {
  const int n = 4, c = 3;
  std::vector<std::int32_t> tokens = {0, 5, 6, 9}, pos = {0, 1, 2, 3};
  std::vector<float> shard(4 * c, 1.0f);  // rows of tokens 5..8
  std::vector<float> out(n * c);
  kiln::cpu::embedding_forward(out.data(), tokens.data(), pos.data(), shard.data(), nullptr, n, c, 5, 4);
  EXPECT_EQ(out, (std::vector<float>{0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0}));
  std::vector<float> dshard(4 * c, 0.0f), dout(n * c, 2.0f);
  kiln::cpu::embedding_backward(dshard.data(), nullptr, dout.data(), tokens.data(), pos.data(), n, c, 5, 4);
  EXPECT_EQ(dshard, (std::vector<float>{2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0}));
}
