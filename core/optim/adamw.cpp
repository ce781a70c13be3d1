// AdamW, clipping and the learning-rate schedule.
#include "core/optim/adamw.h"

#include <algorithm>
#include <cmath>

namespace kiln {

float learning_rate(const OptimConfig& optim, std::int64_t step, std::int64_t max_steps) {
  if (optim.warmup_steps > 0 && step <= optim.warmup_steps)
    return optim.lr * static_cast<float>(step) / static_cast<float>(optim.warmup_steps);
  if (optim.schedule == "constant") return optim.lr;
  const double span = static_cast<double>(max_steps - optim.warmup_steps);
  // Step warmup+1 (step 1 without warmup) is at the peak; the last step is one decay step short
  // of the floor.
  const double progress = span > 0 ? std::min(1.0, (step - 1 - optim.warmup_steps) / span) : 1.0;
  const double min_lr = static_cast<double>(optim.lr) * optim.min_lr_ratio;
  return static_cast<float>(min_lr + 0.5 * (optim.lr - min_lr) * (1.0 + std::cos(M_PI * progress)));
}

AdamW::AdamW(const OptimConfig& config, Gpt& model)
    : AdamW(config, model, 0, model.parameter_buffer().numel()) {}

AdamW::AdamW(const OptimConfig& config, Gpt& model, std::int64_t begin, std::int64_t end)
    : config_(config),
      model_(model),
      kernels_(&kernels_for(model.parameter_buffer().device())),
      begin_(begin),
      end_(end),
      exp_avg_(Tensor::zeros({end - begin}, DType::f32, model.parameter_buffer().device())),
      exp_avg_sq_(Tensor::zeros({end - begin}, DType::f32, model.parameter_buffer().device())) {
  KILN_ASSERT(0 <= begin && begin <= end && end <= model.parameter_buffer().numel());
  // The part of each parameter inside the slice; consecutive parts with the same weight decay
  // form one segment. Offsets are relative to the slice.
  const float* base = model.parameter_buffer().f32();
  for (const Parameter& p : model.parameters()) {
    const float wd = p.decay ? config.weight_decay : 0.0f;
    const std::int64_t first = std::max(begin, p.value.f32() - base);
    const std::int64_t last = std::min(end, p.value.f32() - base + p.value.numel());
    if (first >= last) continue;
    if (!segments_.empty() && segments_.back().weight_decay == wd &&
        segments_.back().offset + segments_.back().size == first - begin)
      segments_.back().size += last - first;
    else
      segments_.push_back({first - begin, last - first, wd});
  }
}

AdamW::StepStats AdamW::step(float lr) {
  KILN_ASSERT(begin_ == 0 && end_ == model_.parameter_buffer().numel());
  const Tensor& grads = model_.gradient_buffer();
  const double norm = std::sqrt(kernels_->sum_squares(grads.f32(), grads.numel()));
  return step(lr, grads.f32(), norm);
}

AdamW::StepStats AdamW::step(float lr, const float* grads, double norm) {
  KILN_CHECK(std::isfinite(norm), "the gradient norm is ", norm, " at step ", steps_ + 1,
             "; lower optim.lr or check the data (training diverged), or set train.on_nonfinite=skip to skip "
             "such steps");
  float scale = 1.0f;
  if (config_.grad_clip > 0.0f && norm > config_.grad_clip)
    scale = static_cast<float>(config_.grad_clip / (norm + 1e-6));
  ++steps_;
  const AdamWStep s{lr, config_.beta1, config_.beta2, config_.eps, scale, steps_};
  float* params = model_.parameter_buffer().f32() + begin_;
  if (model_.bf16_weights().defined()) {
    // model.dtype bf16: the same update, also writing the bf16 weights the next forward reads.
    bf16* copy = static_cast<bf16*>(const_cast<void*>(model_.bf16_weights().raw())) + begin_;
    kernels_->bf16->adamw_update_copy(params, copy, grads, exp_avg_.f32(), exp_avg_sq_.f32(),
                                      segments_.data(), static_cast<int>(segments_.size()), s);
  } else {
    kernels_->adamw_update(params, grads, exp_avg_.f32(), exp_avg_sq_.f32(), segments_.data(),
                           static_cast<int>(segments_.size()), s);
  }
  return {norm, scale};
}

}  // namespace kiln
