// Supervised fine-tuning stage (trainers/sft.h).
#include "trainers/sft.h"

#include <algorithm>

#include "core/data/tokenizer.h"
#include "core/rng.h"
#include "kernels/error.h"

namespace kiln {

namespace {

PackOptions pack_options(const ExperimentConfig& config, const Tokenizer& tokenizer) {
  PackOptions o;
  o.seq_len = config.train.seq_len;
  o.eot_id = tokenizer.eot();
  o.pad_id = o.eot_id == 0 ? 1 : 0;  // any id but end-of-text: padding is never a target
  return o;
}

// Every example of one pass of a mixture, rendered, in the mixture's order, with the task of each.
struct Rendered {
  std::vector<Example> examples;
  std::vector<std::string> tasks;
};

Rendered render_mixture(const MixtureConfig& mixture_config, const std::string& path, const Tokenizer& tokenizer) {
  const InstructMixture mixture(mixture_config, tokenizer);
  Rendered r;
  r.examples.reserve(mixture.size());
  for (std::size_t i = 0; i < mixture.size(); ++i) {
    r.examples.push_back(mixture.example(i));
    r.tasks.push_back(mixture.task_of(i));
  }
  KILN_CHECK(!r.examples.empty(), path, ": the mixture yields no examples (every task empty or capped to 0)");
  return r;
}

}  // namespace

SftStage::SftStage(const ExperimentConfig& config, int replica, int replicas)
    : micro_batch_(config.train.micro_batch),
      grad_accum_(config.train.grad_accum),
      replica_(replica),
      replicas_(replicas) {
  KILN_CHECK(!config.data.mixture.empty(), "train.stage=sft reads a task mixture: set data.mixture to its YAML "
             "file (docs/instruction-data.md)");
  tokenizer_ = make_tokenizer(config.data.tokenizer, config.data.tokenizer_dir);
  vocab_size_ = tokenizer_->vocab_size();
  eot_ = static_cast<int>(tokenizer_->eot());
  pack_options_ = pack_options(config, *tokenizer_);

  mixture_ = MixtureConfig::load(config.data.mixture);
  mixture_path_ = config.data.mixture;
  train_seed_ = config.train.seed;
  split_ = mixture_.split_record();
  start_pass(0);
  const std::int64_t cells = static_cast<std::int64_t>(train_.batch.batch) * train_.batch.seq_len;
  summary_ = message("sft: ", train_examples_, " examples per pass from ", mixture_.tasks.size(), " task(s) of ",
                     config.data.mixture, " packed into ", train_.batch.batch, " rows of ", train_.batch.seq_len,
                     " tokens (pass 1: ", train_.batch.loss_tokens(), " response tokens, ",
                     cells > 0 ? 100 * train_.pad_tokens / cells : 0, "% padding)");
  if (!mixture_.held_out.empty()) {
    std::string held;
    for (const MixtureTask& t : mixture_.held_out) held += (held.empty() ? "" : ", ") + t.name;
    summary_ += message("\nheld out (clusters ", split_["holdout_clusters"].dump(), "): ", held);
    for (const auto& [task, why] : mixture_.dropped) summary_ += message("\ndropped from training: ", task, " (", why, ")");
  }

  if (!config.data.val_mixture.empty()) {
    // Validation scores every task of its mixture, held-out ones included (their zero-shot loss).
    MixtureConfig val_mixture = MixtureConfig::load(config.data.val_mixture);
    val_mixture.tasks.insert(val_mixture.tasks.end(), val_mixture.held_out.begin(), val_mixture.held_out.end());
    Rendered val = render_mixture(val_mixture, config.data.val_mixture, *tokenizer_);
    std::map<std::string, std::vector<Example>> by_task;
    for (std::size_t i = 0; i < val.examples.size(); ++i) by_task[val.tasks[i]].push_back(std::move(val.examples[i]));
    std::int64_t n = 0;
    for (auto& [name, examples] : by_task) {
      n += static_cast<std::int64_t>(examples.size());
      val_.push_back({name, pack_examples(examples, pack_options_, micro_batch_ * replicas_)});
    }
    summary_ += message("; validation: ", n, " examples of ", val_.size(), " task(s) from ", config.data.val_mixture);
  }
}

void SftStage::start_pass(std::uint64_t pass) {
  MixtureConfig mixture = mixture_;
  mixture.seed = Rng(train_seed_, mixture_.seed).u64(pass);
  const Rendered rendered = render_mixture(mixture, mixture_path_, *tokenizer_);
  train_examples_ = static_cast<std::int64_t>(rendered.examples.size());
  train_ = pack_examples(rendered.examples, pack_options_, micro_batch_ * replicas_);
}

StepLoss SftStage::accumulate_gradients(Gpt& model, StepContext& ctx) {
  StepLoss step;
  std::vector<Batch> micro;
  micro.reserve(grad_accum_);
  for (int i = 0; i < grad_accum_; ++i) {
    micro.push_back(slice_rows(train_.batch, static_cast<int>(next_row_) + replica_ * micro_batch_, micro_batch_));
    step.tokens += micro.back().loss_tokens();
    step.processed += static_cast<std::int64_t>(micro_batch_) * train_.batch.seq_len;
    next_row_ += static_cast<std::uint64_t>(micro_batch_) * replicas_;
    if (next_row_ >= static_cast<std::uint64_t>(train_.batch.batch)) {
      // The pass ends (rows are a multiple of micro_batch x replicas): render the next one.
      next_row_ = 0;
      start_pass(++passes_);
    }
  }
  // The mean over every response token of the step, on every replica. A step whose rows hold
  // no response token (only padding) adds no gradient.
  const double total = ctx.sum_over_replicas(static_cast<double>(step.tokens));
  const float scale = total > 0 ? static_cast<float>(1.0 / total) : 0.0f;
  for (std::size_t i = 0; i < micro.size(); ++i) {
    if (i + 1 == micro.size()) ctx.before_last_backward();
    model.queue_forward_backward(micro[i], scale);
  }
  step.loss_sum = model.take_loss_sum();
  return step;
}

std::optional<double> SftStage::validation_loss(Gpt& model, StepContext& ctx) {
  if (val_.empty()) return std::nullopt;
  task_losses_.clear();
  double all_sum = 0.0, all_tokens = 0.0;
  for (const ValTask& task : val_) {
    // Each replica scores every replicas-th micro-batch: the job scores each example once,
    // whatever its layout.
    double sum = 0.0, tokens = 0.0;
    const int rows = task.rows.batch.batch;
    for (int first = replica_ * micro_batch_; first < rows; first += micro_batch_ * replicas_) {
      const Batch b = slice_rows(task.rows.batch, first, micro_batch_);
      const double n = static_cast<double>(b.loss_tokens());
      if (n == 0) continue;  // padding rows only
      sum += model.forward(b);
      tokens += n;
    }
    sum = ctx.sum_over_replicas(sum);
    tokens = ctx.sum_over_replicas(tokens);
    if (tokens > 0) task_losses_[task.name] = sum / tokens;
    all_sum += sum;
    all_tokens += tokens;
  }
  if (all_tokens == 0) return std::nullopt;
  return all_sum / all_tokens;
}

nlohmann::json SftStage::state() const {
  return {{"next_row", next_row_}, {"passes", passes_}, {"rows", train_.batch.batch}};
}

void SftStage::restore(const nlohmann::json& state) {
  KILN_CHECK(state.contains("next_row") && state["next_row"].is_number_unsigned() && state.contains("rows") &&
                 state["rows"].is_number_integer(),
             "trainer_state.json: stage_state has no next_row/rows; it was not written by an sft run, or it is damaged");
  const std::uint64_t passes = state.value("passes", std::uint64_t{0});
  if (passes != passes_) start_pass(passes);
  KILN_CHECK(state["rows"].get<int>() == train_.batch.batch, "the checkpoint's sft data packed into ",
             state["rows"].get<int>(), " rows and this data.mixture packs into ", train_.batch.batch,
             " (data.mixture, its files, train.seq_len, train.micro_batch or the ranks changed); resume with the same "
             "data, or start a new run with --init-from the checkpoint");
  next_row_ = state["next_row"].get<std::uint64_t>();
  KILN_CHECK(next_row_ < static_cast<std::uint64_t>(train_.batch.batch), "trainer_state.json: stage_state.next_row ",
             next_row_, " is past the ", train_.batch.batch, " rows of the data; the file is damaged or belongs to "
             "another run");
  passes_ = passes;
}

std::string SftStage::describe() const { return summary_; }

}  // namespace kiln
