// AdamW with decoupled weight decay (none on LayerNorm gains, biases or embeddings: only the
// matmul weights decay, as the Parameter table marks), global-norm gradient clipping, and the
// learning-rate schedule (linear warmup, then cosine decay to lr * min_lr_ratio, or constant).
// An AdamW may own only a slice of the flat parameter buffer (ZeRO-1: each data-parallel rank
// keeps the moments of, and updates, its own slice).
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
  // Updates the whole model.
  AdamW(const OptimConfig& config, Gpt& model);
  // Updates elements [begin, end) of the model's flat parameter buffer.
  AdamW(const OptimConfig& config, Gpt& model, std::int64_t begin, std::int64_t end);

  struct StepStats {
    double grad_norm;   // global L2 norm of the gradients before clipping
    float grad_scale;   // factor applied by clipping (1 when not clipped)
  };
  // Whole model: clips the model's gradients by their global norm and applies one update.
  StepStats step(float lr);
  // Slice: `grads` holds the gradients of the slice's parameters (end - begin values) and
  // grad_norm is the norm of all gradients of the model (over every slice).
  StepStats step(float lr, const float* grads, double grad_norm);

  std::int64_t begin() const { return begin_; }
  std::int64_t end() const { return end_; }
  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t steps) { steps_ = steps; }
  Tensor& exp_avg() { return exp_avg_; }        // first moments of the slice
  Tensor& exp_avg_sq() { return exp_avg_sq_; }  // second moments of the slice

 private:
  OptimConfig config_;
  Gpt& model_;
  const KernelTable* kernels_;
  std::int64_t begin_, end_;
  Tensor exp_avg_, exp_avg_sq_;
  std::vector<AdamWSegment> segments_;  // runs of the slice with one weight decay, slice offsets
  std::int64_t steps_ = 0;
};

}  // namespace kiln
