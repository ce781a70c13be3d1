// Host checks of the CUDA attention's tile arithmetic (kernels/cuda/attention_tiling.h): the
// layout transpose the backward walks (kiln::cpu::transpose_block_layout), the walk of a kernel
// tile over the layout blocks it spans in kernel-sized chunks, the visibility predicates that
// decide which sub-tiles are computed and masked, and the FLOP count the benchmark reports.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <utility>
#include <vector>

#include "kernels/error.h"
#include "kernels/attention.h"
#include "kernels/cuda/attention_tiling.h"

namespace tiling = kiln::attention_tiling;

namespace {

// A layout built by hand from allows(layout, q, k), k <= q.
struct HandLayout {
  int num_blocks = 0;
  int num_layouts = 1;
  std::vector<int> row_ptr, cols;

  bool allows(int l, int q, int k) const {
    const int* rows = row_ptr.data() + l * (num_blocks + 1);
    for (int i = rows[q]; i < rows[q + 1]; ++i)
      if (cols[i] == k) return true;
    return false;
  }
};

template <class Allows>
HandLayout make_layout(int num_blocks, int num_layouts, Allows allows) {
  HandLayout h;
  h.num_blocks = num_blocks;
  h.num_layouts = num_layouts;
  for (int l = 0; l < num_layouts; ++l) {
    h.row_ptr.push_back(static_cast<int>(h.cols.size()));
    for (int q = 0; q < num_blocks; ++q) {
      for (int k = 0; k <= q; ++k)
        if (allows(l, q, k)) h.cols.push_back(k);
      h.row_ptr.push_back(static_cast<int>(h.cols.size()));
    }
  }
  return h;
}

HandLayout dense(int nb) {
  return make_layout(nb, 1, [](int, int, int) { return true; });
}
HandLayout local(int nb, int window) {
  return make_layout(nb, 1, [=](int, int q, int k) { return q - k < window; });
}
HandLayout strided(int nb, int window, int stride) {
  return make_layout(nb, 1, [=](int, int q, int k) { return q - k < window || (q - k) % stride == 0; });
}
// Layout 0 dense, layout 1 local (window 2), layout 2 strided (window 1, stride 3).
HandLayout per_head(int nb) {
  return make_layout(nb, 3, [](int l, int q, int k) {
    return l == 0 || (l == 1 ? q - k < 2 : q - k < 1 || (q - k) % 3 == 0);
  });
}

struct Transposed {
  std::vector<int> col_ptr, col_rows;
};

Transposed transpose(const HandLayout& h) {
  Transposed t;
  t.col_ptr.assign(h.row_ptr.size(), -1);
  t.col_rows.assign(h.cols.size(), -1);
  kiln::cpu::transpose_block_layout(t.col_ptr.data(), t.col_rows.data(), h.row_ptr.data(),
                                    h.cols.data(), h.num_blocks, h.num_layouts);
  return t;
}

void check_transpose(const HandLayout& h) {
  const Transposed tr = transpose(h);
  const int nb = h.num_blocks;
  for (int l = 0; l < h.num_layouts; ++l) {
    const int* cp = tr.col_ptr.data() + l * (nb + 1);
    const int* rp = h.row_ptr.data() + l * (nb + 1);
    EXPECT_EQ(cp[0], rp[0]) << "layout " << l;
    EXPECT_EQ(cp[nb], rp[nb]) << "layout " << l;
    std::set<std::pair<int, int>> by_rows, by_cols;
    for (int i = 0; i < nb; ++i)
      for (int idx = rp[i]; idx < rp[i + 1]; ++idx) by_rows.insert({i, h.cols[idx]});
    for (int j = 0; j < nb; ++j) {
      ASSERT_LE(cp[j], cp[j + 1]);
      for (int idx = cp[j]; idx < cp[j + 1]; ++idx) {
        if (idx > cp[j]) EXPECT_LT(tr.col_rows[idx - 1], tr.col_rows[idx]) << "column " << j;
        by_cols.insert({tr.col_rows[idx], j});
      }
    }
    EXPECT_EQ(by_rows, by_cols) << "layout " << l;
  }
}

}  // namespace

TEST(AttentionTiling, TransposeListsEveryBlockOnceWithAscendingRows) {
  const HandLayout d3 = dense(3);  // rows {0} {0 1} {0 1 2}
  const Transposed t3 = transpose(d3);
  EXPECT_EQ(t3.col_ptr, (std::vector<int>{0, 3, 5, 6}));
  EXPECT_EQ(t3.col_rows, (std::vector<int>{0, 1, 2, 1, 2, 2}));
  const HandLayout l4 = local(4, 2);  // rows {0} {0 1} {1 2} {2 3}
  const Transposed t4 = transpose(l4);
  EXPECT_EQ(t4.col_ptr, (std::vector<int>{0, 2, 4, 6, 7}));
  EXPECT_EQ(t4.col_rows, (std::vector<int>{0, 1, 1, 2, 2, 3, 3}));
  for (int nb : {1, 2, 7, 33}) {
    check_transpose(dense(nb));
    check_transpose(local(nb, 3));
    check_transpose(strided(nb, 2, 3));
    check_transpose(per_head(nb));
  }
  HandLayout bad = dense(2);
  bad.cols[1] = 5;
  Transposed out{std::vector<int>(3), std::vector<int>(3)};
  EXPECT_THROW(kiln::cpu::transpose_block_layout(out.col_ptr.data(), out.col_rows.data(),
                                                 bad.row_ptr.data(), bad.cols.data(), 2, 1),
               kiln::Error);
}

TEST(AttentionTiling, BlockSpansAndChunkLengths) {
  EXPECT_EQ(tiling::chunk_len(16, 64), 16);
  EXPECT_EQ(tiling::chunk_len(128, 64), 64);
  EXPECT_EQ(tiling::chunk_len(64, 64), 64);
  // A 128-row tile over 16-token blocks spans 8 blocks, clipped at the end of the sequence.
  auto span = tiling::blocks_spanned(128, 128, 16, 100);
  EXPECT_EQ(span.first, 8);
  EXPECT_EQ(span.count, 8);
  span = tiling::blocks_spanned(128, 128, 16, 10);
  EXPECT_EQ(span.first, 8);
  EXPECT_EQ(span.count, 2);
  // A 64-key tile inside a 128-token block: one block.
  span = tiling::blocks_spanned(64, 64, 128, 3);
  EXPECT_EQ(span.first, 0);
  EXPECT_EQ(span.count, 1);
  EXPECT_EQ(tiling::head_lists(nullptr, 1, 5, 9, 3), nullptr);
  const int ptr[40] = {};
  EXPECT_EQ(tiling::head_lists(ptr, 4, 1, 9, 2), ptr + 30);
}

// Every tile of every layout walks exactly the (chunk, spanned block) pairs its rows list, in
// ascending order, each chunk inside one layout block.
TEST(AttentionTiling, TilesWalkTheirBlocksListsInKernelChunks) {
  for (int block : {16, 32, 64, 128})
    for (int tile : {64, 128})
      for (int kernel_chunk : {16, 32, 64}) {
        const int len = tiling::chunk_len(block, kernel_chunk);
        ASSERT_EQ(block % len, 0);
        const int nb = 19;  // rows longer than the walk's window of ids
        const int t = nb * block - 5;  // partial last block
        for (const HandLayout& h : {dense(nb), local(nb, 2), strided(nb, 2, 3), per_head(nb)})
          for (int l = 0; l < h.num_layouts; ++l)
            for (int start = 0; start < t; start += tile) {
              SCOPED_TRACE("block " + std::to_string(block) + " tile " + std::to_string(tile) +
                           " chunk " + std::to_string(kernel_chunk) + " start " + std::to_string(start));
              const auto span = tiling::blocks_spanned(start, tile, block, nb);
              ASSERT_EQ(span.first, start / block);
              ASSERT_EQ(span.count, std::min(nb, (start + tile + block - 1) / block) - span.first);
              ASSERT_LE(span.count, tiling::kMaxLists);
              const int* rows = tiling::head_lists(h.row_ptr.data(), h.num_layouts, 0, nb, l);
              tiling::ListUnion walk;
              tiling::union_init(walk, rows, span.first, span.count, block / len);
              std::set<std::pair<int, int>> seen, expected;
              tiling::ChunkStep step;
              int previous = -1;
              while (tiling::union_next_chunk(walk, h.cols.data(), block, len, &step)) {
                EXPECT_GT(step.start, previous);
                previous = step.start;
                EXPECT_EQ(step.start % len, 0);
                EXPECT_EQ(step.start / block, (step.start + len - 1) / block);
                EXPECT_NE(step.mask, 0u);
                for (int r = 0; r < span.count; ++r)
                  if ((step.mask >> r) & 1u) seen.insert({step.start, r});
                EXPECT_EQ(step.mask >> span.count, 0u);
              }
              EXPECT_FALSE(tiling::union_next_chunk(walk, h.cols.data(), block, len, &step));
              for (int r = 0; r < span.count; ++r)
                for (int idx = rows[span.first + r]; idx < rows[span.first + r + 1]; ++idx)
                  for (int c = 0; c < block / len; ++c) expected.insert({h.cols[idx] * block + c * len, r});
              EXPECT_EQ(seen, expected);
            }
      }
}

// may_see, needs_mask and other_documents against every pair of two ranges.
TEST(AttentionTiling, VisibilityPredicatesMatchBruteForce) {
  std::mt19937 gen(5);
  for (int t : {1, 17, 40, 64}) {
    std::vector<std::int32_t> seg(t);
    for (int i = 1; i < t; ++i) seg[i] = seg[i - 1] + (gen() % 7 == 0 ? 1 : 0);
    for (int q_len : {16, 32})
      for (int k_len : {16, 64})
        for (int q_first = 0; q_first < 64; q_first += 16)
          for (int k_first = 0; k_first < 64; k_first += 16) {
            bool any = false, all_visible = true, same_document = false;
            for (int q = q_first; q < q_first + q_len; ++q)
              for (int k = k_first; k < k_first + k_len; ++k) {
                const bool visible = k <= q && q < t && k < t;
                any = any || visible;
                all_visible = all_visible && visible;
                same_document = same_document || (visible && seg[q] == seg[k]);
              }
            SCOPED_TRACE("t " + std::to_string(t) + " q " + std::to_string(q_first) + "+" +
                         std::to_string(q_len) + " k " + std::to_string(k_first) + "+" +
                         std::to_string(k_len));
            EXPECT_EQ(tiling::may_see(q_first, q_len, k_first, k_len, t), any);
            if (!tiling::needs_mask(q_first, q_len, k_first, k_len, t)) EXPECT_TRUE(all_visible);
            if (any && tiling::other_documents(seg.data(), q_first, k_first, k_len, t))
              EXPECT_FALSE(same_document);
          }
  }
}

TEST(AttentionTiling, FlopCountMatchesBruteForceCount) {
  struct Shape {
    HandLayout layout;
    int block;
    int t;
  };
  const std::vector<Shape> shapes = {{dense(7), 16, 100}, {dense(1), 32, 1},
                                     {local(8, 2), 16, 128}, {strided(6, 2, 3), 32, 190},
                                     {per_head(5), 16, 77}};
  for (const Shape& s : shapes) {
    const HandLayout& h = s.layout;
    double pairs_all = 0;
    for (int l = 0; l < h.num_layouts; ++l) {
      std::int64_t brute = 0;
      for (int q = 0; q < s.t; ++q)
        for (int k = 0; k <= q; ++k) brute += h.allows(l, q / s.block, k / s.block) ? 1 : 0;
      const int* rows = h.row_ptr.data() + l * (h.num_blocks + 1);
      EXPECT_EQ(tiling::active_score_elements(rows, h.cols.data(), h.num_blocks, s.block, s.t), brute)
          << "layout " << l << " t " << s.t;
      pairs_all += static_cast<double>(brute);
    }
    // Heads 0..num_layouts-1 of the layout, b = 3, hd = 64.
    EXPECT_DOUBLE_EQ(tiling::attention_forward_flops(h.row_ptr.data(), h.cols.data(), h.num_blocks,
                                                     s.block, h.num_layouts, 0, 3, s.t,
                                                     h.num_layouts, 64),
                     4.0 * 3 * pairs_all * 64);
  }
  // Dense causal: t (t + 1) / 2 pairs.
  const HandLayout d = dense(7);
  EXPECT_EQ(tiling::active_score_elements(d.row_ptr.data(), d.cols.data(), 7, 16, 100), 100 * 101 / 2);
}
