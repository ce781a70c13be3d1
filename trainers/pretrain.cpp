// Pretraining stage.
#include "trainers/pretrain.h"

#include <algorithm>

#include "core/data/tokenizer.h"
#include "kernels/error.h"

namespace kiln {

PretrainStage::PretrainStage(const ExperimentConfig& config, int replica, int replicas)
    : grad_accum_(config.train.grad_accum),
      eval_batches_(config.train.eval_batches),
      train_([&] {
        KILN_CHECK(!config.data.train.empty(),
                   "data.train is empty; point it at token shards made by `kiln tokenize`");
        return TokenLoader(config.data.train, config.train.micro_batch, config.train.seq_len,
                           config.train.seed);
      }()) {
  if (!config.data.val.empty())
    val_.emplace(config.data.val, config.train.micro_batch, config.train.seq_len, config.train.seed);
  if (val_)
    KILN_CHECK(val_->vocab_size() == train_.vocab_size(), "data.val shards have vocabulary ",
               val_->vocab_size(), " but data.train shards have ", train_.vocab_size(),
               "; tokenize both with the same tokenizer");
  // The model is sized by the tokenizer (so `kiln sample` can decode what it learned); the
  // shards' ids must fit in it.
  const auto tokenizer = make_tokenizer(config.data.tokenizer, config.data.tokenizer_dir);
  vocab_size_ = tokenizer->vocab_size();
  eot_ = static_cast<int>(tokenizer->eot());
  KILN_CHECK(train_.vocab_size() <= vocab_size_, config.data.train, ": the shards were written "
             "with a vocabulary of ", train_.vocab_size(), " tokens but data.tokenizer=",
             config.data.tokenizer, " has ", vocab_size_, "; set data.tokenizer to the "
             "tokenizer that wrote them (or re-tokenize)");
  if (val_) {
    // Validation scores each window at most once.
    const auto windows = static_cast<std::int64_t>(val_->num_sequential());
    const std::int64_t fit = std::max<std::int64_t>(1, windows / (config.train.micro_batch * replicas));
    if (eval_batches_ > fit) {
      note_ = message("validation: data.val holds ", windows, " windows of ", config.train.seq_len + 1,
                      " tokens, enough for ", fit, " of the ", eval_batches_,
                      " batches train.eval_batches asks for; using ", fit);
      eval_batches_ = static_cast<int>(fit);
    }
  }
  train_.set_partition(replica, replicas);
  micro_.assign(grad_accum_, empty_batch());
}

Batch PretrainStage::empty_batch() const {
  Batch b;
  b.batch = train_.batch();
  b.seq_len = train_.seq_len();
  const std::size_t n = static_cast<std::size_t>(b.batch) * b.seq_len;
  b.inputs.resize(n);
  b.targets.resize(n);
  return b;
}

StepLoss PretrainStage::accumulate_gradients(Gpt& model, StepContext& ctx) {
  StepLoss step;
  for (Batch& b : micro_) {
    train_.next_batch(b.inputs.data(), b.targets.data());
    step.tokens += b.loss_tokens();
    step.processed += static_cast<std::int64_t>(b.batch) * b.seq_len;
  }
  // The mean over every token of the step, on every replica.
  const float scale = static_cast<float>(1.0 / ctx.sum_over_replicas(static_cast<double>(step.tokens)));
  for (std::size_t i = 0; i < micro_.size(); ++i) {
    if (i + 1 == micro_.size()) ctx.before_last_backward();
    model.queue_forward_backward(micro_[i], scale);
  }
  step.loss_sum = model.take_loss_sum();  // waits for the device: after the last backward is queued
  return step;
}

std::optional<double> PretrainStage::validation_loss(Gpt& model, StepContext& ctx) {
  if (!val_) return std::nullopt;
  Batch b = empty_batch();
  double sum = 0.0, tokens = 0.0;
  // Validation batch i of the whole job is `replicas` loader batches; each replica scores its own
  // one, so the job scores the same windows whatever its layout.
  for (int i = 0; i < eval_batches_; ++i) {
    val_->batch_at(static_cast<std::uint64_t>(i) * ctx.replicas + ctx.replica, b.inputs.data(), b.targets.data());
    sum += model.forward(b);
    tokens += static_cast<double>(b.loss_tokens());
  }
  return ctx.sum_over_replicas(sum) / ctx.sum_over_replicas(tokens);
}

nlohmann::json PretrainStage::state() const { return {{"train_position", train_.position()}}; }

void PretrainStage::restore(const nlohmann::json& state) {
  KILN_CHECK(state.contains("train_position") && state["train_position"].is_number_unsigned(),
             "trainer_state.json: stage_state.train_position is missing or not a non-negative "
             "integer; it was not written by a pretrain run, or it is damaged");
  train_.set_position(state.at("train_position").get<std::uint64_t>());
}

std::string PretrainStage::describe() const {
  std::string s = message("train: ", train_.shards().size(), " shard(s), ", train_.num_tokens(),
                          " tokens, vocab ", train_.vocab_size());
  if (val_) s += message("; validation: ", val_->num_tokens(), " tokens");
  if (!note_.empty()) s += "\n" + note_;
  return s;
}

}  // namespace kiln
