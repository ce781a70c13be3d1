// Causal multi-head attention over a block layout, flash-style: the T x T score matrix is never
// built. Queries and keys are cut into blocks of `block` tokens; each query block attends only
// to the key blocks its layout row lists. Dense causal attention is the layout whose row i
// lists blocks 0..i (core/model/attention_layout.h builds layouts).
//
// Contract a kernel (CPU or GPU) relies on:
//  - row_ptr has num_blocks + 1 entries per head layout; query block i of head h attends to key
//    blocks cols[r[i] .. r[i+1]) with r = row_ptr + (first_head + h) * (num_blocks + 1) when the
//    heads have their own layouts (num_layouts > 1), r = row_ptr when they share one. Blocks are
//    in ascending order, each <= i. (first_head: the global index of this kernel's head 0, for
//    tensor-parallel shards of the heads.)
//  - Inside any visited block, token-level causality (key position <= query position) is
//    applied by the kernel, and with segments the same-document rule; the layout need not mark
//    diagonal blocks. A query row with no visible key in a block skips it.
//  - The last block may be partial (T need not be a multiple of block).
//  - Forward saves lse (b, nh, t) = log-sum-exp of the scaled scores of each query row; the
//    backward recomputes probabilities from q, k and lse and needs out for D = rowsum(dout*out).
#pragma once

#include <cstdint>

namespace kiln::cpu {

struct BlockLayoutView {
  int block;            // tokens per block, for queries and keys; 16, 32, 64 or 128
  int num_blocks;       // ceil(t / block)
  const int* row_ptr;   // (num_layouts * (num_blocks + 1))
  const int* cols;      // key block ids
  int num_layouts = 1;  // 1: every head shares row_ptr; else one per (global) head
  int first_head = 0;
  // Document masks for packed sequences: (b, t) document ids, non-decreasing along each row, or
  // null. A query sees a key only when both belong to the same document; key blocks that hold
  // only earlier documents are skipped, so packed rows cost block-diagonal attention.
  const std::int32_t* segments = nullptr;

  const int* rows_of(std::int64_t head) const {
    return num_layouts > 1 ? row_ptr + (first_head + head) * (num_blocks + 1) : row_ptr;
  }
};

// qkv (b, t, 3c): q | k | v, head h at columns h*hd .. (h+1)*hd of each part, hd = c / nh.
// out (b, t, c) heads concatenated; lse (b, nh, t).
void attention_forward(float* out, float* lse, const float* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh, const BlockLayoutView& layout);

// dqkv (b, t, 3c) is overwritten with the gradient of the loss with respect to qkv.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, std::int64_t b, std::int64_t t, std::int64_t c,
                        std::int64_t nh, const BlockLayoutView& layout);

// One new query per head against a cache of n keys and values (autoregressive decoding).
// q (c), k_cache and v_cache (n, c) with heads concatenated, out (c). key_mask (nh, n), or null
// for all keys, marks the keys each head may attend to (sparse layouts).
void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      std::int64_t n, std::int64_t c, std::int64_t nh, const std::uint8_t* key_mask);

}  // namespace kiln::cpu
