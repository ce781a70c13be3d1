// Supervised fine-tuning (instruction tuning): next-token loss on the response tokens of a task
// mixture (core/data/instruct.h) and on the end-of-text that closes each response, so a tuned
// model learns to answer and to stop. Examples are rendered through their tasks' templates,
// packed several to a row (positions restart and attention stays inside each example, so an
// example's loss in a packed row equals its loss alone; core/data/packing.h), and the packed
// rows are read in order. Each pass over the mixture is rendered afresh, with the seed
// Rng(train.seed, the mixture's seed).u64(pass): its own order, templates and exemplars, so
// that over several passes a record is seen through several templates, and runs with another
// train.seed see other draws. Validation reports the loss of each task of
// data.val_mixture and their token-weighted mean.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/data/instruct.h"
#include "core/data/packing.h"
#include "core/data/tokenizer.h"
#include "trainers/stage.h"

namespace kiln {

class SftStage : public Stage {
 public:
  SftStage(const ExperimentConfig& config, int replica, int replicas);

  std::string name() const override { return "sft"; }
  int vocab_size() const override { return vocab_size_; }
  int eot() const override { return eot_; }
  StepLoss accumulate_gradients(Gpt& model, StepContext& ctx) override;
  std::optional<double> validation_loss(Gpt& model, StepContext& ctx) override;
  std::map<std::string, double> task_losses() const override { return task_losses_; }
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  std::string describe() const override;
  nlohmann::json record() const override { return {{"stage", "sft"}, {"mixture", split_}}; }

  // The packed training rows of the current pass (all replicas'), for tests and tools.
  const Packed& train_rows() const { return train_; }
  // Renders and packs pass `pass` of the training mixture as the current one (the loop calls
  // it at each pass's start and on resume; tests, to see a later pass).
  void start_pass(std::uint64_t pass);

 private:
  struct ValTask {
    std::string name;
    Packed rows;
  };

  int micro_batch_, grad_accum_, replica_, replicas_;
  int vocab_size_ = 0;
  int eot_ = 0;
  MixtureConfig mixture_;        // the training mixture as loaded (its seed: the file's)
  std::string mixture_path_;
  std::uint64_t train_seed_ = 0;
  std::unique_ptr<Tokenizer> tokenizer_;
  PackOptions pack_options_;
  Packed train_;                 // rows of the current pass, a multiple of micro_batch * replicas
  std::int64_t train_examples_ = 0;
  std::uint64_t next_row_ = 0;   // the pass's row the next micro-batch starts at (this replica's: + replica * micro)
  std::uint64_t passes_ = 0;
  std::vector<ValTask> val_;
  std::map<std::string, double> task_losses_;
  std::string summary_;
  nlohmann::json split_;  // trained, held-out and dropped tasks (MixtureConfig::split_record)
};

}  // namespace kiln
