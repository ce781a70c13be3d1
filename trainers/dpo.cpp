// Direct preference optimisation stage (dpo.h).
#include "trainers/dpo.h"

#include "kernels/error.h"
#include "trainers/rl_losses.h"

namespace kiln {

DpoStage::DpoStage(const ExperimentConfig& config, int replica, int replicas)
    : config_(config),
      tokenizer_(make_tokenizer(config.data.tokenizer, config.data.tokenizer_dir)),
      micro_batch_(config.train.micro_batch),
      grad_accum_(config.train.grad_accum),
      replica_(replica),
      replicas_(replicas),
      train_(config.data.preferences, *tokenizer_, config.train.seq_len, config.train.seed, false) {
  if (!config.data.val_preferences.empty())
    val_ = std::make_unique<PreferenceData>(config.data.val_preferences, *tokenizer_, config.train.seq_len,
                                            config.train.seed, false);
  if (!config.data.val_prompts.empty())
    val_prompts_ = load_prompts(config.data.val_prompts, *tokenizer_, config.train.seq_len, config.ppo.max_new_tokens);
}

std::vector<RoleRequest> DpoStage::roles() const {
  return {{"reference", config_.roles.reference.empty() ? config_.train.init_from : config_.roles.reference, false,
           false, 0.0f}};
}

std::vector<std::pair<double, double>> DpoStage::sequence_logprobs(Gpt& model, const PairBatch& pb) {
  const std::vector<float> lp = model.token_logprobs(pb.batch);
  auto sum = [&](const Placement& p) {
    double s = 0.0;
    const std::int64_t at = static_cast<std::int64_t>(p.row) * pb.batch.seq_len + p.offset;
    for (int i = 0; i < p.length; ++i) s += lp[at + i];  // 0 outside the response
    return s;
  };
  std::vector<std::pair<double, double>> out;
  for (std::size_t j = 0; j < pb.chosen.size(); ++j) out.emplace_back(sum(pb.chosen[j]), sum(pb.rejected[j]));
  return out;
}

void DpoStage::attach(const std::map<std::string, Gpt*>& roles) {
  reference_ = roles.at("reference");
  if (config_.dpo.reference != "precomputed") return;
  // Every pair's reference sums, once: each rank computes all of them (the same numbers
  // whatever the layout), in micro-batches of the file's order.
  precomputed_.clear();
  for (std::size_t first = 0; first < train_.size(); first += static_cast<std::size_t>(micro_batch_)) {
    const std::vector<std::size_t> ids = train_.indices(first, micro_batch_);
    for (const auto& s : sequence_logprobs(*reference_, train_.batch(ids))) precomputed_.push_back(s);
  }
}

std::vector<std::pair<double, double>> DpoStage::reference(const std::vector<std::size_t>& ids,
                                                           const PairBatch& batch, bool train) {
  if (!train || precomputed_.empty()) return sequence_logprobs(*reference_, batch);
  std::vector<std::pair<double, double>> out;
  for (std::size_t i : ids) out.push_back(precomputed_.at(i));
  return out;
}

StepLoss DpoStage::accumulate_gradients(Gpt& model, StepContext& ctx) {
  KILN_CHECK(reference_ != nullptr, "dpo: no reference model attached");
  StepLoss step;
  const double pairs = static_cast<double>(micro_batch_) * grad_accum_ * replicas_;
  const DpoConfig& o = config_.dpo;
  double sums[3] = {};  // reward chosen, reward rejected, correct
  for (int a = 0; a < grad_accum_; ++a) {
    const std::vector<std::size_t> ids = train_.step_pairs(a, micro_batch_, grad_accum_, replica_, replicas_);
    PairBatch pb = train_.batch(ids);
    const auto policy = sequence_logprobs(model, pb);
    const auto ref = reference(ids, pb, true);
    Batch& b = pb.batch;
    b.weights.assign(b.inputs.size(), 0.0f);
    auto weigh = [&](const Placement& p, double w) {
      const std::int64_t at = static_cast<std::int64_t>(p.row) * b.seq_len + p.offset;
      for (int i = 0; i < p.length; ++i) b.weights[at + i] = static_cast<float>(w);  // the mask keeps the response
    };
    for (std::size_t j = 0; j < ids.size(); ++j) {
      const DpoTerms t = dpo_loss(policy[j].first, policy[j].second, ref[j].first, ref[j].second, o.beta,
                                  o.label_smoothing, o.loss == "ipo");
      step.loss_sum += t.loss;
      // forward_backward's loss is sum w * (-log p): w = -dL/ds gives dL/ds * d(s).
      weigh(pb.chosen[j], -t.d_chosen);
      weigh(pb.rejected[j], -t.d_rejected);
      sums[0] += t.reward_chosen;
      sums[1] += t.reward_rejected;
      sums[2] += t.reward_chosen > t.reward_rejected ? 1.0 : 0.0;
    }
    step.tokens += static_cast<std::int64_t>(ids.size());
    step.processed += static_cast<std::int64_t>(b.batch) * b.seq_len;
    if (a + 1 == grad_accum_) ctx.before_last_backward();
    model.queue_forward_backward(b, static_cast<float>(1.0 / pairs));
  }
  model.take_loss_sum();  // the weighted token sum is not the DPO loss; step.loss_sum is
  train_.advance(micro_batch_, grad_accum_, replicas_);
  ctx.sum_many(sums, 3);
  step_metrics_ = {{"reward_chosen", sums[0] / pairs},
                   {"reward_rejected", sums[1] / pairs},
                   {"reward_margin", (sums[0] - sums[1]) / pairs},
                   {"accuracy", sums[2] / pairs}};
  return step;
}

std::optional<double> DpoStage::validation_loss(Gpt& model, StepContext& ctx) {
  val_metrics_.clear();
  if (!val_prompts_.empty()) {
    Gpt& whole = gathered_whole(model, config_.model, tokenizer_->vocab_size(), whole_);
    const PolicyScores s = score_policy(whole, *tokenizer_, val_prompts_, config_.ppo.max_new_tokens,
                                        config_.train.seq_len, micro_batch_, replica_, replicas_, ctx.sum_many,
                                        nullptr, {}, config_.ppo.temperature, config_.train.seed);
    val_metrics_ = s.as_map();
  }
  if (!val_) return std::nullopt;
  double sums[3] = {};  // loss, correct, pairs
  for (std::size_t first = static_cast<std::size_t>(replica_ * micro_batch_); first < val_->size();
       first += static_cast<std::size_t>(micro_batch_) * replicas_) {
    const std::vector<std::size_t> ids = val_->indices(first, micro_batch_);
    const PairBatch pb = val_->batch(ids);
    const auto policy = sequence_logprobs(model, pb);
    const auto ref = reference(ids, pb, false);
    for (std::size_t j = 0; j < ids.size(); ++j) {
      const DpoTerms t = dpo_loss(policy[j].first, policy[j].second, ref[j].first, ref[j].second, config_.dpo.beta,
                                  config_.dpo.label_smoothing, config_.dpo.loss == "ipo");
      sums[0] += t.loss;
      sums[1] += t.reward_chosen > t.reward_rejected ? 1.0 : 0.0;
      sums[2] += 1.0;
    }
  }
  ctx.sum_many(sums, 3);
  val_metrics_["accuracy"] = sums[1] / sums[2];
  return sums[0] / sums[2];
}

std::string DpoStage::describe() const {
  return message("dpo (", config_.dpo.loss, ", beta ", config_.dpo.beta,
                 config_.dpo.label_smoothing > 0 ? message(", label smoothing ", config_.dpo.label_smoothing) : "",
                 ", reference ", config_.dpo.reference, "): ", train_.size(), " preference pairs from ", train_.path(),
                 val_ ? message("; validation: ", val_->size(), " pairs from ", val_->path()) : std::string(),
                 val_prompts_.empty() ? std::string() : message(", ", val_prompts_.size(), " prompts from ",
                                                                config_.data.val_prompts));
}

}  // namespace kiln
