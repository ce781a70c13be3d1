// AdamW with decoupled weight decay (none on LayerNorm gains, biases or embeddings: only the
// matmul weights decay, as the Parameter table marks), global-norm gradient clipping, and the
// learning-rate schedule (linear warmup, then cosine decay to lr * min_lr_ratio, or constant).
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.h"
#include "core/model/gpt.h"
#include "core/tensor.h"

namespace kiln {

// Learning rate for 1-based optimizer step `step` of `max_steps`.
float learning_rate(const OptimConfig& optim, std::int64_t step, std::int64_t max_steps);

class AdamW {
 public:
  AdamW(const OptimConfig& config, Gpt& model);

  struct StepStats {
    double grad_norm;   // global L2 norm of the gradients before clipping
    float grad_scale;   // factor applied by clipping (1 when not clipped)
  };
  // Clips the model's gradients by global norm and applies one AdamW update with this lr.
  StepStats step(float lr);

  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t steps) { steps_ = steps; }
  Tensor& exp_avg() { return exp_avg_; }        // first moments, laid out like the parameters
  Tensor& exp_avg_sq() { return exp_avg_sq_; }  // second moments

 private:
  OptimConfig config_;
  Gpt& model_;
  const KernelTable* kernels_;
  Tensor exp_avg_, exp_avg_sq_;
  std::vector<AdamWSegment> segments_;  // runs of parameters with one weight decay
  std::int64_t steps_ = 0;
};

}  // namespace kiln
