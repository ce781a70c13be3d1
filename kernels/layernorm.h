// LayerNorm over the last dimension (eps 1e-5, as GPT-2), plain and fused with the residual add
// of a Pre-LN block.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"
#include "kernels/host_device.h"

namespace kiln::cpu {

// out (rows, c) = (inp - mean) * rstd * gamma + beta; saves mean (rows) and rstd (rows).
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* gamma,
                       const float* beta, std::int64_t rows, std::int64_t c);

// Accumulates dinp += ..., dgamma += ..., dbeta += ... (deterministic for a fixed thread count).
void layernorm_backward(float* dinp, float* dgamma, float* dbeta, const float* dout,
                        const float* inp, const float* gamma, const float* mean,
                        const float* rstd, std::int64_t rows, std::int64_t c);

// The Pre-LN block's "x = x + sublayer(x); h = ln(x)": residual (rows, c) = inp + delta
// (residual may alias inp), then out = LayerNorm(residual) with mean/rstd saved, exactly as
// add() followed by layernorm_forward() (bit for bit). The backward is layernorm_backward on
// the residual.
void residual_layernorm_forward(float* residual, float* out, float* mean, float* rstd,
                                const float* inp, const float* delta, const float* gamma,
                                const float* beta, std::int64_t rows, std::int64_t c);

}  // namespace kiln::cpu

namespace kiln::cuda {

// Same contracts as the kiln::cpu twins; device pointers, queued on kiln::cuda::stream(). Any
// c >= 1; rows or c == 0 launch nothing. 128-bit accesses when c * sizeof(element) is a
// multiple of 16 and every tensor pointer (and gamma/beta) is 16-byte aligned, scalar
// otherwise. mean/rstd are required (never null).
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* gamma,
                       const float* beta, std::int64_t rows, std::int64_t c);
// Accumulates into dinp, dgamma and dbeta. dgamma/dbeta are deterministic: per-block partial
// sums (a Workspace of about 2 * c * 4 bytes per resident block) reduced in a fixed order by a
// second kernel, no float atomics. Results depend only on the shape and the GPU model.
void layernorm_backward(float* dinp, float* dgamma, float* dbeta, const float* dout,
                        const float* inp, const float* gamma, const float* mean,
                        const float* rstd, std::int64_t rows, std::int64_t c);
// One pass over memory: reads inp and delta, writes residual and out.
void residual_layernorm_forward(float* residual, float* out, float* mean, float* rstd,
                                const float* inp, const float* delta, const float* gamma,
                                const float* beta, std::int64_t rows, std::int64_t c);

// bf16 activations; gamma, beta, mean, rstd and the parameter gradients stay fp32, all
// arithmetic is fp32 and each bf16 output is rounded once (to nearest even).
void layernorm_forward_bf16(bf16* out, float* mean, float* rstd, const bf16* inp,
                            const float* gamma, const float* beta, std::int64_t rows,
                            std::int64_t c);
// residual = round(inp + delta); the statistics are those of the rounded residual (the value
// stored, which the backward reads), so forward and backward agree. residual may alias inp.
void residual_layernorm_forward_bf16(bf16* residual, bf16* out, float* mean, float* rstd,
                                     const bf16* inp, const bf16* delta, const float* gamma,
                                     const float* beta, std::int64_t rows, std::int64_t c);
// dinp = round(dinp + grad), the sum formed in fp32 registers; dgamma/dbeta (fp32) accumulate
// deterministically as in layernorm_backward.
void layernorm_backward_bf16(bf16* dinp, float* dgamma, float* dbeta, const bf16* dout,
                             const bf16* inp, const float* gamma, const float* mean,
                             const float* rstd, std::int64_t rows, std::int64_t c);

// How kernels/cuda/layernorm.cu splits a row of c channels over threads; plain arithmetic,
// checked on the host by tests/kernels/test_residual_layernorm.cpp.
//   vec:    channels per access: 4 (fp32) or 8 (bf16) for 128-bit accesses, or 1.
//   units:  accesses per thread per row, held in registers (a power of two, at most
//           layernorm_max_units(vec)); 0 means the row is too long for registers and the
//           kernel re-reads it from memory (L2) instead.
//   group:  threads per row, a multiple of 32 (one warp or several), at most max_group; lane l
//           of a group handles accesses l, l + group, ..., l + (units - 1) * group of its row.
//   rows_per_block: groups per block (blockDim.x = group * rows_per_block <= 1024).
struct LayerNormPlan {
  int vec = 1;
  int units = 0;
  int group = 32;
  int rows_per_block = 1;
};

constexpr int kLayerNormElemsPerThread = 16;

KILN_HOST_DEVICE constexpr int layernorm_pow2_ceil(std::int64_t x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

// Accesses per thread at most: 16 channels in 128-bit accesses, 8 in scalar ones (scalar code
// needs more registers per channel).
KILN_HOST_DEVICE constexpr int layernorm_max_units(int vec) {
  return vec == 1 ? kLayerNormElemsPerThread / 2 : kLayerNormElemsPerThread / vec;
}

// c >= 1 with c % vec == 0. max_group (a multiple of 32, at most 1024) bounds the threads per
// row and so the block (the kernel's __launch_bounds__); block_threads (at most max_group) is
// the block size aimed for when several rows share a block.
KILN_HOST_DEVICE LayerNormPlan plan_layernorm(std::int64_t c, int vec, int max_group, int block_threads) {
  LayerNormPlan plan;
  plan.vec = vec;
  const std::int64_t accesses = c / vec;
  const std::int64_t max_units = layernorm_max_units(vec);
  const std::int64_t threads = (accesses + max_units - 1) / max_units;  // at the most units each
  if (threads <= 32) {
    plan.group = 32;
  } else if (threads <= max_group) {
    plan.group = static_cast<int>((threads + 31) / 32 * 32);
  } else {
    plan.group = max_group;
    plan.units = 0;
    plan.rows_per_block = 1;
    return plan;
  }
  plan.units = layernorm_pow2_ceil((accesses + plan.group - 1) / plan.group);
  plan.rows_per_block = block_threads / plan.group > 1 ? block_threads / plan.group : 1;
  return plan;
}

}  // namespace kiln::cuda
