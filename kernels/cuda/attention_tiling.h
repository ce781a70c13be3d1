// Tile arithmetic of the CUDA attention kernels (kernels/cuda/attention*.cu), kept free of CUDA
// so that tests/kernels/test_attention_tiling.cpp checks it on the host.
//
// How kernel tiles map onto a block layout (layout blocks of L = 16, 32, 64 or 128 tokens):
//  - A CTA owns a tile of positions [start, start + tile) (queries in the forward and the dQ
//    pass, keys in the dK/dV pass) with start a multiple of the tile. The tile spans the layout
//    blocks blocks_spanned(start, tile, L, num_blocks): one block when L >= tile (the tile is a
//    part of it), tile / L blocks when L < tile (at most kMaxLists).
//  - The CTA walks the sorted union of those blocks' lists (rows of the layout for a query tile,
//    columns of the transposed layout for a key tile) in ascending order; for each listed block
//    it visits chunk_len(L, kernel_chunk) positions at a time, L / chunk_len chunks per block.
//    A ChunkStep carries the chunk's first position and a bit per spanned block that lists it.
//  - Inside the CTA a unit (16 queries or 16 keys, one warp's m16 tile) lies in exactly one
//    layout block, since L >= 16 and units are 16-aligned. A unit takes part in a step when its
//    block's bit is set, may_see() holds for the two ranges, and, with packed documents,
//    other_documents() does not; a step no unit takes part in is never loaded. Token-level
//    masks are applied only where needs_mask() says a pair in the tile can be invisible.
#pragma once

#include <cstdint>

#include "kernels/host_device.h"

namespace kiln::attention_tiling {

// Most layout blocks one kernel tile can span (a 128-position tile over 16-token blocks).
constexpr int kMaxLists = 8;
// Positions per unit (one warp's m16 tile of queries or keys).
constexpr int kUnit = 16;

struct BlockSpan {
  int first;  // first layout block the tile touches
  int count;  // blocks touched, >= 1 when start < t
};

// Layout blocks touched by tile positions [start, start + len), clipped to num_blocks.
KILN_HOST_DEVICE BlockSpan blocks_spanned(int start, int len, int block, int num_blocks) {
  const int first = start / block;
  int last = (start + len - 1) / block;
  if (last > num_blocks - 1) last = num_blocks - 1;
  return {first, last - first + 1};
}

// Positions a kernel step visits at once: the kernel's chunk, or the whole layout block when
// that is smaller. Both are powers of two, so a block holds block / chunk_len whole chunks.
KILN_HOST_DEVICE int chunk_len(int block, int kernel_chunk) {
  return block < kernel_chunk ? block : kernel_chunk;
}

// The row (or column) lists of a head's layout: ptr has num_blocks + 1 entries per layout.
KILN_HOST_DEVICE const int* head_lists(const int* ptr, int num_layouts, int first_head,
                                       int num_blocks, std::int64_t head) {
  return num_layouts > 1 ? ptr + (first_head + head) * static_cast<std::int64_t>(num_blocks + 1)
                         : ptr;
}

struct ChunkStep {
  int start;      // first position of the chunk; -1: no more steps
  unsigned mask;  // bit r: spanned block first + r lists the chunk's block
};

// Ids read from a list at once: a refill issues kWindow independent loads (one memory latency)
// instead of one dependent load per block, which would stall the thread that walks for the CTA.
constexpr int kWindow = 8;

// Ascending walk over the union of `count` sorted id lists ids[ptr[first + r] .. ptr[first + r
// + 1]), r < count, each listed id visited in `chunks` chunks of `len` positions. Plain data, so
// it can live in shared memory and be advanced by one thread.
struct ListUnion {
  int pos[kMaxLists];
  int end[kMaxLists];
  int window_start[kMaxLists];      // window[r][k] = ids[window_start[r] + k]
  int window[kMaxLists][kWindow];
  int count;
  int id;          // current block id
  unsigned mask;   // lists holding it
  int chunk;       // next chunk of it
  int chunks;      // chunks per block
};

KILN_HOST_DEVICE void union_init(ListUnion& u, const int* ptr, int first, int count, int chunks) {
  u.count = count;
  for (int r = 0; r < kMaxLists; ++r) {
    u.pos[r] = r < count ? ptr[first + r] : 0;
    u.end[r] = r < count ? ptr[first + r + 1] : 0;
    u.window_start[r] = u.end[r];  // empty: the first look refills
  }
  u.id = -1;
  u.mask = 0;
  u.chunks = chunks;
  u.chunk = chunks;  // the first call moves to the first block
}

// The id at the head of list r (pos[r] < end[r]).
KILN_HOST_DEVICE int union_head(ListUnion& u, const int* ids, int r) {
  const int p = u.pos[r];
  if (p < u.window_start[r] || p >= u.window_start[r] + kWindow) {
    int loaded[kWindow];  // all loads first: they are independent
    for (int k = 0; k < kWindow; ++k) loaded[k] = p + k < u.end[r] ? ids[p + k] : 0;
    for (int k = 0; k < kWindow; ++k) u.window[r][k] = loaded[k];
    u.window_start[r] = p;
  }
  return u.window[r][p - u.window_start[r]];
}

// Moves to the smallest id still listed; false when every list is exhausted (and stays so).
KILN_HOST_DEVICE bool union_next_block(ListUnion& u, const int* ids) {
  int best = 0x7fffffff;
  for (int r = 0; r < kMaxLists; ++r)
    if (r < u.count && u.pos[r] < u.end[r]) {
      const int head = union_head(u, ids, r);
      if (head < best) best = head;
    }
  if (best == 0x7fffffff) return false;
  u.mask = 0;
  for (int r = 0; r < kMaxLists; ++r)
    if (r < u.count && u.pos[r] < u.end[r] && union_head(u, ids, r) == best) {
      u.mask |= 1u << r;
      ++u.pos[r];
    }
  u.id = best;
  u.chunk = 0;
  return true;
}

// The next chunk of the walk for layout blocks of `block` positions and chunks of `len`.
KILN_HOST_DEVICE bool union_next_chunk(ListUnion& u, const int* ids, int block, int len,
                                       ChunkStep* step) {
  if (u.chunk >= u.chunks && !union_next_block(u, ids)) return false;
  step->start = u.id * block + u.chunk * len;
  step->mask = u.mask;
  ++u.chunk;
  return true;
}

KILN_HOST_DEVICE int last_valid(int first, int len, int t) {
  return (first + len < t ? first + len : t) - 1;
}

// Whether queries [q_first, q_first + q_len) and keys [k_first, k_first + k_len), both cut at t,
// hold a causal pair (key <= query).
KILN_HOST_DEVICE bool may_see(int q_first, int q_len, int k_first, int k_len, int t) {
  if (q_first >= t || k_first >= t || q_len <= 0 || k_len <= 0) return false;
  return k_first <= last_valid(q_first, q_len, t);
}

// Whether some pair of the two ranges is invisible for causality or the end of the sequence (a
// key after a query, or a position >= t); documents are checked separately.
KILN_HOST_DEVICE bool needs_mask(int q_first, int q_len, int k_first, int k_len, int t) {
  return k_first + k_len - 1 > q_first || q_first + q_len > t || k_first + k_len > t;
}

// With document ids non-decreasing along the row: true when every key of the range (cut at t)
// belongs to an earlier document than every query (so no pair is visible). k_first < t.
KILN_HOST_DEVICE bool other_documents(const std::int32_t* seg, int q_first, int k_first,
                                      int k_len, int t) {
  return seg[last_valid(k_first, k_len, t)] < seg[q_first];
}

// (query, key) pairs one layout computes: key <= query < t inside the blocks it lists. FLOPs of
// the forward pass are 4 * hd * (this, summed over heads) per sequence.
inline std::int64_t active_score_elements(const int* row_ptr, const int* cols, int num_blocks,
                                          int block, std::int64_t t) {
  std::int64_t total = 0;
  for (int i = 0; i < num_blocks; ++i) {
    const std::int64_t q0 = static_cast<std::int64_t>(i) * block;
    const std::int64_t nq = (q0 + block < t ? q0 + block : t) - q0;
    for (int idx = row_ptr[i]; idx < row_ptr[i + 1]; ++idx) {
      const int j = cols[idx];
      const std::int64_t k0 = static_cast<std::int64_t>(j) * block;
      const std::int64_t nk = (k0 + block < t ? k0 + block : t) - k0;
      if (j < i) total += nq * nk;             // every key before every query
      else if (j == i) total += nq * (nq + 1) / 2;  // the causal triangle of the diagonal
    }
  }
  return total;
}

// Forward FLOPs (QK^T and PV, 2 each per pair and head dimension) of attention over a layout:
// b sequences, heads [first_head, first_head + nh) of a layout with num_layouts layouts.
inline double attention_forward_flops(const int* row_ptr, const int* cols, int num_blocks,
                                      int block, int num_layouts, int first_head, std::int64_t b,
                                      std::int64_t t, std::int64_t nh, std::int64_t hd) {
  double pairs = 0;
  for (std::int64_t h = 0; h < nh; ++h)
    pairs += static_cast<double>(active_score_elements(
        head_lists(row_ptr, num_layouts, first_head, num_blocks, h), cols, num_blocks, block, t));
  return 4.0 * static_cast<double>(b) * pairs * static_cast<double>(hd);
}

}  // namespace kiln::attention_tiling
