// PPO with a reward model as critic (train.stage: ppo; docs/rlhf.md). Four models in one
// process group: the policy (trained, from train.init_from), a frozen reference (roles.reference,
// else train.init_from), a frozen reward model (roles.reward) and a trained value model
// (roles.value, else the reward model), which rolls out on the very weights it trains, so nothing
// is synchronised between a rollout engine and a training engine.
//
// A rollout: ppo.rollout_prompts prompts (shared out over the data-parallel ranks) are answered
// by batched decoding (under tensor parallelism, on a whole copy of the policy gathered from its
// shards before each rollout) (ppo.temperature, at most ppo.max_new_tokens, stopping at end-of-text);
// each prompt + response is one row. The policy and the reference score every response token at
// the sampling temperature (the policy's numbers from the same forward pass training uses, so
// the first update sees ratio 1 exactly; their largest difference from the decoder's own is
// logged as logprob_decode_diff); the reward model scores the last token, normalised by its
// stored statistics, with ppo.missing_eot_penalty when the response has no end-of-text, clipped;
// each token's reward is -kl_coef * KL estimate, plus the score at the last token; GAE (gamma,
// lambda) over the value model's values; advantages whitened over the rollout.
// Then ppo.epochs passes of ppo.minibatches minibatches, each one optimizer step of the policy
// (clipped surrogate) and of the value model (clipped value loss), plus ppo.ptx_coef times the
// SFT loss on data.mixture (PPO-ptx). The KL coefficient is fixed or adapts toward ppo.kl_target.
#pragma once

#include <memory>

#include "core/model/heads.h"
#include "trainers/rl_losses.h"
#include "trainers/rollout.h"
#include "trainers/sft.h"
#include "trainers/stage.h"

namespace kiln {

class PpoStage : public Stage {
 public:
  PpoStage(const ExperimentConfig& config, int replica, int replicas);

  std::string name() const override { return "ppo"; }
  int vocab_size() const override { return tokenizer_->vocab_size(); }
  int eot() const override { return static_cast<int>(tokenizer_->eot()); }
  std::vector<RoleRequest> roles() const override;
  void attach(const std::map<std::string, Gpt*>& roles) override;
  StepLoss accumulate_gradients(Gpt& model, StepContext& ctx) override;
  std::optional<double> validation_loss(Gpt& model, StepContext& ctx) override;
  std::map<std::string, double> step_metrics() const override;
  std::vector<std::string> console_metrics() const override { return {"reward", "gold", "kl", "length"}; }
  std::map<std::string, double> validation_metrics() const override { return val_metrics_; }
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  std::string describe() const override;

  // One sampled sequence of a rollout (this replica's), with everything training reads.
  struct Sequence {
    std::vector<std::int32_t> tokens;  // prompt, response, and the end-of-text when chosen
    int prompt = 0;                    // prompt tokens; the response's tokens are the rest
    bool ended = false;
    // Per response token:
    std::vector<float> logprobs, ref_logprobs, values, advantages, returns;
    double score = 0.0;                // the reward after normalisation, penalty and clipping
  };
  const std::vector<Sequence>& rollout() const { return rollout_; }

 private:
  void make_rollout(Gpt& policy, StepContext& ctx);
  // Rows of sequences ids (one per row), masked on their response tokens.
  Batch rows(const std::vector<std::size_t>& ids) const;
  // f(sequence, t, p) for each response token t of the sequences of rows(ids): p is the flat
  // position (row * seq_len + column) whose target is that token.
  template <class F>
  void each_response_token(const std::vector<std::size_t>& ids, F&& f) const {
    const std::size_t seq_len = static_cast<std::size_t>(config_.train.seq_len);
    for (std::size_t r = 0; r < ids.size(); ++r) {
      const std::size_t prompt = static_cast<std::size_t>(rollout_[ids[r]].prompt);
      for (std::size_t t = 0; prompt + t < rollout_[ids[r]].tokens.size(); ++t) f(ids[r], t, r * seq_len + prompt - 1 + t);
    }
  }
  std::vector<std::size_t> minibatch(std::int64_t index) const;

  ExperimentConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  int replica_, replicas_;
  std::vector<PromptRecord> prompts_, val_prompts_;
  Gpt* reference_ = nullptr;
  Gpt* reward_ = nullptr;
  Gpt* value_ = nullptr;
  std::unique_ptr<ScalarHead> reward_head_, value_head_;
  ScoreNorm norm_;
  KlController kl_;
  std::unique_ptr<SftStage> ptx_;  // PPO-ptx: the SFT data
  std::unique_ptr<Gpt> whole_;     // tensor parallelism: the policy gathered whole for decoding
  std::uint64_t ptx_row_ = 0, ptx_pass_ = 0;

  std::uint64_t rollouts_ = 0;      // rollouts made so far
  std::int64_t next_update_ = 0;    // the next minibatch of the rollout (epoch * minibatches + m)
  std::vector<Sequence> rollout_;
  std::map<std::string, double> rollout_metrics_, update_metrics_, val_metrics_;
};

}  // namespace kiln
