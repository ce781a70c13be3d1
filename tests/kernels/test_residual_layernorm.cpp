// The fused residual add + LayerNorm CPU twin against add() then layernorm_forward() (bit for
// bit), and the row split of the CUDA LayerNorm kernels (plan_layernorm), checked on the host.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/layernorm.h"

namespace {

std::vector<float> normal_vector(std::size_t n, unsigned seed, float mean = 0.0f, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(ResidualLayerNorm, CpuTwinEqualsAddThenLayerNormBitForBit) {
  const std::int64_t shapes[][2] = {{1, 1}, {7, 3}, {5, 768}, {33, 769}, {3, 1600}, {2, 4100}};
  for (const auto& shape : shapes) {
    const std::int64_t rows = shape[0], c = shape[1];
    const auto n = static_cast<std::size_t>(rows * c);
    const auto inp = normal_vector(n, 1, 0.5f), delta = normal_vector(n, 2, 0.0f, 0.3f);
    const auto gamma = normal_vector(c, 3, 1.0f, 0.1f), beta = normal_vector(c, 4, 0.0f, 0.1f);

    std::vector<float> sum(n), out_ref(n), mean_ref(rows), rstd_ref(rows);
    kiln::cpu::add(sum.data(), inp.data(), delta.data(), rows * c);
    kiln::cpu::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), sum.data(),
                                 gamma.data(), beta.data(), rows, c);

    std::vector<float> residual(n), out(n), mean(rows), rstd(rows);
    kiln::cpu::residual_layernorm_forward(residual.data(), out.data(), mean.data(), rstd.data(),
                                          inp.data(), delta.data(), gamma.data(), beta.data(), rows, c);
    EXPECT_TRUE(bits_equal(residual, sum)) << rows << "x" << c;
    EXPECT_TRUE(bits_equal(out, out_ref)) << rows << "x" << c;
    EXPECT_TRUE(bits_equal(mean, mean_ref)) << rows << "x" << c;
    EXPECT_TRUE(bits_equal(rstd, rstd_ref)) << rows << "x" << c;

    // In place: the residual stream updated where it lies.
    std::vector<float> stream = inp;
    kiln::cpu::residual_layernorm_forward(stream.data(), out.data(), mean.data(), rstd.data(),
                                          stream.data(), delta.data(), gamma.data(), beta.data(), rows, c);
    EXPECT_TRUE(bits_equal(stream, sum)) << rows << "x" << c;
    EXPECT_TRUE(bits_equal(out, out_ref)) << rows << "x" << c;
  }
}

TEST(ResidualLayerNorm, ZeroRowsTouchNothing) {
  float sentinel = 42.0f;
  kiln::cpu::residual_layernorm_forward(&sentinel, &sentinel, &sentinel, &sentinel, &sentinel,
                                        &sentinel, &sentinel, &sentinel, 0, 768);
  EXPECT_EQ(sentinel, 42.0f);
}

// Every c up to past the register limits, each access width, both kernels' limits: the plan
// covers the row, respects the launch bounds and uses only the instantiated unit counts.
TEST(ResidualLayerNorm, CudaRowPlanCoversEveryRowWithinLaunchBounds) {
  struct Limits {
    int max_group, block_threads;
  };
  const Limits limits[] = {{1024, 256}, {512, 256}};  // forward, backward (kernels/cuda/layernorm.cu)
  for (const Limits& lim : limits) {
    for (int vec : {1, 4, 8}) {
      const int max_units = kiln::cuda::layernorm_max_units(vec);
      ASSERT_EQ(max_units & (max_units - 1), 0) << "unit counts are instantiated as powers of two";
      for (std::int64_t c = vec; c <= 40000; c += vec) {
        const kiln::cuda::LayerNormPlan p = kiln::cuda::plan_layernorm(c, vec, lim.max_group, lim.block_threads);
        SCOPED_TRACE(testing::Message() << "c=" << c << " vec=" << vec << " max_group=" << lim.max_group);
        ASSERT_EQ(p.vec, vec);
        ASSERT_EQ(p.group % 32, 0);
        ASSERT_GE(p.group, 32);
        ASSERT_LE(p.group, lim.max_group);
        ASSERT_GE(p.rows_per_block, 1);
        ASSERT_LE(p.group * p.rows_per_block, lim.max_group);
        if (p.units == 0) {
          // Only rows that registers cannot hold take the re-reading path.
          ASSERT_GT(c / vec, static_cast<std::int64_t>(lim.max_group) * max_units);
          ASSERT_EQ(p.rows_per_block, 1);
          continue;
        }
        ASSERT_LE(p.units, max_units);
        ASSERT_EQ(p.units & (p.units - 1), 0);
        // Lanes x units cover the row, with the fewest units (a power of two) that do.
        ASSERT_GE(static_cast<std::int64_t>(p.group) * p.units * vec, c);
        if (p.units > 1) ASSERT_LT(static_cast<std::int64_t>(p.group) * (p.units / 2) * vec, c);
        if (p.rows_per_block > 1) {
          // The backward's shared-memory partials (2 c floats) then fit the 48 KiB default.
          ASSERT_LE(p.group * p.rows_per_block, lim.block_threads);
          ASSERT_LE((64 + 2 * c) * 4, 48 * 1024);
        }
      }
    }
  }
  // The shapes the benchmark and the model use stay in registers with 128-bit accesses.
  for (std::int64_t c : {768, 1024, 1600, 4096, 8192}) {
    EXPECT_GT(kiln::cuda::plan_layernorm(c, 4, 512, 256).units, 0) << c;
    EXPECT_GT(kiln::cuda::plan_layernorm(c, 8, 512, 256).units, 0) << c;
    EXPECT_GT(kiln::cuda::plan_layernorm(c, 4, 1024, 256).units, 0) << c;
  }
  const auto p = kiln::cuda::plan_layernorm(768, 4, 1024, 256);  // 192 accesses: 64 lanes x 4
  EXPECT_EQ(p.group, 64);
  EXPECT_EQ(p.units, 4);
  EXPECT_EQ(p.rows_per_block, 4);
}

}  // namespace
