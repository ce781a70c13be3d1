// The work split of the CUDA optimizer kernels (kernels/optimizer_tiling.h), checked on the host:
// every element of every AdamW segment is visited exactly once and nothing else is, and the
// sum_squares grid depends on n alone within its bounds.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/optimizer_tiling.h"

namespace {

using kiln::cpu::AdamWSegment;
using namespace kiln::optimizer_tiling;

// Walks the virtual quads the way adamw_kernel does (binary search at a thread's first quad, then
// stepping forward) and counts visits per element.
std::vector<int> visits(const std::vector<AdamWSegment>& segments, std::int64_t total_elements) {
  std::vector<AdamWQuadSegment> table;
  const std::int64_t total = build_adamw_table(segments.data(), static_cast<int>(segments.size()), table);
  std::vector<int> count(total_elements, 0);
  const int n = static_cast<int>(table.size());
  for (std::int64_t block = 0; block < adamw_blocks(total); ++block)
    for (int t = 0; t < kAdamWThreads; ++t) {
      std::int64_t u = block * kAdamWQuadsPerBlock + t;
      if (u >= total) continue;
      int s = find_quad_segment(table.data(), n, u);
      for (int r = 0; r < kAdamWQuadsPerThread && u < total; ++r, u += kAdamWThreads) {
        while (s + 1 < n && table[s + 1].first_virtual <= u) ++s;
        EXPECT_EQ(s, find_quad_segment(table.data(), n, u));
        const AdamWQuadSegment& seg = table[s];
        const std::int64_t e0 = (seg.first_quad + (u - seg.first_virtual)) * 4;
        for (std::int64_t e = e0; e < e0 + 4; ++e)
          if (e >= seg.begin && e < seg.end) ++count[e];
      }
    }
  return count;
}

void expect_exact_cover(const std::vector<AdamWSegment>& segments, std::int64_t total_elements) {
  std::vector<int> want(total_elements, 0);
  for (const auto& s : segments)
    for (std::int64_t i = s.offset; i < s.offset + s.size; ++i) want[i] = 1;
  const auto got = visits(segments, total_elements);
  for (std::int64_t i = 0; i < total_elements; ++i) ASSERT_EQ(got[i], want[i]) << "element " << i;
}

TEST(OptimizerTiling, AdamWVisitsEverySegmentElementOnce) {
  expect_exact_cover({{0, 1, 0.1f}, {1, 7, 0.0f}, {8, 333, 0.1f}, {345, 769, 0.0f}, {1114, 2050, 0.05f},
                      {3166, 5, 0.1f}, {3171, 0, 0.1f}, {3171, 3, 0.0f}, {3180, 100003, 0.1f}},
                     103190);
  expect_exact_cover({{5, 1, 0.0f}}, 8);
  expect_exact_cover({{0, 4096, 0.0f}, {4096, 1, 0.0f}}, 4100);
}

TEST(OptimizerTiling, AdamWRandomSegmentLayouts) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> size(0, 3000), gap(0, 9);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<AdamWSegment> segments;
    std::int64_t at = gap(rng);
    const int count = 1 + trial * 3;
    for (int k = 0; k < count; ++k) {
      const std::int64_t s = size(rng) % (trial % 2 ? 17 : 3001);
      segments.push_back({at, s, 0.1f});
      at += s + (trial % 3 ? gap(rng) : 0);
    }
    expect_exact_cover(segments, at + 5);
  }
}

TEST(OptimizerTiling, QuadCount) {
  EXPECT_EQ(quad_count(0, 0), 0);
  EXPECT_EQ(quad_count(3, 3), 0);
  EXPECT_EQ(quad_count(0, 4), 1);
  EXPECT_EQ(quad_count(3, 5), 2);
  EXPECT_EQ(quad_count(4, 5), 1);
  EXPECT_EQ(quad_count(1, 1 + 769), 193);
}

TEST(OptimizerTiling, SumSquaresGridDependsOnlyOnN) {
  EXPECT_EQ(sum_squares_blocks(1), 1);
  EXPECT_EQ(sum_squares_blocks(4 * kSumSquaresThreads * kSumSquaresQuadsPerThread), 1);
  EXPECT_EQ(sum_squares_blocks(4 * kSumSquaresThreads * kSumSquaresQuadsPerThread + 1), 2);
  EXPECT_EQ(sum_squares_blocks(124'000'000), kSumSquaresMaxBlocks);
  EXPECT_EQ(sum_squares_blocks(std::int64_t{1} << 40), kSumSquaresMaxBlocks);
  int previous = 1;
  for (std::int64_t n = 1; n < (std::int64_t{1} << 32); n = n * 3 + 1) {
    const int b = sum_squares_blocks(n);
    EXPECT_GE(b, previous);
    EXPECT_LE(b, kSumSquaresMaxBlocks);
    previous = b;
  }
}

}  // namespace
