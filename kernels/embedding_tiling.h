// Index arithmetic of the CUDA embedding backward (kernels/cuda/embedding.cu), kept here so the
// host tests (tests/kernels/test_embedding_tiling.cpp) check the same functions the kernels use.
//
// The backward sorts (key, token index) pairs with a stable radix sort, key = the token's row in
// the vocabulary shard (or the position), so every row's contributions sit together in token
// order; one block per (row, channel chunk) then sums them in that order.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace kiln::embedding_tiling {

// Threads per block of the accumulation kernel, and the most channel chunks grid.y allows.
constexpr int kMaxAccumulateThreads = 256;
constexpr std::int64_t kMaxGridY = 65535;

// Bits a radix sort must look at to order keys 0..max_key (inclusive); 0 for max_key 0.
KILN_HOST_DEVICE int sort_key_bits(std::uint64_t max_key) {
  int bits = 0;
  while (bits < 64 && (max_key >> bits) != 0) ++bits;
  return bits;
}

// Sort key of a token: its row in the shard [vocab_first, vocab_first + vocab_rows), or
// vocab_rows (the sentinel: sorted after every row, skipped) for a token outside it.
KILN_HOST_DEVICE std::uint32_t token_sort_key(std::int32_t token, std::int64_t vocab_first,
                                             std::int64_t vocab_rows) {
  const std::int64_t row = static_cast<std::int64_t>(token) - vocab_first;
  return static_cast<std::uint32_t>(row >= 0 && row < vocab_rows ? row : vocab_rows);
}

// Threads per accumulation block for c channels: c rounded up to a whole warp, at most 256.
KILN_HOST_DEVICE int accumulate_threads(std::int64_t c) {
  const std::int64_t warps = (c + 31) / 32;
  return warps * 32 < kMaxAccumulateThreads ? static_cast<int>(warps * 32) : kMaxAccumulateThreads;
}

// Channel chunks (grid.y) of the accumulation kernel.
KILN_HOST_DEVICE std::int64_t accumulate_chunks(std::int64_t c) {
  const std::int64_t threads = accumulate_threads(c);
  return (c + threads - 1) / threads;
}

}  // namespace kiln::embedding_tiling
