// A Stage is what differs between training stages (pretrain now; sft, reward, ppo and dpo
// later): where batches come from, how the loss and its gradient are formed, and what extra
// state must be saved to resume. The Trainer owns everything that does not differ: the
// optimizer, clipping, schedule, logging, validation cadence and checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/model/gpt.h"

namespace kiln {

struct StepLoss {
  double loss_sum = 0.0;     // summed over the tokens that count
  std::int64_t tokens = 0;   // tokens that count in the loss
  std::int64_t processed = 0;  // tokens run through the model (for throughput)
};

class Stage {
 public:
  virtual ~Stage() = default;
  virtual std::string name() const = 0;
  // The vocabulary size the stage's data was tokenized with (sizes the model).
  virtual int vocab_size() const = 0;
  // Adds to the model's (zeroed) gradients the gradient of this optimizer step's loss, averaged
  // over all tokens that count in the step (all micro-batches together).
  virtual StepLoss accumulate_gradients(Gpt& model) = 0;
  // Mean validation loss, or nullopt when the stage has no validation data.
  virtual std::optional<double> validation_loss(Gpt& model) = 0;
  // What the stage needs to continue exactly where it stopped (data positions, ...).
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
  // One line describing the stage's data, for the run summary.
  virtual std::string describe() const = 0;
};

// The stage named by train.stage.
std::unique_ptr<Stage> make_stage(const ExperimentConfig& config);

}  // namespace kiln
