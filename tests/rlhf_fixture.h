// A tiny preference-tuning setup for the tests of the reward, dpo and ppo stages: a small
// preference world (core/eval/preference_world.h), an SFT run on its demonstrations and a reward
// run from that, each a few steps of a 2-layer, 32-wide byte-level model; and the configs of
// each stage over them.
#pragma once

#include <filesystem>
#include <string>

#include "core/config.h"
#include "core/eval/preference_world.h"
#include "trainers/trainer.h"

namespace kiln::testing {

class RlhfFixture {
 public:
  explicit RlhfFixture(std::filesystem::path dir) : dir_(std::move(dir)) {}

  const std::filesystem::path& dir() const { return dir_; }
  std::string world(const std::string& file) const { return (dir_ / "world" / file).string(); }
  std::string sft_run() const { return (dir_ / "sft").string(); }
  std::string reward_run() const { return (dir_ / "reward").string(); }

  // Writes the world and trains the SFT and reward runs (one process; a few seconds).
  void build() const {
    WorldOptions w;
    w.seed = 11;
    w.sft = 200;
    w.pairs = 96;
    w.val_pairs = 16;
    w.prompts = 48;
    w.val_prompts = 8;
    write_preference_world((dir_ / "world").string(), w);
    TrainOptions quiet;
    quiet.quiet = true;
    ExperimentConfig sft = base("sft");
    sft.train.stage = "sft";
    sft.data.mixture = world("mixture_sft.yaml");
    sft.train.max_steps = 30;
    sft.optim.lr = 3e-3f;
    Trainer(sft, quiet).run();
    ExperimentConfig reward = reward_config("reward");
    reward.train.max_steps = 10;
    Trainer(reward, quiet).run();
  }

  // A tiny model and loop: every stage's starting point.
  ExperimentConfig base(const std::string& run) const {
    ExperimentConfig c;
    c.model.n_layer = 2;
    c.model.n_head = 2;
    c.model.n_embd = 32;
    c.model.context = 128;
    c.model.attention_block = 32;
    c.data.tokenizer = "byte";
    c.optim.lr = 1e-3f;
    c.optim.warmup_steps = 2;
    c.optim.weight_decay = 0.0f;
    c.train.micro_batch = 4;
    c.train.seq_len = 128;
    c.train.max_steps = 4;
    c.train.eval_every = 0;
    c.train.threads = 1;
    c.train.run_dir = (dir_ / run).string();
    c.checkpoint.every = 0;
    c.checkpoint.keep = 0;
    return c;
  }
  ExperimentConfig reward_config(const std::string& run) const {
    ExperimentConfig c = base(run);
    c.train.stage = "reward";
    c.train.init_from = sft_run();
    c.data.preferences = world("prefs_train.jsonl");
    c.data.val_preferences = world("prefs_val.jsonl");
    return c;
  }
  ExperimentConfig dpo_config(const std::string& run) const {
    ExperimentConfig c = base(run);
    c.train.stage = "dpo";
    c.train.init_from = sft_run();
    c.data.preferences = world("prefs_train.jsonl");
    c.data.val_preferences = world("prefs_val.jsonl");
    c.dpo.beta = 0.5f;
    return c;
  }
  ExperimentConfig ppo_config(const std::string& run) const {
    ExperimentConfig c = base(run);
    c.train.stage = "ppo";
    c.train.init_from = sft_run();
    c.roles.reward = reward_run();
    c.data.prompts = world("prompts_train.jsonl");
    c.data.val_prompts = world("prompts_val.jsonl");
    c.ppo.rollout_prompts = 8;
    c.ppo.max_new_tokens = 8;
    c.ppo.epochs = 2;
    c.ppo.minibatches = 2;
    c.train.micro_batch = 2;
    c.optim.lr = 1e-4f;
    return c;
  }

 private:
  std::filesystem::path dir_;
};

}  // namespace kiln::testing
