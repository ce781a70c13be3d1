// Optimizer kernels: AdamW update and the squared norm used for global-norm clipping.
#pragma once

#include <cstdint>

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
