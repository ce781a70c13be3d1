// Optimizer kernels: AdamW update and the squared norm used for global-norm clipping.
#pragma once

#include <cstdint>

namespace kiln::cpu {

struct AdamWStep {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;   // decoupled: param -= lr * weight_decay * param
  float grad_scale;     // gradients are multiplied by this first (clipping)
  std::int64_t step;    // 1-based, for bias correction
};

// One AdamW step over n parameters, the same arithmetic as torch.optim.AdamW.
void adamw_update(float* param, const float* grad, float* m, float* v, std::int64_t n,
                  const AdamWStep& step);

// Sum of squares in double, deterministic for a fixed thread count.
double sum_squares(const float* x, std::int64_t n);

}  // namespace kiln::cpu
