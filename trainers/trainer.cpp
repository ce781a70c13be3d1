// The training loop, run directory and checkpoint contents.
#include "trainers/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "core/checkpoint/atomic_file.h"
#include "core/checkpoint/model_io.h"
#include "core/checkpoint/run_dir.h"
#include "trainers/metrics.h"

namespace kiln {

namespace {
constexpr int kTrainerStateVersion = 1;

void say(bool quiet, const std::string& line) {
  if (!quiet) std::printf("%s\n", line.c_str());
}

// A checkpoint resumes only into the model it was trained as.
void check_same_model(const ModelConfig& saved, const ModelConfig& now, const std::string& checkpoint) {
  auto same = [&](const char* key, const auto& a, const auto& b) {
    KILN_CHECK(a == b, "checkpoint ", checkpoint, " was trained with model.", key, "=", a,
               " but the config says ", b, "; resume with the model section it was trained with");
  };
  same("n_layer", saved.n_layer, now.n_layer);
  same("n_head", saved.n_head, now.n_head);
  same("n_embd", saved.n_embd, now.n_embd);
  same("context", saved.context, now.context);
  same("vocab_size", saved.vocab_size, now.vocab_size);
  same("vocab_multiple", saved.vocab_multiple, now.vocab_multiple);
  same("norm", saved.norm, now.norm);
}
}  // namespace

ExperimentConfig checkpoint_config(const std::string& checkpoint_dir) {
  return load_config(checkpoint_dir + "/config.yaml");
}

Trainer::Trainer(ExperimentConfig config, TrainOptions options)
    : config_(std::move(config)), options_(std::move(options)) {
  if (config_.train.threads > 0) omp_set_num_threads(config_.train.threads);
  stage_ = make_stage(config_);
  model_ = std::make_unique<Gpt>(GptShape::from_config(config_.model, stage_->vocab_size()));
  optimizer_ = std::make_unique<AdamW>(config_.optim, *model_);
}

Trainer::~Trainer() = default;

void Trainer::start_or_resume() {
  std::optional<std::string> checkpoint;
  if (options_.resume == "auto")
    checkpoint = find_latest_checkpoint(config_.train.run_dir);
  else if (!options_.resume.empty())
    checkpoint = resolve_checkpoint(options_.resume);
  if (!checkpoint) {
    if (!options_.init_from.empty()) {
      load_model(*model_, options_.init_from);
      say(options_.quiet, "initial weights from " + options_.init_from);
    } else {
      model_->init_weights(config_.train.seed, config_.model.init_std);
    }
    return;
  }
  check_same_model(checkpoint_config(*checkpoint).model, config_.model, *checkpoint);
  load_model(*model_, *checkpoint + "/model.safetensors");
  load_optimizer(*model_, *optimizer_, *checkpoint + "/optimizer.safetensors");
  const std::string state_path = *checkpoint + "/trainer_state.json";
  auto state = nlohmann::json::parse(read_file(state_path), nullptr, false);
  KILN_CHECK(!state.is_discarded() && state.value("format", "") == "kiln-trainer-state", state_path,
             ": not a kiln trainer state file");
  KILN_CHECK(state.value("version", 0) <= kTrainerStateVersion, state_path, ": version ",
             state.value("version", 0), " is newer than this kiln (", kTrainerStateVersion, ")");
  KILN_CHECK(state.value("stage", "") == stage_->name(), state_path, ": checkpoint of stage '",
             state.value("stage", ""), "' cannot resume stage '", stage_->name(), "'");
  start_step_ = state.at("step").get<std::int64_t>();
  tokens_seen_ = state.value("tokens_seen", std::int64_t{0});
  stage_->restore(state.at("stage_state"));
  say(options_.quiet, message("resumed from ", *checkpoint, " at step ", start_step_));
}

void Trainer::save_checkpoint(std::int64_t step) {
  const std::string tmp = begin_checkpoint(config_.train.run_dir, step);
  save_model(*model_, tmp + "/model.safetensors", {{"kiln_step", std::to_string(step)}});
  save_optimizer(*model_, *optimizer_, tmp + "/optimizer.safetensors");
  const nlohmann::json state = {{"format", "kiln-trainer-state"},
                                {"version", kTrainerStateVersion},
                                {"stage", stage_->name()},
                                {"step", step},
                                {"tokens_seen", tokens_seen_},
                                {"seed", config_.train.seed},
                                {"threads", omp_get_max_threads()},
                                {"stage_state", stage_->state()}};
  write_file_atomic(tmp + "/trainer_state.json", state.dump(2) + "\n");
  write_file_atomic(tmp + "/config.yaml", to_yaml(config_));
  commit_checkpoint(config_.train.run_dir, step, tmp, config_.checkpoint.keep);
}

TrainResult Trainer::run() {
  namespace fs = std::filesystem;
  fs::create_directories(config_.train.run_dir);
  start_or_resume();
  write_file_atomic(config_.train.run_dir + "/config.yaml", to_yaml(config_));
  const GptShape& shape = model_->shape();
  const std::int64_t max_steps = config_.train.max_steps;
  const std::int64_t global_batch = static_cast<std::int64_t>(config_.train.micro_batch) * config_.train.grad_accum;
  const double flops_per_token = shape.flops_per_token(config_.train.seq_len);
  say(options_.quiet, message("model: ", shape.n_layer, " layers, ", shape.n_head, " heads, width ",
                              shape.n_embd, ", vocab ", shape.vocab, " (padded ", shape.padded_vocab,
                              "), ", shape.post_norm ? "post" : "pre", "-LN, ", shape.num_params(),
                              " parameters, ", flops_per_token / 1e6, " MFLOP/token"));
  say(options_.quiet, message("batch: ", config_.train.micro_batch, " x ", config_.train.grad_accum,
                              " accumulation = ", global_batch, " sequences of ", config_.train.seq_len,
                              " tokens per step; ", omp_get_max_threads(), " threads"));
  say(options_.quiet, stage_->describe());
  say(options_.quiet, "run dir: " + config_.train.run_dir);

  const bool bar = !options_.quiet && (config_.log.progress == "on" ||
                                       (config_.log.progress == "auto" && isatty(STDOUT_FILENO)));
  MetricsLog log(config_.train.run_dir, !options_.quiet, bar, max_steps, config_.log.every, start_step_);
  TrainResult result;
  const std::int64_t last = options_.stop_after > 0 ? std::min(options_.stop_after, max_steps) : max_steps;
  double timed_seconds = 0.0;
  std::int64_t timed_tokens = 0;
  for (std::int64_t step = start_step_ + 1; step <= last; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    const float lr = learning_rate(config_.optim, step, max_steps);
    model_->zero_grad();
    const StepLoss loss = stage_->accumulate_gradients(*model_);
    const AdamW::StepStats stats = optimizer_->step(lr);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    tokens_seen_ += loss.processed;
    StepRecord record;
    record.step = step;
    record.loss = loss.loss_sum / loss.tokens;
    record.lr = lr;
    record.grad_norm = stats.grad_norm;
    record.tokens_per_s = loss.processed / seconds;
    record.mfu = flops_per_token * record.tokens_per_s / config_.log.peak_flops;
    record.step_seconds = seconds;
    record.tokens = tokens_seen_;
    log.step(record);
    result.losses.push_back(record.loss);
    if (step > start_step_ + 1 || last == start_step_ + 1) {
      timed_seconds += seconds;
      timed_tokens += loss.processed;
    }
    if ((config_.train.eval_every > 0 && step % config_.train.eval_every == 0) || step == max_steps) {
      if (auto val = stage_->validation_loss(*model_)) {
        result.last_val_loss = val;
        log.validation(step, *val);
      }
    }
    if ((config_.checkpoint.every > 0 && step % config_.checkpoint.every == 0) || step == max_steps) {
      save_checkpoint(step);
      log.note(message("checkpoint: step ", step));
    }
    result.last_step = step;
    ++result.steps_run;
  }
  if (timed_seconds > 0) {
    result.tokens_per_s = timed_tokens / timed_seconds;
    result.mfu = flops_per_token * result.tokens_per_s / config_.log.peak_flops;
  }
  return result;
}

}  // namespace kiln
