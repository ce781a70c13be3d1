// Pretraining: next-token prediction on random windows of token shards.
#pragma once

#include <optional>

#include "core/data/loader.h"
#include "trainers/stage.h"

namespace kiln {

class PretrainStage : public Stage {
 public:
  PretrainStage(const ExperimentConfig& config, int replica, int replicas);

  std::string name() const override { return "pretrain"; }
  int vocab_size() const override { return vocab_size_; }
  int eot() const override { return eot_; }
  StepLoss accumulate_gradients(Gpt& model, StepContext& ctx) override;
  std::optional<double> validation_loss(Gpt& model, StepContext& ctx) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  std::string describe() const override;

 private:
  Batch empty_batch() const;

  int grad_accum_;
  int vocab_size_;
  int eot_ = 0;
  int eval_batches_;
  TokenLoader train_;
  std::optional<TokenLoader> val_;
  std::vector<Batch> micro_;  // reused micro-batch buffers
  std::string note_;          // a remark for describe(), e.g. validation capped
};

}  // namespace kiln
