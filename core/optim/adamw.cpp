// AdamW, clipping and the learning-rate schedule.
#include "core/optim/adamw.h"

#include <cmath>

namespace kiln {

float learning_rate(const OptimConfig& optim, std::int64_t step, std::int64_t max_steps) {
  if (optim.warmup_steps > 0 && step <= optim.warmup_steps)
    return optim.lr * static_cast<float>(step) / static_cast<float>(optim.warmup_steps);
  if (optim.schedule == "constant") return optim.lr;
  const double span = static_cast<double>(max_steps - optim.warmup_steps);
  const double progress = span > 0 ? std::min(1.0, (step - optim.warmup_steps) / span) : 1.0;
  const double min_lr = static_cast<double>(optim.lr) * optim.min_lr_ratio;
  return static_cast<float>(min_lr + 0.5 * (optim.lr - min_lr) * (1.0 + std::cos(M_PI * progress)));
}

AdamW::AdamW(const OptimConfig& config, Gpt& model)
    : config_(config),
      model_(model),
      kernels_(&kernels_for(model.parameter_buffer().device())),
      exp_avg_(Tensor::zeros(model.parameter_buffer().shape(), DType::f32, model.parameter_buffer().device())),
      exp_avg_sq_(Tensor::zeros(model.parameter_buffer().shape(), DType::f32, model.parameter_buffer().device())) {
  // Consecutive parameters with the same weight decay form one segment.
  const float* base = model.parameter_buffer().f32();
  for (const Parameter& p : model.parameters()) {
    const float wd = p.decay ? config.weight_decay : 0.0f;
    const std::int64_t offset = p.value.f32() - base;
    if (!segments_.empty() && segments_.back().weight_decay == wd &&
        segments_.back().offset + segments_.back().size == offset)
      segments_.back().size += p.value.numel();
    else
      segments_.push_back({offset, p.value.numel(), wd});
  }
}

AdamW::StepStats AdamW::step(float lr) {
  Tensor& grads = model_.gradient_buffer();
  const double norm = std::sqrt(kernels_->sum_squares(grads.f32(), grads.numel()));
  KILN_CHECK(std::isfinite(norm), "the gradient norm is ", norm, " at step ", steps_ + 1,
             "; lower optim.lr or check the data (training diverged)");
  float scale = 1.0f;
  if (config_.grad_clip > 0.0f && norm > config_.grad_clip)
    scale = static_cast<float>(config_.grad_clip / (norm + 1e-6));
  ++steps_;
  const AdamWStep s{lr, config_.beta1, config_.beta2, config_.eps, scale, steps_};
  kernels_->adamw_update(model_.parameter_buffer().f32(), grads.f32(), exp_avg_.f32(),
                         exp_avg_sq_.f32(), segments_.data(), static_cast<int>(segments_.size()), s);
  return {norm, scale};
}

}  // namespace kiln
