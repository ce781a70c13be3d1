// A Stage is what differs between training stages (pretrain, sft, reward, dpo, ppo): where
// batches come from, how the loss and its gradient are formed, which other models it needs
// (roles), and what extra state must be saved to resume. The Trainer owns everything that does
// not differ: the models and their optimizers, clipping, schedule, logging, validation cadence
// and checkpoints.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/model/gpt.h"

namespace kiln {

struct StepLoss {
  double loss_sum = 0.0;     // summed over the tokens that count
  std::int64_t tokens = 0;   // tokens that count in the loss
  std::int64_t processed = 0;  // tokens run through the model (for throughput)
};

// What the trainer lends a stage for one step: the data-parallel plumbing, behind two calls, so
// a stage never deals with communicators. With one replica both are trivial.
struct StepContext {
  int replica = 0;   // this data-parallel rank
  int replicas = 1;  // data-parallel ranks
  // The sum of a value over all replicas (token counts, losses).
  std::function<double(double)> sum_over_replicas = [](double v) { return v; };
  // Call right before the step's last backward pass: its gradients are then summed over the
  // replicas while backward runs. Earlier passes of the step only accumulate locally.
  std::function<void()> before_last_backward = [] {};
  // The same for another trained role's model (ppo: "value").
  std::function<void(const std::string& role)> before_last_backward_of = [](const std::string&) {};
  // In place: each of n doubles becomes its sum over the replicas (one collective).
  std::function<void(double*, std::int64_t)> sum_many = [](double*, std::int64_t) {};
  // The largest of a value over all replicas.
  std::function<double(double)> max_over_replicas = [](double v) { return v; };
};

// A model a stage needs besides the one it trains (docs/rlhf.md): its role, where its weights
// come from (a run or checkpoint folder), whether it is trained (its own AdamW, schedule,
// gradient sync, ZeRO-1 shard and checkpoint files <role>.safetensors and
// <role>.optimizer.safetensors) or frozen, and whether it has a scalar head.
struct RoleRequest {
  std::string name;   // "reference", "reward", "value"
  std::string from;   // run or checkpoint folder
  bool trainable = false;
  bool scalar_head = false;
  float lr = 0.0f;    // trainable: peak learning rate (the schedule is optim's)
};

class Stage {
 public:
  virtual ~Stage() = default;
  virtual std::string name() const = 0;
  // The vocabulary size the stage's data was tokenized with (sizes the model).
  virtual int vocab_size() const = 0;
  // The end-of-text id of the stage's tokenizer (the stop token of the checkpoints' generation
  // config).
  virtual int eot() const = 0;
  // Adds to the model's (zeroed) gradients the gradient of this optimizer step's loss, averaged
  // over all tokens that count in the step (all micro-batches of all replicas together).
  // Returns this replica's share of the loss and tokens.
  virtual StepLoss accumulate_gradients(Gpt& model, StepContext& ctx) = 0;
  // Mean validation loss over all replicas (each evaluates its share), or nullopt when the
  // stage has no validation data.
  virtual std::optional<double> validation_loss(Gpt& model, StepContext& ctx) = 0;
  // The last validation's loss per task, for stages whose data has tasks (sft); else empty.
  virtual std::map<std::string, double> task_losses() const { return {}; }
  // What the stage needs to continue exactly where it stopped (data positions, ...).
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
  // One line describing the stage's data, for the run summary.
  virtual std::string describe() const = 0;
  // What the run folder records of the stage's data as stage.json (sft: the tasks trained,
  // held out and dropped), or null for nothing.
  virtual nlohmann::json record() const { return nullptr; }

  // Preference tuning. Whether the trained model has a scalar head (a reward model), and
  // whether its initial weights may lack one (then the head starts from the seed).
  virtual bool scalar_head() const { return false; }
  // The other models the stage needs; the trainer builds them on its device and layout, loads
  // their weights, checks their tokenizer and vocabulary against the run's, and hands them over
  // by name with attach() before step 1 (a trained role's weights are restored on resume first).
  virtual std::vector<RoleRequest> roles() const { return {}; }
  virtual void attach(const std::map<std::string, Gpt*>& /*roles*/) {}
  // Values to log with the step just taken (metrics.jsonl; a few on the console), e.g. ppo's
  // reward, KL and clip fractions.
  virtual std::map<std::string, double> step_metrics() const { return {}; }
  // The names of those the console line shows (all of them go to metrics.jsonl).
  virtual std::vector<std::string> console_metrics() const { return {}; }
  // Values of the last validation other than its loss (e.g. reward accuracy, gold reward).
  virtual std::map<std::string, double> validation_metrics() const { return {}; }
  // Metadata saved in the trained model's model.safetensors at a checkpoint (e.g. the reward
  // model's score mean and standard deviation); may run the model (collective over replicas).
  virtual std::map<std::string, std::string> model_metadata(Gpt& /*model*/, StepContext& /*ctx*/) { return {}; }
};

// The stage named by train.stage, reading replica `replica` of `replicas` disjoint slices of the
// data.
std::unique_ptr<Stage> make_stage(const ExperimentConfig& config, int replica, int replicas);

}  // namespace kiln
