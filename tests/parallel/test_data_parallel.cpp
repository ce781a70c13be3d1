// Data and tensor parallelism end to end, at whatever world size this binary runs with (1, 2, 3
// or 4 ranks): dp = world and tp = world against one process at the same global batch,
// dp x tp = 2 x 2, ZeRO-1 against plain all-reduce, and checkpoints saved at one layout and
// resumed at another.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/data/shard.h"
#include "core/rng.h"
#include "kernels/device.h"
#include "parallel/layout.h"
#include "rlhf_fixture.h"
#include "test_world.h"
#include "trainers/rollout.h"
#include "trainers/trainer.h"

namespace fs = std::filesystem;
using kiln::testing::world;

namespace {

class DataParallelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The same folder on every rank: ranks of one mpirun share their parent process.
    dir_ = fs::temp_directory_path() /
           ("kiln_dp_" + std::to_string(::getppid()) + "_" + std::to_string(world().size()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    if (world().rank() == 0) {
      fs::remove_all(dir_);
      fs::create_directories(dir_);
      std::vector<std::uint32_t> tokens;
      kiln::Rng rng(5, 1);
      for (std::uint64_t i = 0; tokens.size() < 30000; ++i) {
        const auto start = static_cast<std::uint32_t>(rng.u64(i) % 10);
        for (std::uint32_t k = 0; k < 5; ++k) tokens.push_back((start * 3 + k * 7) % 49);
        tokens.push_back(49);
      }
      kiln::write_shard((dir_ / "train_000.bin").string(), tokens, 50);
      kiln::write_shard((dir_ / "val_000.bin").string(), tokens, 50);
    }
    world().barrier();
  }
  void TearDown() override {
    world().barrier();
    if (world().rank() == 0) fs::remove_all(dir_);
  }

  // Micro-batch 2 per data-parallel rank; `ranks` = 1 gives the one-process equivalent, and
  // tp ranks share each data-parallel rank's batch.
  kiln::ExperimentConfig config(const std::string& run, int ranks, int tp = 1) const {
    kiln::ExperimentConfig c;
    c.model.n_layer = 2;
    c.model.n_head = 12;  // divisible by every tensor-parallel size tested (1 to 4)
    c.model.n_embd = 48;
    c.model.context = 32;
    c.model.attention_block = 16;
    c.data.train = (dir_ / "train_*.bin").string();
    c.data.val = (dir_ / "val_*.bin").string();
    c.optim.lr = 1e-2f;
    c.optim.warmup_steps = 3;
    if (ranks == 1) tp = 1;
    c.train.micro_batch = 2 * world().size() / (ranks / tp);  // the global batch is 2 x world
    c.parallel.tp = tp;
    c.train.grad_accum = 2;
    c.train.seq_len = 32;
    c.train.max_steps = 20;
    c.train.eval_every = 10;
    c.train.eval_batches = 6;
    c.train.threads = 1;
    c.train.run_dir = (dir_ / run).string();
    c.checkpoint.every = 10;
    c.checkpoint.keep = 0;
    c.parallel.bucket_mb = 0.01;  // several buckets even for this tiny model
    return c;
  }

  // A one-process run (each rank its own, in its own folder).
  kiln::TrainResult single(const std::string& run, kiln::TrainOptions options = {}) const {
    options.quiet = true;
    kiln::Trainer trainer(config(run + "_r" + std::to_string(world().rank()), 1), options);
    return trainer.run();
  }

  // A run over every rank of the world.
  kiln::TrainResult parallel(kiln::ExperimentConfig c, kiln::TrainOptions options = {},
                             std::vector<float>* params = nullptr) const {
    options.quiet = true;
    kiln::ParallelContext ctx = kiln::make_parallel_context(world().split(0, world().rank(), "world"), c);
    kiln::Trainer trainer(std::move(c), options, ctx);
    kiln::TrainResult result = trainer.run();
    if (params) {
      const kiln::Tensor& p = trainer.model().parameter_buffer();
      params->assign(p.f32(), p.f32() + p.numel());
    }
    return result;
  }

  static void expect_close(const std::vector<double>& a, const std::vector<double>& b,
                           std::size_t offset_b, double rel) {
    for (std::size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(a[i], b[offset_b + i], rel * std::abs(b[offset_b + i])) << "step " << offset_b + i + 1;
  }

  fs::path dir_;
};

}  // namespace

TEST_F(DataParallelTest, MatchesOneRankAtTheSameGlobalBatch) {
  const kiln::TrainResult one = single("one");
  const kiln::TrainResult many = parallel(config("dp", world().size()));
  ASSERT_EQ(many.losses.size(), 20u);
  expect_close(many.losses, one.losses, 0, 1e-5);
  ASSERT_TRUE(many.last_val_loss && one.last_val_loss);
  EXPECT_NEAR(*many.last_val_loss, *one.last_val_loss, 1e-5 * *one.last_val_loss);
}

// train.device=cuda over NCCL, one GPU per rank, against the CPU at the same global batch (fp32
// kernels that differ only in summation order: within 1e-3 over 20 steps). Needs a GPU for each
// rank of the machine; skipped otherwise (NCCL refuses two ranks on one GPU).
TEST_F(DataParallelTest, OnGpusOverNcclMatchesOneCpuRank) {
  if (world().size() < 2 || kiln::device::device_count() < world().local_size())
    GTEST_SKIP() << "needs one CUDA device per rank (" << world().local_size() << " ranks here, "
                 << kiln::device::device_count() << " devices)";
  const kiln::TrainResult one = single("one");
  kiln::ExperimentConfig c = config("dp_cuda", world().size());
  c.train.device = "cuda";
  const kiln::TrainResult many = parallel(c);
  ASSERT_EQ(many.losses.size(), 20u);
  expect_close(many.losses, one.losses, 0, 1e-3);
}

TEST_F(DataParallelTest, ZeroOneMatchesPlainAllReduce) {
  std::vector<float> plain_params, zero_params;
  const kiln::TrainResult plain = parallel(config("plain", world().size()), {}, &plain_params);
  kiln::ExperimentConfig z = config("zero", world().size());
  z.parallel.zero = 1;
  const kiln::TrainResult zero = parallel(z, {}, &zero_params);
  expect_close(zero.losses, plain.losses, 0, 1e-5);
  // The weights agree as a whole (sums over ranks in another order can move single elements
  // with near-zero gradients by up to an Adam step).
  ASSERT_EQ(zero_params.size(), plain_params.size());
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < plain_params.size(); ++i) {
    diff += (zero_params[i] - plain_params[i]) * (zero_params[i] - plain_params[i]);
    norm += plain_params[i] * plain_params[i];
  }
  EXPECT_LT(std::sqrt(diff / norm), 1e-4);
}

TEST_F(DataParallelTest, CheckpointsResumeAtAnotherLayout) {
  const kiln::TrainResult one = single("ref");  // checkpoints at 10 and 20
  // Saved by every rank with ZeRO-1, resumed by one process.
  kiln::ExperimentConfig z = config("zero_saved", world().size());
  z.parallel.zero = 1;
  kiln::TrainOptions stop;
  stop.stop_after = 10;
  parallel(z, stop);
  kiln::TrainOptions from_parallel;
  from_parallel.resume = (dir_ / "zero_saved").string();
  const kiln::TrainResult resumed_single = single("resumed_single", from_parallel);
  ASSERT_EQ(resumed_single.losses.size(), 10u);
  expect_close(resumed_single.losses, one.losses, 10, 1e-5);
  // Saved by one process, resumed by every rank with ZeRO-1.
  kiln::TrainOptions from_single;
  from_single.resume = (dir_ / "ref_r0" / "checkpoints" / "step_00000010").string();
  z.train.run_dir = (dir_ / "zero_resumed").string();
  const kiln::TrainResult resumed_parallel = parallel(z, from_single);
  ASSERT_EQ(resumed_parallel.losses.size(), 10u);
  expect_close(resumed_parallel.losses, one.losses, 10, 1e-5);
}

TEST_F(DataParallelTest, TensorParallelMatchesOneRank) {
  // Every rank in one tensor-parallel group: heads, MLP and vocabulary split world-ways.
  const kiln::TrainResult one = single("one");
  const kiln::TrainResult sharded = parallel(config("tp", world().size(), world().size()));
  ASSERT_EQ(sharded.losses.size(), 20u);
  expect_close(sharded.losses, one.losses, 0, 1e-4);
  EXPECT_NEAR(*sharded.last_val_loss, *one.last_val_loss, 1e-4 * *one.last_val_loss);
}

// An untied LM head (lm_head.weight) is vocabulary-parallel like wte: tp ranks equal one.
TEST_F(DataParallelTest, UntiedHeadTensorParallelMatchesOneRank) {
  kiln::ExperimentConfig alone = config("untied_r" + std::to_string(world().rank()), 1);
  alone.model.tie_embeddings = 0;
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  const kiln::TrainResult one = kiln::Trainer(alone, quiet).run();
  kiln::ExperimentConfig sharded = config("untied_tp", world().size(), world().size());
  sharded.model.tie_embeddings = 0;
  const kiln::TrainResult result = parallel(sharded);
  ASSERT_EQ(result.losses.size(), 20u);
  expect_close(result.losses, one.losses, 0, 1e-4);
}

// The LLaMA family's parts under tensor parallelism: heads split with rotary embeddings, SwiGLU's
// fused gate|up projection split part by part, RMSNorm and no biases: tp ranks equal one.
TEST_F(DataParallelTest, LlamaTensorParallelMatchesOneRank) {
  auto llama = [](kiln::ExperimentConfig c) {
    kiln::set_arch(c.model, "llama");
    c.model.mlp_multiple_of = 12;  // SwiGLU width 132: divisible by every tp tested (1 to 4)
    return c;
  };
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  const kiln::TrainResult one = kiln::Trainer(llama(config("llama_r" + std::to_string(world().rank()), 1)), quiet).run();
  const kiln::TrainResult result = parallel(llama(config("llama_tp", world().size(), world().size())));
  ASSERT_EQ(result.losses.size(), 20u);
  expect_close(result.losses, one.losses, 0, 1e-4);
  EXPECT_LT(one.losses.back(), one.losses.front());
}

// Grouped key/value heads under tensor parallelism: each rank holds its run of the query heads
// and of the key/value heads (12 query heads, 6 key/value heads: tp 2 and 3).
TEST_F(DataParallelTest, GroupedKvHeadsTensorParallelMatchOneRank) {
  if (6 % world().size() != 0) GTEST_SKIP() << "6 key/value heads do not split over " << world().size() << " ranks";
  auto grouped = [](kiln::ExperimentConfig c) {
    kiln::set_arch(c.model, "llama");
    c.model.mlp_multiple_of = 12;
    c.model.n_kv_head = 6;
    return c;
  };
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  const kiln::TrainResult one = kiln::Trainer(grouped(config("gqa_r" + std::to_string(world().rank()), 1)), quiet).run();
  const kiln::TrainResult result = parallel(grouped(config("gqa_tp", world().size(), world().size())));
  ASSERT_EQ(result.losses.size(), 20u);
  expect_close(result.losses, one.losses, 0, 1e-4);
}

// Fewer key/value heads than tensor-parallel ranks: each rank holds the key/value head its query
// heads read, replicated over the ranks that share it (multi-query: one head on every rank; two
// heads over four ranks: two copies each). The copies' gradients are summed over their ranks, so
// losses equal one rank's, and a checkpoint (one copy stored) resumes on one rank.
TEST_F(DataParallelTest, ReplicatedKvHeadsTensorParallelMatchOneRank) {
  for (const int kv : {1, 2}) {
    if (world().size() % kv != 0 || kv >= world().size()) continue;
    SCOPED_TRACE(std::to_string(kv) + " key/value heads over " + std::to_string(world().size()) + " ranks");
    auto replicated = [kv](kiln::ExperimentConfig c) {
      kiln::set_arch(c.model, "llama");
      c.model.mlp_multiple_of = 12;
      c.model.n_kv_head = kv;
      return c;
    };
    const std::string tag = "kv" + std::to_string(kv);
    kiln::TrainOptions quiet;
    quiet.quiet = true;
    const kiln::TrainResult one =
        kiln::Trainer(replicated(config(tag + "_r" + std::to_string(world().rank()), 1)), quiet).run();
    const kiln::TrainResult result = parallel(replicated(config(tag + "_tp", world().size(), world().size())));
    ASSERT_EQ(result.losses.size(), 20u);
    expect_close(result.losses, one.losses, 0, 1e-4);
    EXPECT_LT(one.losses.back(), one.losses.front());
    kiln::TrainOptions from_parallel = quiet;
    from_parallel.resume = (dir_ / (tag + "_tp") / "checkpoints" / "step_00000010").string();
    const kiln::TrainResult resumed =
        kiln::Trainer(replicated(config(tag + "_resumed_r" + std::to_string(world().rank()), 1)), from_parallel).run();
    ASSERT_EQ(resumed.losses.size(), 10u);
    expect_close(resumed.losses, one.losses, 10, 1e-4);
  }
}

// train.stage: sft over data and tensor parallelism: the packed rows of a step are split over the
// data-parallel ranks (each its run of micro-batch rows) and the loss is the mean over the whole
// step's response tokens, so dp = world and tp = world both equal one process.
TEST_F(DataParallelTest, SftDataAndTensorParallelMatchOneRank) {
  if (world().rank() == 0) {
    std::ofstream records(dir_ / "copy.jsonl");
    for (int i = 0; i < 120; ++i) {
      std::string w;
      for (int k = 0; k < 3 + i % 3; ++k) w += static_cast<char>('a' + (i * 7 + k * 3) % 6);
      records << "{\"instruction\": \"copy " << w << "\", \"output\": \"" << w << "\"}\n";
    }
    records.close();
    std::ofstream(dir_ / "templates.yaml") << "templates:\n  - {name: t, prompt: \"{instruction}\\n\", response: \"{output}\"}\n";
    std::ofstream(dir_ / "mixture.yaml") << "seed: 3\ntasks:\n  - {name: copy, file: copy.jsonl, templates: templates.yaml}\n";
  }
  world().barrier();
  auto sft = [this](kiln::ExperimentConfig c) {
    c.train.stage = "sft";
    c.data.train = c.data.val = "";
    c.data.mixture = (dir_ / "mixture.yaml").string();
    c.data.val_mixture = (dir_ / "mixture.yaml").string();
    return c;
  };
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  const kiln::TrainResult one = kiln::Trainer(sft(config("sft_r" + std::to_string(world().rank()), 1)), quiet).run();
  EXPECT_LT(one.losses.back(), one.losses.front());
  const kiln::TrainResult dp = parallel(sft(config("sft_dp", world().size())));
  // The same rows and the same mean: step 1 agrees to fp32 rounding; later steps drift by the
  // rounding of gradients summed in another order (up to 2.5e-5 relative by step 20 at lr 1e-2).
  ASSERT_EQ(dp.losses.size(), one.losses.size());
  EXPECT_NEAR(dp.losses[0], one.losses[0], 1e-6 * one.losses[0]);
  expect_close(dp.losses, one.losses, 0, 1e-4);
  const kiln::TrainResult tp = parallel(sft(config("sft_tp", world().size(), world().size())));
  expect_close(tp.losses, one.losses, 0, 1e-4);
  ASSERT_TRUE(one.last_val_loss && dp.last_val_loss);
  EXPECT_NEAR(*dp.last_val_loss, *one.last_val_loss, 1e-4 * *one.last_val_loss);  // after the same drift
}

TEST_F(DataParallelTest, DataTimesTensorParallelMatchesOneRank) {
  if (world().size() % 2 != 0 || world().size() < 4) GTEST_SKIP() << "needs 2 x 2 ranks or more";
  const kiln::TrainResult one = single("one");
  kiln::ExperimentConfig both = config("dp_tp", world().size(), 2);
  both.parallel.zero = 1;
  const kiln::TrainResult result = parallel(both);
  expect_close(result.losses, one.losses, 0, 1e-4);
}

TEST_F(DataParallelTest, TensorParallelCheckpointsResumeOnOneRank) {
  const kiln::TrainResult one = single("ref");
  kiln::TrainOptions stop;
  stop.stop_after = 10;
  parallel(config("tp_saved", world().size(), world().size()), stop);
  kiln::TrainOptions from_parallel;
  from_parallel.resume = (dir_ / "tp_saved").string();
  const kiln::TrainResult resumed = single("resumed", from_parallel);
  ASSERT_EQ(resumed.losses.size(), 10u);
  expect_close(resumed.losses, one.losses, 10, 1e-4);
  // And the other way: one process's checkpoint resumed with the model split world-ways.
  kiln::TrainOptions from_single;
  from_single.resume = (dir_ / "ref_r0" / "checkpoints" / "step_00000010").string();
  const kiln::TrainResult sharded = parallel(config("tp_resumed", world().size(), world().size()), from_single);
  ASSERT_EQ(sharded.losses.size(), 10u);
  expect_close(sharded.losses, one.losses, 10, 1e-4);
}

// train.stage reward, dpo and ppo over the ranks equal one process at the same global batch:
// reward and dpo over data and over tensor parallelism (a step's pairs split over the replicas,
// its loss the mean over all of them); ppo over data parallelism (each replica rolls out its share
// of the prompts with the same per-prompt seeds, advantages are whitened over the whole rollout,
// and each minibatch sums the same sequences), with ZeRO-1, and over tensor parallelism (all four
// models split; rollouts decode on the policy gathered whole).
TEST_F(DataParallelTest, PreferenceStagesMatchOneRank) {
  const kiln::testing::RlhfFixture fx(dir_ / "rlhf");
  if (world().rank() == 0) fx.build();
  world().barrier();
  const int w = world().size();
  const std::string me = "_r" + std::to_string(world().rank());
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  auto pairs = [&](kiln::ExperimentConfig c, int dp, int tp) {
    c.train.micro_batch = 2 * w / dp;
    c.parallel.tp = tp;
    c.train.max_steps = 4;
    return c;
  };
  // The reward model's stored statistics: its scores of the reference policy's responses to
  // data.val_prompts (sampled on the reference gathered whole under tensor parallelism).
  auto expect_same_norm = [](const std::string& run, const std::string& other) {
    const kiln::ScoreNorm a = kiln::read_score_norm(run), b = kiln::read_score_norm(other);
    ASSERT_TRUE(a.stored && b.stored);
    EXPECT_NEAR(a.mean, b.mean, 1e-4 * (1 + std::abs(a.mean)));
    EXPECT_NEAR(a.std, b.std, 1e-4 * (1 + a.std));
  };
  for (const std::string stage : {"reward", "dpo"}) {
    auto config = [&](const std::string& run) {
      if (stage == "dpo") return fx.dpo_config(run);
      kiln::ExperimentConfig c = fx.reward_config(run);
      c.data.val_prompts = fx.world("prompts_val.jsonl");
      return c;
    };
    const kiln::ExperimentConfig one_config = pairs(config(stage + "_one" + me), 1, 1);
    const kiln::TrainResult one = kiln::Trainer(one_config, quiet).run();
    const kiln::ExperimentConfig dp_config = pairs(config(stage + "_dp"), w, 1);
    const kiln::TrainResult dp = parallel(dp_config);
    ASSERT_EQ(dp.losses.size(), one.losses.size());
    expect_close(dp.losses, one.losses, 0, 1e-4);
    if (stage == "reward") expect_same_norm(dp_config.train.run_dir, one_config.train.run_dir);
    if (2 % w != 0) continue;  // the fixture's 2 heads split over 2 ranks, not 3
    const kiln::ExperimentConfig tp_config = pairs(config(stage + "_tp"), 1, w);
    const kiln::TrainResult tp = parallel(tp_config);
    expect_close(tp.losses, one.losses, 0, 1e-4);
    if (stage == "reward") expect_same_norm(tp_config.train.run_dir, one_config.train.run_dir);
  }
  auto ppo = [&](const std::string& run) {
    kiln::ExperimentConfig c = fx.ppo_config(run);
    c.ppo.rollout_prompts = 4 * w;
    c.train.max_steps = 4;
    c.train.eval_every = 4;  // validation samples data.val_prompts after the last step
    return c;
  };
  const kiln::TrainResult one = kiln::Trainer(ppo("ppo_one" + me), quiet).run();
  const kiln::TrainResult dp = parallel(ppo("ppo_dp"));
  ASSERT_EQ(dp.losses.size(), one.losses.size());
  for (std::size_t i = 0; i < one.losses.size(); ++i) EXPECT_NEAR(dp.losses[i], one.losses[i], 1e-4) << "step " << i + 1;
  auto first = [](const std::string& run_dir) {
    std::ifstream in(run_dir + "/metrics.jsonl");
    std::string line;
    std::getline(in, line);
    return nlohmann::json::parse(line);
  };
  auto validation = [](const std::string& run_dir) {
    std::ifstream in(run_dir + "/metrics.jsonl");
    nlohmann::json out;
    for (std::string line; std::getline(in, line);)
      if (auto j = nlohmann::json::parse(line); j.contains("val_proxy")) out = j;
    return out;
  };
  const nlohmann::json val_one = validation(ppo("ppo_one" + me).train.run_dir);
  ASSERT_TRUE(val_one.contains("val_gold"));
  EXPECT_NEAR(validation(ppo("ppo_dp").train.run_dir)["val_proxy"].get<double>(), val_one["val_proxy"].get<double>(), 1e-4);
  const nlohmann::json a = first(ppo("ppo_one" + me).train.run_dir), b = first(ppo("ppo_dp").train.run_dir);
  for (const char* key : {"reward", "gold", "length", "kl", "value_loss"})
    EXPECT_NEAR(a[key].get<double>(), b[key].get<double>(), 1e-5) << key;
  // Tensor parallelism: every model split over the ranks; rollouts decode on a whole copy of the
  // policy gathered from its shards.
  if (2 % w == 0) {
    kiln::ExperimentConfig tp = ppo("ppo_tp");
    tp.parallel.tp = w;
    tp.ppo.rollout_prompts = 4 * w;
    const kiln::TrainResult t = parallel(tp);
    for (std::size_t i = 0; i < one.losses.size(); ++i) EXPECT_NEAR(t.losses[i], one.losses[i], 1e-4) << "tp step " << i + 1;
    EXPECT_NEAR(first(tp.train.run_dir)["reward"].get<double>(), a["reward"].get<double>(), 1e-5);
    // Validation samples on the policy gathered whole too.
    EXPECT_NEAR(validation(tp.train.run_dir)["val_proxy"].get<double>(), val_one["val_proxy"].get<double>(), 1e-4);
  }
  // ZeRO-1: each trained role (policy and value) keeps its own slice of AdamW's moments.
  kiln::ExperimentConfig zero = ppo("ppo_zero");
  zero.parallel.zero = 1;
  const kiln::TrainResult z = parallel(zero);
  for (std::size_t i = 0; i < one.losses.size(); ++i) EXPECT_NEAR(z.losses[i], one.losses[i], 1e-4) << "step " << i + 1;
}
