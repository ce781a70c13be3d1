// Reward modelling (train.stage: reward; docs/rlhf.md): a scalar head on the trunk (started from
// an SFT checkpoint, the head from the seed) learns human preferences with the pairwise
// Bradley-Terry loss
//     -log sigmoid(r_chosen - r_rejected - margin) + reward.center * (r_chosen + r_rejected)^2
// where a response's score r is the head's value at its last token (the end-of-text closing it).
// Validation reports the loss, the accuracy (r_chosen > r_rejected) and the mean margin on
// data.val_preferences. Each checkpoint stores, in its model.safetensors metadata, the mean and
// standard deviation of the scores of reference samples, which ppo and policy-eval use to
// normalise rewards: with data.val_prompts, the responses of the reference policy (roles.reference,
// else train.init_from: the SFT policy) sampled to those prompts, so the reference scores 0 on
// average and a policy's normalised score is its gain in standard deviations of the reference's;
// without, every response of the held-out pairs (else of the training pairs).
#pragma once

#include <memory>

#include "core/model/heads.h"
#include "trainers/preference_data.h"
#include "trainers/rollout.h"
#include "trainers/stage.h"

namespace kiln {

class RewardStage : public Stage {
 public:
  RewardStage(const ExperimentConfig& config, int replica, int replicas);

  std::string name() const override { return "reward"; }
  int vocab_size() const override { return tokenizer_->vocab_size(); }
  int eot() const override { return static_cast<int>(tokenizer_->eot()); }
  bool scalar_head() const override { return true; }
  StepLoss accumulate_gradients(Gpt& model, StepContext& ctx) override;
  std::optional<double> validation_loss(Gpt& model, StepContext& ctx) override;
  std::map<std::string, double> step_metrics() const override { return step_metrics_; }
  std::vector<std::string> console_metrics() const override { return {"accuracy", "margin"}; }
  std::map<std::string, double> validation_metrics() const override { return val_metrics_; }
  std::map<std::string, std::string> model_metadata(Gpt& model, StepContext& ctx) override;
  std::vector<RoleRequest> roles() const override;
  void attach(const std::map<std::string, Gpt*>& roles) override;
  nlohmann::json state() const override { return train_.state(); }
  void restore(const nlohmann::json& state) override { train_.restore(state); }
  std::string describe() const override;

  const PreferenceData& train_data() const { return train_; }
  // Every pair's (r_chosen, r_rejected) of a batch of pairs: one forward pass.
  std::vector<std::pair<double, double>> scores(Gpt& model, const PairBatch& batch);

 private:
  ScalarHead& head(Gpt& model);

  ExperimentConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  int micro_batch_, grad_accum_, replica_, replicas_;
  float center_;
  PreferenceData train_;
  std::unique_ptr<PreferenceData> val_;
  std::vector<PromptRecord> norm_prompts_;  // data.val_prompts: the reference samples' prompts
  Gpt* reference_ = nullptr;                // the policy that samples them
  std::unique_ptr<Gpt> whole_;              // tensor parallelism: the reference gathered whole
  std::unique_ptr<ScalarHead> head_;
  Gpt* head_model_ = nullptr;
  std::map<std::string, double> step_metrics_, val_metrics_;
};

}  // namespace kiln
