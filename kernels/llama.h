// The LLaMA family's kernels: RMSNorm (plain and fused with the residual add), rotary position
// embeddings applied in place to the q and k parts of a fused q|k|v buffer, and the SwiGLU
// activation over a fused gate|up buffer. CPU reference; CUDA twins (fp32 and bf16 activations)
// in kernels/cuda/llama.cu.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace kiln::cpu {

// RMSNorm over the last dimension: out (rows, c) = inp * rstd * gamma with
// rstd = 1 / sqrt(mean(inp^2) + eps) saved per row (rows).
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* gamma, std::int64_t rows,
                     std::int64_t c, float eps);
// Accumulates dinp += d out / d inp given dout, and dgamma += sum over rows of dout * inp * rstd
// (per-thread partial sums added in thread order: deterministic for a fixed thread count).
void rmsnorm_backward(float* dinp, float* dgamma, const float* dout, const float* inp, const float* gamma,
                      const float* rstd, std::int64_t rows, std::int64_t c);
// residual = inp + delta (residual may alias inp), then out = RMSNorm(residual): bit for bit
// add() followed by rmsnorm_forward().
void residual_rmsnorm_forward(float* residual, float* out, float* rstd, const float* inp, const float* delta,
                              const float* gamma, std::int64_t rows, std::int64_t c, float eps);

// Rotary position embeddings (RoFormer), in Hugging Face's LLaMA layout ("rotate half"): within a
// head of size hd, dimension i < hd/2 is paired with i + hd/2 and the pair is rotated by the
// angle position * inv_freq[i]:
//   x'[i]        = x[i] cos - x[i + hd/2] sin
//   x'[i + hd/2] = x[i + hd/2] cos + x[i] sin
// cos and sin are tables (positions, hd/2) made by rope_tables. qkv (rows, (q_heads + 2 kv_heads)
// * hd) holds each row's q heads, then k heads, then v heads; q and k are rotated in place by
// each row's positions[row], v is left alone.
void rope_forward(float* qkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                  std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd);
// The gradient through the rotation: dqkv's q and k parts rotated back (by -angle), in place.
void rope_backward(float* dqkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                   std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd);

// SwiGLU: inp (rows, 2f) holds each row's gate g then up u (f each); out (rows, f) = silu(g) * u
// with silu(g) = g / (1 + exp(-g)).
void swiglu_forward(float* out, const float* inp, std::int64_t rows, std::int64_t f);
// dinp (rows, 2f) = [dout * u * silu'(g) | dout * silu(g)] (overwritten).
void swiglu_backward(float* dinp, const float* inp, const float* dout, std::int64_t rows, std::int64_t f);

}  // namespace kiln::cpu

namespace kiln::cuda {

// The same contracts on device pointers, queued on kiln::cuda::stream(); rows or c == 0 launch
// nothing. dgamma is deterministic (fixed-order partial sums, no atomics). The cpu rounds the
// rotation's products as its compiler contracts them; here each product and sum is rounded
// once (no FMA), so the two agree to an ulp.
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* gamma, std::int64_t rows,
                     std::int64_t c, float eps);
void rmsnorm_backward(float* dinp, float* dgamma, const float* dout, const float* inp, const float* gamma,
                      const float* rstd, std::int64_t rows, std::int64_t c);
void residual_rmsnorm_forward(float* residual, float* out, float* rstd, const float* inp, const float* delta,
                              const float* gamma, std::int64_t rows, std::int64_t c, float eps);
void rope_forward(float* qkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                  std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd);
void rope_backward(float* dqkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                   std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd);
void swiglu_forward(float* out, const float* inp, std::int64_t rows, std::int64_t f);
void swiglu_backward(float* dinp, const float* inp, const float* dout, std::int64_t rows, std::int64_t f);

// bf16 activations: fp32 arithmetic, gamma, rstd and dgamma in fp32, one rounding per bf16
// store. The fused residual's statistics are those of the rounded residual (the value stored);
// rmsnorm_backward_bf16 forms dinp + grad in fp32 and rounds once.
void rmsnorm_forward_bf16(bf16* out, float* rstd, const bf16* inp, const float* gamma, std::int64_t rows,
                          std::int64_t c, float eps);
void rmsnorm_backward_bf16(bf16* dinp, float* dgamma, const bf16* dout, const bf16* inp, const float* gamma,
                           const float* rstd, std::int64_t rows, std::int64_t c);
void residual_rmsnorm_forward_bf16(bf16* residual, bf16* out, float* rstd, const bf16* inp, const bf16* delta,
                                   const float* gamma, std::int64_t rows, std::int64_t c, float eps);
void rope_forward_bf16(bf16* qkv, const float* cos, const float* sin, const std::int32_t* positions, std::int64_t rows,
                       std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd);
void rope_backward_bf16(bf16* dqkv, const float* cos, const float* sin, const std::int32_t* positions,
                        std::int64_t rows, std::int64_t q_heads, std::int64_t kv_heads, std::int64_t hd);
void swiglu_forward_bf16(bf16* out, const bf16* inp, std::int64_t rows, std::int64_t f);
void swiglu_backward_bf16(bf16* dinp, const bf16* inp, const bf16* dout, std::int64_t rows, std::int64_t f);

}  // namespace kiln::cuda

namespace kiln {

// Llama 3's frequency scaling (Hugging Face's rope_type "llama3"): with wavelength
// w = 2 pi / inv_freq, frequencies with w < original_context / high_freq_factor are kept, those
// with w > original_context / low_freq_factor are divided by factor, and those between are
// interpolated by s = (original_context / w - low_freq_factor) / (high_freq_factor -
// low_freq_factor): (1 - s) inv_freq / factor + s inv_freq.
struct RopeScaling {
  bool llama3 = false;
  float factor = 8.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_context = 8192;
};

// The rotary tables for positions [0, positions) of heads of size hd: cos and sin (positions,
// hd/2) of position * inv_freq[i], inv_freq[i] = theta^(-2i/hd) (scaled as `scaling` says),
// computed as Hugging Face does (inv_freq in fp32, the angle as an fp32 product, cos and sin in
// fp32). Host memory.
void rope_tables(float* cos, float* sin, std::int64_t positions, std::int64_t hd, float theta,
                 const RopeScaling& scaling = {});

}  // namespace kiln
