// Direct preference optimisation (train.stage: dpo; docs/rlhf.md): the policy (from
// train.init_from) learns from preference pairs directly, against a frozen reference (the
// "reference" role: roles.reference, else train.init_from). With s = a response's summed
// log-probability over its tokens (its end-of-text included) and h = (s_c - ref_c) - (s_r - ref_r):
//   sigmoid: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (dpo.label_smoothing = eps)
//   ipo:     (h - 1 / (2 beta))^2
// The gradient goes through the LM head as per-token weights (Batch::weights): every token of a
// response carries -dL/ds, so one forward-backward pass gives the exact gradient. Reference
// log-probabilities are computed with every batch (dpo.reference: live) or once for every pair
// at the start (precomputed). Logged: the implicit rewards beta (s - ref) of chosen and rejected,
// their margin and the accuracy; validation adds the gold scores of the policy's responses to
// data.val_prompts (sampled at ppo.temperature, at most ppo.max_new_tokens).
#pragma once

#include <memory>

#include "trainers/preference_data.h"
#include "trainers/rollout.h"
#include "trainers/stage.h"

namespace kiln {

class DpoStage : public Stage {
 public:
  DpoStage(const ExperimentConfig& config, int replica, int replicas);

  std::string name() const override { return "dpo"; }
  int vocab_size() const override { return tokenizer_->vocab_size(); }
  int eot() const override { return static_cast<int>(tokenizer_->eot()); }
  std::vector<RoleRequest> roles() const override;
  void attach(const std::map<std::string, Gpt*>& roles) override;
  StepLoss accumulate_gradients(Gpt& model, StepContext& ctx) override;
  std::optional<double> validation_loss(Gpt& model, StepContext& ctx) override;
  std::map<std::string, double> step_metrics() const override { return step_metrics_; }
  std::vector<std::string> console_metrics() const override { return {"accuracy", "reward_margin"}; }
  std::map<std::string, double> validation_metrics() const override { return val_metrics_; }
  nlohmann::json state() const override { return train_.state(); }
  void restore(const nlohmann::json& state) override { train_.restore(state); }
  std::string describe() const override;

  const PreferenceData& train_data() const { return train_; }
  // Each pair's summed response log-probabilities (chosen, rejected) under `model`.
  static std::vector<std::pair<double, double>> sequence_logprobs(Gpt& model, const PairBatch& batch);

 private:
  // The reference's (chosen, rejected) sums for the pairs of `batch` (training pairs `ids`:
  // precomputed ones when dpo.reference is precomputed).
  std::vector<std::pair<double, double>> reference(const std::vector<std::size_t>& ids, const PairBatch& batch,
                                                   bool train);

  ExperimentConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  int micro_batch_, grad_accum_, replica_, replicas_;
  PreferenceData train_;
  std::unique_ptr<PreferenceData> val_;
  std::vector<PromptRecord> val_prompts_;
  std::unique_ptr<Gpt> whole_;  // tensor parallelism: the policy gathered whole for sampling
  Gpt* reference_ = nullptr;
  std::vector<std::pair<double, double>> precomputed_;  // dpo.reference precomputed: every training pair's
  std::map<std::string, double> step_metrics_, val_metrics_;
};

}  // namespace kiln
