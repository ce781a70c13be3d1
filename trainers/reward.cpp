// Reward modelling stage (reward.h).
#include "trainers/reward.h"

#include <cmath>

#include "kernels/error.h"
#include "trainers/rl_losses.h"

namespace kiln {

RewardStage::RewardStage(const ExperimentConfig& config, int replica, int replicas)
    : config_(config),
      tokenizer_(make_tokenizer(config.data.tokenizer, config.data.tokenizer_dir)),
      micro_batch_(config.train.micro_batch),
      grad_accum_(config.train.grad_accum),
      replica_(replica),
      replicas_(replicas),
      center_(config.reward.center),
      train_(config.data.preferences, *tokenizer_, config.train.seq_len, config.train.seed, config.reward.use_margin) {
  if (!config.data.val_preferences.empty())
    val_ = std::make_unique<PreferenceData>(config.data.val_preferences, *tokenizer_, config.train.seq_len,
                                            config.train.seed, config.reward.use_margin);
  if (!config.data.val_prompts.empty())
    norm_prompts_ = load_prompts(config.data.val_prompts, *tokenizer_, config.train.seq_len,
                                 config.reward.norm_max_new_tokens);
}

std::vector<RoleRequest> RewardStage::roles() const {
  if (norm_prompts_.empty()) return {};
  const std::string& from = config_.roles.reference.empty() ? config_.train.init_from : config_.roles.reference;
  return {{"reference", from, false, false, 0.0f}};
}

void RewardStage::attach(const std::map<std::string, Gpt*>& roles) {
  if (!norm_prompts_.empty()) reference_ = roles.at("reference");
}

ScalarHead& RewardStage::head(Gpt& model) {
  if (!head_ || head_model_ != &model) {
    head_ = std::make_unique<ScalarHead>(model);
    head_model_ = &model;
  }
  return *head_;
}

std::vector<std::pair<double, double>> RewardStage::scores(Gpt& model, const PairBatch& pb) {
  const std::vector<float> values = head(model).forward(model.trunk_forward(pb.batch));
  std::vector<std::pair<double, double>> out;
  for (std::size_t j = 0; j < pb.chosen.size(); ++j)
    out.emplace_back(values[pb.last_token(pb.chosen[j])], values[pb.last_token(pb.rejected[j])]);
  return out;
}

StepLoss RewardStage::accumulate_gradients(Gpt& model, StepContext& ctx) {
  StepLoss step;
  const double pairs = static_cast<double>(micro_batch_) * grad_accum_ * replicas_;
  double correct = 0.0, margin = 0.0;
  const std::int64_t c = model.shape().n_embd;
  for (int a = 0; a < grad_accum_; ++a) {
    const PairBatch pb = train_.batch(train_.step_pairs(a, micro_batch_, grad_accum_, replica_, replicas_));
    const Tensor& hidden = model.trunk_forward(pb.batch);
    const std::vector<float> values = head(model).forward(hidden);
    std::vector<float> dvalues(values.size(), 0.0f);
    for (std::size_t j = 0; j < pb.chosen.size(); ++j) {
      const std::int64_t ic = pb.last_token(pb.chosen[j]), ir = pb.last_token(pb.rejected[j]);
      const PairLoss l = bradley_terry(values[ic], values[ir], pb.margins[j], center_);
      step.loss_sum += l.loss;
      dvalues[ic] = static_cast<float>(l.d_chosen / pairs);
      dvalues[ir] = static_cast<float>(l.d_rejected / pairs);
      correct += values[ic] > values[ir] ? 1.0 : 0.0;
      margin += static_cast<double>(values[ic]) - values[ir];
    }
    step.tokens += static_cast<std::int64_t>(pb.chosen.size());
    step.processed += static_cast<std::int64_t>(pb.batch.batch) * pb.batch.seq_len;
    Tensor dhidden = Tensor::zeros({hidden.numel() / c, c}, DType::f32, model.device());
    head(model).backward(hidden, dvalues, dhidden);
    if (a + 1 == grad_accum_) ctx.before_last_backward();
    model.trunk_backward(dhidden);
  }
  train_.advance(micro_batch_, grad_accum_, replicas_);
  double sums[2] = {correct, margin};
  ctx.sum_many(sums, 2);
  step_metrics_ = {{"accuracy", sums[0] / pairs}, {"margin", sums[1] / pairs}};
  return step;
}

std::optional<double> RewardStage::validation_loss(Gpt& model, StepContext& ctx) {
  if (!val_) return std::nullopt;
  // Each replica scores every replicas-th micro-batch of the held-out pairs, in file order.
  double sums[4] = {};  // loss, correct, margin, pairs
  for (std::size_t first = static_cast<std::size_t>(replica_ * micro_batch_); first < val_->size();
       first += static_cast<std::size_t>(micro_batch_) * replicas_) {
    const std::vector<std::size_t> ids = val_->indices(first, micro_batch_);
    const PairBatch pb = val_->batch(ids);
    const auto s = scores(model, pb);
    for (std::size_t j = 0; j < s.size(); ++j) {
      sums[0] += bradley_terry(s[j].first, s[j].second, pb.margins[j], center_).loss;
      sums[1] += s[j].first > s[j].second ? 1.0 : 0.0;
      sums[2] += s[j].first - s[j].second;
      sums[3] += 1.0;
    }
  }
  ctx.sum_many(sums, 4);
  val_metrics_ = {{"accuracy", sums[1] / sums[3]}, {"margin", sums[2] / sums[3]}};
  return sums[0] / sums[3];
}

std::map<std::string, std::string> RewardStage::model_metadata(Gpt& model, StepContext& ctx) {
  if (!norm_prompts_.empty()) {
    // The reference samples: the reference policy's responses to data.val_prompts (a seed per
    // prompt, the same whatever the layout), scored raw.
    KILN_CHECK(reference_ != nullptr, "reward: roles not attached");
    Gpt& policy = gathered_whole(*reference_, config_.model, tokenizer_->vocab_size(), whole_);
    const PolicyScores s = score_policy(policy, *tokenizer_, norm_prompts_, config_.reward.norm_max_new_tokens,
                                        config_.train.seq_len, micro_batch_, replica_, replicas_, ctx.sum_many,
                                        &model, ScoreNorm{}, config_.reward.norm_temperature, config_.train.seed);
    return {{"kiln_score_mean", message(s.proxy)}, {"kiln_score_std", message(s.proxy_std)},
            {"kiln_score_samples", message(norm_prompts_.size(), " responses of the reference policy (",
                                           roles().front().from, ") to ", config_.data.val_prompts,
                                           " at temperature ", config_.reward.norm_temperature, ", seed ",
                                           config_.train.seed)}};
  }
  // The reference samples: every response of the held-out pairs (else of the training pairs).
  const PreferenceData& data = val_ ? *val_ : train_;
  double sums[3] = {};  // n, sum, sum of squares
  for (std::size_t first = static_cast<std::size_t>(replica_ * micro_batch_); first < data.size();
       first += static_cast<std::size_t>(micro_batch_) * replicas_) {
    const std::vector<std::size_t> ids = data.indices(first, micro_batch_);
    for (const auto& [rc, rr] : scores(model, data.batch(ids))) {
      sums[0] += 2;
      sums[1] += rc + rr;
      sums[2] += rc * rc + rr * rr;
    }
  }
  ctx.sum_many(sums, 3);
  const double mean = sums[1] / sums[0];
  const double sd = std::sqrt(std::max(0.0, sums[2] / sums[0] - mean * mean));
  return {{"kiln_score_mean", message(mean)}, {"kiln_score_std", message(sd)},
          {"kiln_score_samples", message(static_cast<std::int64_t>(sums[0]), " responses of ", data.path())}};
}

std::string RewardStage::describe() const {
  return message("reward: ", train_.size(), " preference pairs from ", train_.path(),
                 val_ ? message("; validation: ", val_->size(), " pairs from ", val_->path()) : std::string(),
                 center_ > 0 ? message("; centring ", center_) : std::string(),
                 norm_prompts_.empty() ? std::string()
                                       : message("; scores normalised by the reference policy's responses to ",
                                                 norm_prompts_.size(), " prompts"));
}

}  // namespace kiln
