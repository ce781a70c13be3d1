// The sort keys and launch shape of the CUDA embedding backward (kernels/embedding_tiling.h),
// checked on the host.
#include <gtest/gtest.h>

#include "kernels/embedding_tiling.h"

namespace {

using namespace kiln::embedding_tiling;

TEST(EmbeddingTiling, SortKeyBitsCoverTheSentinel) {
  EXPECT_EQ(sort_key_bits(0), 0);
  EXPECT_EQ(sort_key_bits(1), 1);
  EXPECT_EQ(sort_key_bits(2), 2);
  EXPECT_EQ(sort_key_bits(255), 8);
  EXPECT_EQ(sort_key_bits(256), 9);
  EXPECT_EQ(sort_key_bits(50304), 16);
  EXPECT_EQ(sort_key_bits(65536), 17);
  EXPECT_EQ(sort_key_bits(0xffffffffu), 32);
  // Every key 0..vocab_rows (rows and the sentinel) fits in the bits sorted.
  for (std::uint64_t rows : {1ull, 5ull, 1000ull, 50257ull, 50304ull, 65535ull}) {
    const int bits = sort_key_bits(rows);
    EXPECT_LT(rows, std::uint64_t{1} << bits);
  }
}

TEST(EmbeddingTiling, TokenKeysAreShardRowsOrTheSentinel) {
  EXPECT_EQ(token_sort_key(0, 0, 10), 0u);
  EXPECT_EQ(token_sort_key(9, 0, 10), 9u);
  EXPECT_EQ(token_sort_key(10, 0, 10), 10u);   // past the shard
  EXPECT_EQ(token_sort_key(99, 100, 50), 50u);  // before the shard
  EXPECT_EQ(token_sort_key(100, 100, 50), 0u);
  EXPECT_EQ(token_sort_key(149, 100, 50), 49u);
  EXPECT_EQ(token_sort_key(150, 100, 50), 50u);
  EXPECT_EQ(token_sort_key(-1, 0, 10), 10u);
}

TEST(EmbeddingTiling, AccumulateBlocksCoverTheChannels) {
  for (std::int64_t c : {1, 3, 31, 32, 33, 255, 256, 257, 768, 769, 2050, 50000}) {
    const int threads = accumulate_threads(c);
    EXPECT_EQ(threads % 32, 0);
    EXPECT_LE(threads, kMaxAccumulateThreads);
    EXPECT_GE(threads * accumulate_chunks(c), c);
    EXPECT_LT(threads * (accumulate_chunks(c) - 1), c);
  }
  EXPECT_EQ(accumulate_threads(1), 32);
  EXPECT_EQ(accumulate_chunks(768), 3);
}

}  // namespace
