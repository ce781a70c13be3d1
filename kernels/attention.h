// Causal multi-head attention over a block layout, flash-style: the T x T score matrix is never
// built. Queries and keys are cut into blocks of `block` tokens; each query block attends only
// to the key blocks its layout row lists. Dense causal attention is the layout whose row i
// lists blocks 0..i (core/model/attention_layout.h builds layouts).
//
// Contract a kernel (CPU or GPU) relies on:
//  - row_ptr has num_blocks + 1 entries; query block i attends to key blocks
//    cols[row_ptr[i] .. row_ptr[i+1]) given in ascending order, each <= i.
//  - Inside any visited block, token-level causality (key position <= query position) is
//    applied by the kernel; the layout need not mark diagonal blocks.
//  - The last block may be partial (T need not be a multiple of block).
//  - Forward saves lse (b, nh, t) = log-sum-exp of the scaled scores of each query row; the
//    backward recomputes probabilities from q, k and lse and needs out for D = rowsum(dout*out).
#pragma once

#include <cstdint>

namespace kiln::cpu {

struct BlockLayoutView {
  int block;            // tokens per block, for queries and keys; 16, 32, 64 or 128
  int num_blocks;       // ceil(t / block)
  const int* row_ptr;   // (num_blocks + 1)
  const int* cols;      // (row_ptr[num_blocks]) key block ids
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
// q (c), k_cache and v_cache (n, c) with heads concatenated, out (c).
void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      std::int64_t n, std::int64_t c, std::int64_t nh);

}  // namespace kiln::cpu
