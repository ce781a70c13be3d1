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
//    A row that sees no key gets out = 0 and lse = +inf.
//
// The kiln::cuda twins (kernels/cuda/attention*.cu) follow the same contract; there every
// pointer of BlockLayoutView (row_ptr, cols, col_ptr, col_rows, segments) is a device pointer,
// uploaded once per layout by the caller, and the backward also needs col_ptr/col_rows (the
// transposed layout, transpose_block_layout below).
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

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
  // The transposed layout, for passes that walk keys (the CUDA backward requires it; the CPU
  // kernels ignore it): key block j of a layout is listed by the query blocks
  // col_rows[c[j] .. c[j+1]), ascending, with c = col_ptr indexed like row_ptr
  // (num_layouts * (num_blocks + 1) entries, num_layouts and first_head as for row_ptr).
  const int* col_ptr = nullptr;
  const int* col_rows = nullptr;

  const int* rows_of(std::int64_t head) const {
    return num_layouts > 1 ? row_ptr + (first_head + head) * (num_blocks + 1) : row_ptr;
  }
};

// Grouped-query attention: kv_heads key/value heads (0: nh; dividing nh), key/value head g
// serving the nh / kv_heads consecutive query heads g * nh / kv_heads ... (multi-query
// attention: kv_heads = 1). c is the query width nh * hd; ckv = kv_heads * hd.
//
// qkv (b, t, c + 2 ckv): q | k | v, query head h at columns h*hd .. (h+1)*hd of q, key/value head
// g at g*hd .. (g+1)*hd of k and of v, hd = c / nh. out (b, t, c) heads concatenated; lse
// (b, nh, t).
void attention_forward(float* out, float* lse, const float* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh, const BlockLayoutView& layout,
                       std::int64_t kv_heads = 0);

// dqkv (b, t, c + 2 ckv) is overwritten with the gradient of the loss with respect to qkv; a
// key/value head's gradient sums those of the query heads it serves, in head order (the CPU
// kernel runs one task per (batch row, key/value head)).
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, std::int64_t b, std::int64_t t, std::int64_t c,
                        std::int64_t nh, const BlockLayoutView& layout, std::int64_t kv_heads = 0);

// One new query per head against a cache of n keys and values (autoregressive decoding).
// q (c), k_cache and v_cache (n, ckv) with the key/value heads concatenated, out (c). key_mask
// (nh, n), or null for all keys, marks the keys each query head may attend to (sparse layouts).
void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      std::int64_t n, std::int64_t c, std::int64_t nh, const std::uint8_t* key_mask,
                      std::int64_t kv_heads = 0);

// The transpose of num_layouts layouts of num_blocks blocks (host memory): col_ptr
// (num_layouts * (num_blocks + 1)) and col_rows (as many entries as cols) such that column j of
// layout l lists, ascending, the rows i whose row lists j. Each layout's columns occupy the same
// index range of col_rows as its rows occupy in cols (col_ptr[l * (num_blocks + 1)] equals
// row_ptr[l * (num_blocks + 1)]). Throws kiln::Error for a block id outside [0, num_blocks).
void transpose_block_layout(int* col_ptr, int* col_rows, const int* row_ptr, const int* cols,
                            int num_blocks, int num_layouts);

}  // namespace kiln::cpu

namespace kiln::cuda {

// The CUDA twins: same contract and arguments, device pointers (the layout's included), queued
// on kiln::cuda::stream(). fp32 throughout (plain FMA tiles of 16 x 16; head sizes up to 256).
void attention_forward(float* out, float* lse, const float* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh, const cpu::BlockLayoutView& layout,
                       std::int64_t kv_heads = 0);

// Needs layout.col_ptr/col_rows (kiln::Error when null). Deterministic: no atomics; dK and dV
// come from a pass over key tiles, dQ from a pass over query tiles (recomputing P). Scratch:
// b * nh * t floats from the caching allocator.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, std::int64_t b, std::int64_t t, std::int64_t c,
                        std::int64_t nh, const cpu::BlockLayoutView& layout, std::int64_t kv_heads = 0);

// Split over the keys in chunks combined in a fixed order (deterministic). key_mask is a device
// pointer or null. A head whose keys are all masked gets out = 0.
void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      std::int64_t n, std::int64_t c, std::int64_t nh, const std::uint8_t* key_mask,
                      std::int64_t kv_heads = 0);

// The fast path: bf16 qkv (b, t, 3c), out (b, t, c), dqkv (b, t, 3c), dout (b, t, c); lse
// (b, nh, t) stays fp32. Tensor cores (mma.sync m16n8k16, fp32 accumulation), online softmax in
// fp32. Head sizes hd = c / nh of 32, 48, 64, 80, 96 or 128 (kiln::Error naming hd otherwise).
// Buffers need no particular alignment; 16-byte aligned qkv/out/dout/dqkv take the
// cp.async / 128-bit path, others a scalar path.
void attention_forward_bf16(bf16* out, float* lse, const bf16* qkv, std::int64_t b, std::int64_t t,
                            std::int64_t c, std::int64_t nh, const cpu::BlockLayoutView& layout,
                            std::int64_t kv_heads = 0);

// dqkv is overwritten. Needs layout.col_ptr/col_rows. Deterministic (bit-reproducible): dK, dV
// from a key-major pass over the transposed layout, dQ from a query-major pass; P and dS are
// rounded to bf16 for the tensor-core products, as FlashAttention-2 does. Scratch: b * nh * t
// floats.
void attention_backward_bf16(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                             const float* lse, std::int64_t b, std::int64_t t, std::int64_t c,
                             std::int64_t nh, const cpu::BlockLayoutView& layout, std::int64_t kv_heads = 0);

}  // namespace kiln::cuda
