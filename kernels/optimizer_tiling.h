// Work split of the CUDA optimizer kernels (kernels/cuda/optimizer.cu), kept here so the host
// tests (tests/kernels/test_optimizer_tiling.cpp) check the same functions the kernels use.
//
// AdamW runs every segment in one launch over a "virtual" index space: segment k owns the
// aligned quads (4 consecutive elements, 16 bytes, starting at a multiple of 4) that overlap its
// elements [begin, end), numbered consecutively after the quads of segments 0..k-1. A thread
// takes virtual quads, finds the owning segment by binary search over the table, and updates the
// elements of the quad inside that segment: a whole quad with float4 loads, a quad cut by a
// segment boundary element by element (two segments may share a quad; each writes only its
// own elements, so no element is touched twice as long as segments do not overlap).
//
// sum_squares uses a grid that depends only on n, so its fixed-order reductions give the same
// bits on every run.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/host_device.h"
#include "kernels/optimizer.h"

namespace kiln::optimizer_tiling {

constexpr int kAdamWThreads = 256;
constexpr int kAdamWQuadsPerThread = 4;
constexpr std::int64_t kAdamWQuadsPerBlock = std::int64_t{kAdamWThreads} * kAdamWQuadsPerThread;

constexpr int kSumSquaresThreads = 256;
constexpr int kSumSquaresMaxBlocks = 1024;
constexpr std::int64_t kSumSquaresQuadsPerThread = 16;  // below this many quads a thread, fewer blocks

// One segment as the AdamW kernel sees it.
struct AdamWQuadSegment {
  std::int64_t first_virtual;  // virtual index of the segment's first quad
  std::int64_t first_quad;     // real quad index of its first element: begin / 4
  std::int64_t begin;          // elements [begin, end) of the flat buffers
  std::int64_t end;
  float weight_decay;
};

// Aligned quads overlapping elements [begin, end) (begin >= 0).
KILN_HOST_DEVICE std::int64_t quad_count(std::int64_t begin, std::int64_t end) {
  return end > begin ? (end + 3) / 4 - begin / 4 : 0;
}

// Builds the table (empty segments dropped) and returns the number of virtual quads.
inline std::int64_t build_adamw_table(const cpu::AdamWSegment* segments, int num_segments,
                                      std::vector<AdamWQuadSegment>& table) {
  table.clear();
  std::int64_t total = 0;
  for (int k = 0; k < num_segments; ++k) {
    const std::int64_t begin = segments[k].offset, end = segments[k].offset + segments[k].size;
    const std::int64_t quads = quad_count(begin, end);
    if (quads == 0) continue;
    table.push_back({total, begin / 4, begin, end, segments[k].weight_decay});
    total += quads;
  }
  return total;
}

// The entry owning virtual quad u: the last one with first_virtual <= u (count >= 1,
// table[0].first_virtual == 0, 0 <= u < total).
KILN_HOST_DEVICE int find_quad_segment(const AdamWQuadSegment* table, int count, std::int64_t u) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (table[mid].first_virtual <= u)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

KILN_HOST_DEVICE std::int64_t adamw_blocks(std::int64_t total_quads) {
  return (total_quads + kAdamWQuadsPerBlock - 1) / kAdamWQuadsPerBlock;
}

// Blocks of the sum_squares partial kernel for n elements: a function of n alone (1..1024).
KILN_HOST_DEVICE int sum_squares_blocks(std::int64_t n) {
  const std::int64_t quads = (n + 3) / 4;
  const std::int64_t per_block = kSumSquaresThreads * kSumSquaresQuadsPerThread;
  const std::int64_t blocks = (quads + per_block - 1) / per_block;
  return blocks < 1 ? 1 : blocks > kSumSquaresMaxBlocks ? kSumSquaresMaxBlocks : static_cast<int>(blocks);
}

}  // namespace kiln::optimizer_tiling
