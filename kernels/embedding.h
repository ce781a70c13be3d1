// Token + learned position embedding.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace kiln::cpu {

// out (b*t, c) = wte[tokens] + wpe[position]; positions[i] gives the position of token i
// (0..t-1 for plain sequences; restarts per document for packed ones). wte holds the rows of
// token ids [vocab_first, vocab_first + vocab_rows) (a vocabulary-parallel shard; the whole
// table is vocab_first 0); other tokens contribute zero. wpe may be null (no positions added).
void embedding_forward(float* out, const std::int32_t* tokens, const std::int32_t* positions,
                       const float* wte, const float* wpe, std::int64_t n, std::int64_t c,
                       std::int64_t vocab_first, std::int64_t vocab_rows);

// Accumulates dwte[tokens[i] - vocab_first] += dout[i] for tokens in the shard, and
// dwpe[positions[i]] += dout[i] (dwpe may be null). Threads split the channels, so every sum is
// formed in token order: deterministic, no atomics.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const std::int32_t* tokens,
                        const std::int32_t* positions, std::int64_t n, std::int64_t c,
                        std::int64_t vocab_first, std::int64_t vocab_rows);

}  // namespace kiln::cpu

namespace kiln::cuda {

// The CUDA twins (kernels/cuda/embedding.cu). tokens, positions and every tensor are device
// pointers; as on the CPU, positions is read only when wpe / dwpe is non-null, positions must lie
// in [0, rows of wpe), and 0 <= vocab_rows < 2^32. Queued on kiln::cuda::stream(), no host sync.
// Forward: float4 loads when c % 4 == 0 and out, wte, wpe are 16-byte aligned, else scalar; the
// result equals the CPU twin's bit for bit.
void embedding_forward(float* out, const std::int32_t* tokens, const std::int32_t* positions,
                       const float* wte, const float* wpe, std::int64_t n, std::int64_t c,
                       std::int64_t vocab_first, std::int64_t vocab_rows);

// Backward without float atomics: a stable device radix sort of (row, token index) pairs groups
// every row's tokens in token order, then one block per (row, channel chunk) adds its dout rows
// to the row in that order — the CPU twin's order, so the result equals it bit for bit and is
// the same on every run. Needs n < 2^31 and a few 4n-byte scratch arrays (Workspace). Rows
// no token touches are left as they were.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const std::int32_t* tokens,
                        const std::int32_t* positions, std::int64_t n, std::int64_t c,
                        std::int64_t vocab_first, std::int64_t vocab_rows);

// Mixed precision: bf16 weight copies in, bf16 out; the sum is formed in fp32 and rounded to
// nearest even once (kiln::to_bf16 of the fp32 twin's result on the same bf16 inputs).
// 16-byte loads when c % 8 == 0 and the pointers are 16-byte aligned.
void embedding_forward_bf16(bf16* out, const std::int32_t* tokens, const std::int32_t* positions,
                            const bf16* wte, const bf16* wpe, std::int64_t n, std::int64_t c,
                            std::int64_t vocab_first, std::int64_t vocab_rows);

// embedding_backward with a bf16 dout and fp32 weight gradients (each dout element widened
// exactly, then summed as above): equals the fp32 twin on the widened dout bit for bit.
void embedding_backward_bf16(float* dwte, float* dwpe, const bf16* dout, const std::int32_t* tokens,
                             const std::int32_t* positions, std::int64_t n, std::int64_t c,
                             std::int64_t vocab_first, std::int64_t vocab_rows);

}  // namespace kiln::cuda
