// The one training loop. For each optimizer step: learning rate from the schedule, zeroed
// gradients, the stage's gradient accumulation, global-norm clipping and AdamW, a logged record,
// and on their cadences validation and an atomic checkpoint. Resuming restores the model, the
// optimizer moments, the step and the stage's data position, and continues bit-identically
// (same thread count, same build).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/checkpoint/run_dir.h"
#include "core/config.h"
#include "core/data/tokenizer.h"
#include "core/eval/task.h"
#include "core/model/gpt.h"
#include "core/optim/adamw.h"
#include "parallel/grad_sync.h"
#include "parallel/layout.h"
#include "parallel/tensor_parallel_group.h"
#include "trainers/stage.h"

namespace kiln {
class MetricsLog;
}

namespace kiln {

struct TrainOptions {
  // "" starts fresh; "latest" resumes from the newest checkpoint in train.run_dir (an error if
  // there is none: `kiln train --resume`); "auto" does when there is one and starts fresh
  // otherwise (train.resume: auto); anything else is a checkpoint folder or a run dir to resume
  // from.
  std::string resume;
  // Stop (as if interrupted) after this step; 0 runs to train.max_steps.
  std::int64_t stop_after = 0;
  // Initial weights from a safetensors file instead of random initialisation.
  std::string init_from;
  // Starting fresh in a run dir that already holds a run is an error unless this is set; then
  // its checkpoints and metrics are deleted first.
  bool overwrite = false;
  bool quiet = false;  // no console output (tests)
};

struct TrainResult {
  std::int64_t steps_run = 0;
  std::int64_t last_step = 0;
  std::vector<double> losses;           // training loss of each step run
  std::optional<double> last_val_loss;
  double tokens_per_s = 0.0;            // mean over the steps run, first step excluded if >1
  double mfu = 0.0;
  // A signal asked the run to stop (preemption.h): the signal, or -1 when it reached another
  // rank; the run ended after checkpointing step last_step. 0: it ran to its end.
  int stop_signal = 0;
};

class Trainer {
 public:
  // One process, no MPI.
  Trainer(ExperimentConfig config, TrainOptions options);
  // A rank of a parallel job; `parallel` must outlive the trainer. Every rank runs the same
  // loop; only the main rank prints and writes files.
  Trainer(ExperimentConfig config, TrainOptions options, ParallelContext& parallel);
  ~Trainer();
  TrainResult run();

  Gpt& model() { return *main_.model; }
  // The memory plan printed before step 1, and (cuda) the device memory this run used after
  // step 1 by cudaMemGetInfo; 0 until run() gets there.
  std::int64_t planned_memory_bytes() const { return planned_bytes_; }
  std::int64_t measured_memory_bytes() const { return measured_bytes_; }

 private:
  // A model of the run: the trained one (name "", the policy or the reward model being trained)
  // or another role a stage asked for (RoleRequest), with its optimizer state when trained.
  struct ModelRole {
    std::string name;
    std::string from;                     // other roles: the run or checkpoint folder
    std::unique_ptr<Gpt> model;
    OptimConfig optim;                    // its learning rate and schedule
    std::unique_ptr<AdamW> optimizer;     // the whole model, or this rank's slice (ZeRO-1); null: frozen
    std::unique_ptr<GradientSync> sync;   // data parallelism without ZeRO
    Tensor grad_shard;                    // ZeRO-1: this rank's summed gradient slice
    // Checkpoint files: model.safetensors / optimizer.safetensors for the trained model,
    // <name>.safetensors / <name>.optimizer.safetensors for another trained role.
    std::string weights_file() const { return name.empty() ? "model.safetensors" : name + ".safetensors"; }
    std::string optimizer_file() const { return name.empty() ? "optimizer.safetensors" : name + ".optimizer.safetensors"; }
  };
  void make_optimizer(ModelRole& role);
  void build_roles();
  void start_or_resume();
  void init_from(const std::string& source);
  void save_checkpoint(std::int64_t step);
  // Gradients summed over replicas, clipped, and one AdamW update on every rank.
  AdamW::StepStats optimizer_step(ModelRole& role, float lr);
  // train.on_nonfinite=skip and `value` (a gradient norm) is not finite: leave the weights.
  bool skip_nonfinite(double value) const;
  int skipped_in_a_row_ = 0;
  double grad_sum_squares(const Gpt& model, const float* grads, std::int64_t begin, std::int64_t end) const;
  double comm_wait_s_ = 0.0, comm_bytes_ = 0.0;  // of the last step
  void say(const std::string& line) const;
  ExperimentConfig with_corpus_shards(const ExperimentConfig& config) const;
  // Before step 1: what the model, gradients, optimizer and activations will hold; on cuda,
  // after step 1, what cudaMemGetInfo says beside it.
  void print_memory_plan();
  void print_measured_memory();
  // The whole job's peak FLOP/s for MFU: log.peak_flops (per machine on the cpu, per GPU on
  // cuda) when set, else measured on every rank's threads at once (cpu) or derived from each
  // GPU's model (cuda), in the precision of the model's matmuls. Collective.
  PeakFlops job_peak_flops() const;

  ExperimentConfig config_;
  TrainOptions options_;
  ParallelContext owned_parallel_;  // for the one-process constructor
  ParallelContext& parallel_;
  std::unique_ptr<Stage> stage_;
  // train.eval_tasks: the tasks and the tokenizer they are encoded with (empty: none).
  std::vector<EvalTask> eval_tasks_;
  std::unique_ptr<Tokenizer> eval_tokenizer_;
  void evaluate_tasks(std::int64_t step, MetricsLog* log);
  std::unique_ptr<TensorParallelGroup> tp_ops_;  // the model's tensor-parallel group (tp > 1)
  std::unique_ptr<RunDirLock> run_lock_;         // the main rank's hold on train.run_dir while it runs
  ModelRole main_;                 // the trained model
  std::vector<ModelRole> others_;  // the stage's other roles, in the order it asked for them
  std::unique_ptr<Communicator> grad_comm_;  // cuda with dp > 1: NCCL over parallel_.dp's ranks
  StepContext ctx_;           // what the stage gets of the data-parallel plumbing
  std::int64_t start_step_ = 0;
  std::int64_t tokens_seen_ = 0;
  Device device_ = Device::cpu;
  std::size_t device_used_at_start_ = 0;  // cuda: bytes in use before kiln allocated anything
  std::int64_t planned_bytes_ = 0;
  std::int64_t measured_bytes_ = 0;
};

// Reads the resolved config saved in a checkpoint folder.
ExperimentConfig checkpoint_config(const std::string& checkpoint_dir);

}  // namespace kiln
