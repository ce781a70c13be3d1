// Optimizer kernels: AdamW update and the squared norm used for global-norm clipping.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace kiln::cpu {

struct AdamWStep {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float grad_scale;     // gradients are multiplied by this first (clipping)
  std::int64_t step;    // 1-based, for bias correction
};

// A run of parameters sharing one weight decay: elements [offset, offset + size).
struct AdamWSegment {
  std::int64_t offset;
  std::int64_t size;
  float weight_decay;   // decoupled: param -= lr * weight_decay * param
};

// One AdamW step over every segment of the flat buffers (one parallel region for all of them),
// the same arithmetic as torch.optim.AdamW.
void adamw_update(float* param, const float* grad, float* m, float* v,
                  const AdamWSegment* segments, int num_segments, const AdamWStep& step);

// Sum of squares in double, deterministic for a fixed thread count.
double sum_squares(const float* x, std::int64_t n);

}  // namespace kiln::cpu

namespace kiln::cuda {

using cpu::AdamWSegment;
using cpu::AdamWStep;

// The CUDA twins (kernels/cuda/optimizer.cu). param, grad, m, v (and param_bf16, x) are device
// pointers; `segments` is a HOST array (as the optimizer keeps it), copied to a small scratch
// table each call. Segments must not overlap; gaps between them are left untouched. Queued on
// kiln::cuda::stream(); nothing syncs the host except sum_squares, which returns its value.

// One launch for every segment (see kernels/optimizer_tiling.h): the CPU twin's arithmetic in
// fp32 (grad_scale first, decoupled decay, bias corrections computed on the host as the CPU
// does). float4 loads when param, grad, m, v are 16-byte aligned, else element by element.
void adamw_update(float* param, const float* grad, float* m, float* v,
                  const AdamWSegment* segments, int num_segments, const AdamWStep& step);

// Sum of squares in double: a grid that depends only on n, per-thread double sums, per-block
// partials reduced in a fixed order. The same bits on every run (not the CPU twin's bits: the
// order differs). Waits for the result (one host sync: the logged gradient norm).
double sum_squares(const float* x, std::int64_t n);

// sum_squares leaving its result in *out_device (one double) without waiting; n == 0 writes 0.
void sum_squares_async(double* out_device, const float* x, std::int64_t n);

// adamw_update that also writes param_bf16[i] = kiln::to_bf16(updated param[i]) for every
// updated element (the weights the next bf16 forward uses), in the same kernel. 4-element
// vector path also needs param_bf16 8-byte aligned.
void adamw_update_bf16_copy(float* param, bf16* param_bf16, const float* grad, float* m, float* v,
                            const AdamWSegment* segments, int num_segments, const AdamWStep& step);

// adamw_update (with the bf16 copy when param_bf16 is non-null) whose gradient scale is read from
// device memory, *grad_scale_device, instead of step.grad_scale (which is ignored): clipping
// without a host round trip (see clip_scale_from_sum_squares).
void adamw_update_scaled(float* param, bf16* param_bf16 /*nullable*/, const float* grad, float* m,
                         float* v, const AdamWSegment* segments, int num_segments,
                         const AdamWStep& step, const float* grad_scale_device);

// *scale_out = the clip factor kiln::AdamW::step uses (core/optim/adamw.cpp), from the squared
// norm in *sum_squares_device: norm = sqrt(ss); 1 unless max_norm > 0 and norm > max_norm, then
// float(max_norm / (norm + 1e-6)) in double. A non-finite norm is not caught here (the host
// check in AdamW::step is): NaN gives 1, +inf gives 0; the gradients carry the NaN/inf anyway.
void clip_scale_from_sum_squares(float* scale_out, const double* sum_squares_device, float max_norm);

}  // namespace kiln::cuda
