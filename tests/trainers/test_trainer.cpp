// The training loop end to end on a tiny model: learning, bit-exact resume, gradient
// accumulation equivalence, and what a checkpoint holds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/checkpoint/hugging_face.h"
#include "core/checkpoint/safetensors.h"
#include "core/data/corpus_cache.h"
#include "core/data/shard.h"
#include "core/rng.h"
#include "kernels/device.h"
#include "trainers/trainer.h"

namespace fs = std::filesystem;

namespace {

// A temp folder with a small corpus of structured tokens: sentences from a tiny grammar over a
// 50-token vocabulary, so a model can learn well below ln(vocab).
class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_trainer_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const char* split : {"train", "val"}) {
      std::vector<std::uint32_t> tokens;
      kiln::Rng rng(split[0], 1);
      for (std::uint64_t i = 0; tokens.size() < 40000; ++i) {
        const std::uint32_t start = static_cast<std::uint32_t>(rng.u64(i) % 10);
        for (std::uint32_t k = 0; k < 5; ++k) tokens.push_back((start * 3 + k * 7) % 49);
        tokens.push_back(49);  // end of sentence
      }
      kiln::write_shard((dir_ / (std::string(split) + "_000.bin")).string(), tokens, 50);
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  kiln::ExperimentConfig config(const std::string& run) const {
    kiln::ExperimentConfig c;
    c.model.n_layer = 2;
    c.model.n_head = 2;
    c.model.n_embd = 32;
    c.model.context = 32;
    c.model.attention_block = 16;
    c.data.train = (dir_ / "train_*.bin").string();
    c.data.val = (dir_ / "val_*.bin").string();
    c.optim.lr = 1e-2f;
    c.optim.warmup_steps = 5;
    c.train.micro_batch = 8;
    c.train.seq_len = 32;
    c.train.max_steps = 40;
    c.train.eval_every = 20;
    c.train.eval_batches = 4;
    c.train.run_dir = (dir_ / run).string();
    c.checkpoint.every = 10;
    c.checkpoint.keep = 0;
    c.train.threads = 1;  // tiny shapes: one thread is fastest and immune to machine load
    return c;
  }

  static std::vector<double> logged_losses(const std::string& run_dir) {
    std::vector<double> losses;
    std::ifstream in(run_dir + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
    }
    return losses;
  }

  fs::path dir_;
};

kiln::TrainOptions quiet() {
  kiln::TrainOptions o;
  o.quiet = true;
  return o;
}

}  // namespace

TEST_F(TrainerTest, ValidationLossFallsWellBelowUniform) {
  kiln::Trainer trainer(config("learn"), quiet());
  const kiln::TrainResult result = trainer.run();
  ASSERT_EQ(result.steps_run, 40);
  ASSERT_TRUE(result.last_val_loss.has_value());
  // Uniform over the 50 symbols the data uses would be ln(50) = 3.9.
  EXPECT_LT(*result.last_val_loss, 0.5 * std::log(50.0)) << "the model did not learn";
  EXPECT_LT(result.losses.back(), result.losses.front());
  // MFU is against this machine's measured peak (log.peak_flops: 0), so it is a fraction.
  EXPECT_GT(result.mfu, 0.0);
  EXPECT_LE(result.mfu, 1.0);
  // A peak given in the config is used as given.
  kiln::ExperimentConfig fixed = config("fixed");
  fixed.log.peak_flops = 1e6;  // far below the machine's: MFU far above 1, as the number says
  fixed.train.max_steps = 3;
  const kiln::TrainResult slow = kiln::Trainer(fixed, quiet()).run();
  EXPECT_GT(slow.mfu, 1.0);
}

TEST_F(TrainerTest, ResumeIsBitIdentical) {
  // Two threads, as real runs use: every reduction must still be deterministic.
  auto two_threads = [&](const std::string& run) {
    kiln::ExperimentConfig c = config(run);
    c.train.threads = 2;
    return c;
  };
  kiln::Trainer full(two_threads("full"), quiet());
  const auto straight = full.run().losses;
  // The same run interrupted after step 20, then resumed from its checkpoint.
  kiln::TrainOptions first = quiet();
  first.stop_after = 20;
  kiln::Trainer part1(two_threads("resumed"), first);
  EXPECT_EQ(part1.run().steps_run, 20);
  kiln::TrainOptions second = quiet();
  second.resume = "auto";
  kiln::Trainer part2(two_threads("resumed"), second);
  const auto resumed = part2.run();
  ASSERT_EQ(resumed.steps_run, 20);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(resumed.losses[i], straight[20 + i]) << "step " << 21 + i;
  // Final weights are bit-identical too, and metrics.jsonl holds each step exactly once.
  const auto& a = full.model().parameter_buffer();
  const auto& b = part2.model().parameter_buffer();
  EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes()));
  EXPECT_EQ(logged_losses(dir_ / "resumed"), logged_losses(dir_ / "full"));
}

TEST_F(TrainerTest, ResumeDropsMetricsOfStepsAfterTheCheckpoint) {
  kiln::TrainOptions first = quiet();
  first.stop_after = 25;  // checkpoints at 10 and 20; steps 21..25 are lost with the "crash"
  kiln::Trainer part1(config("crash"), first);
  part1.run();
  EXPECT_EQ(logged_losses(dir_ / "crash").size(), 25u);
  kiln::TrainOptions second = quiet();
  second.resume = "auto";
  second.stop_after = 22;
  kiln::Trainer part2(config("crash"), second);
  EXPECT_EQ(part2.run().steps_run, 2);
  EXPECT_EQ(logged_losses(dir_ / "crash").size(), 22u);
}

TEST_F(TrainerTest, GradientAccumulationMatchesOneLargeBatch) {
  kiln::ExperimentConfig big = config("big"), accum = config("accum");
  big.train.max_steps = accum.train.max_steps = 5;
  accum.train.micro_batch = 4;
  accum.train.grad_accum = 2;  // draws the same 8 windows per step as micro_batch 8
  kiln::Trainer a(big, quiet()), b(accum, quiet());
  const auto la = a.run().losses, lb = b.run().losses;
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(la[i], lb[i], 1e-5 * la[i]) << "step " << i + 1;
}

TEST_F(TrainerTest, CheckpointHoldsHuggingFaceWeightsStateAndConfig) {
  kiln::ExperimentConfig c = config("ckpt");
  c.train.max_steps = 10;
  kiln::Trainer trainer(c, quiet());
  trainer.run();
  const fs::path ckpt = fs::path(c.train.run_dir) / "checkpoints" / "step_00000010";
  ASSERT_TRUE(fs::exists(ckpt / "model.safetensors"));
  const kiln::SafetensorsFile weights((ckpt / "model.safetensors").string());
  // The byte tokenizer's 257 rows (the data uses 50 of them), without the padding to 320.
  EXPECT_EQ(weights.shape("transformer.wte.weight"), (kiln::Shape{257, 32}));
  EXPECT_EQ(weights.shape("transformer.h.1.attn.c_attn.weight"), (kiln::Shape{32, 96}));
  EXPECT_EQ(weights.shape("transformer.h.0.mlp.c_proj.weight"), (kiln::Shape{128, 32}));
  EXPECT_TRUE(weights.contains("transformer.ln_f.bias"));
  EXPECT_EQ(weights.metadata().at("format"), "pt");
  std::ifstream state_file(ckpt / "trainer_state.json");
  const auto state = nlohmann::json::parse(state_file);
  EXPECT_EQ(state["step"], 10);
  EXPECT_EQ(state["stage"], "pretrain");
  EXPECT_EQ(state["stage_state"]["train_position"], 10);
  const auto saved = kiln::checkpoint_config(ckpt.string());
  EXPECT_EQ(saved.model.n_embd, 32);
  EXPECT_TRUE(fs::exists(fs::path(c.train.run_dir) / "config.yaml"));
}

TEST_F(TrainerTest, MissingDataNamesThePatternAndTheFix) {
  kiln::ExperimentConfig c = config("missing");
  c.data.train = (dir_ / "nothing_*.bin").string();
  try {
    kiln::Trainer trainer(c, quiet());
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("nothing_*.bin"), std::string::npos) << what;
    EXPECT_NE(what.find("kiln tokenize"), std::string::npos) << what;
  }
}

TEST_F(TrainerTest, ResumeIntoAnotherModelShapeNamesTheKey) {
  kiln::ExperimentConfig c = config("shape");
  c.train.max_steps = 10;
  kiln::Trainer(c, quiet()).run();
  c.model.n_embd = 64;
  c.train.max_steps = 20;
  kiln::TrainOptions again = quiet();
  again.resume = "auto";
  try {
    kiln::Trainer(c, again).run();
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.n_embd=32 but the config says 64"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerTest, SparseLayoutCoveringTheContextTrainsExactlyLikeDense) {
  kiln::ExperimentConfig dense = config("dense"), wide = config("wide_local");
  dense.train.max_steps = wide.train.max_steps = 8;
  wide.model.attention = "gpt3";  // dense and local layers
  wide.model.attention_window = 2;  // 2 blocks of 16 = the whole 32-token sequence
  kiln::Trainer a(dense, quiet()), b(wide, quiet());
  const auto dense_losses = a.run().losses;
  EXPECT_EQ(dense_losses, b.run().losses);
  // A narrower window is a different model.
  kiln::ExperimentConfig narrow = config("narrow_local");
  narrow.train.max_steps = 8;
  narrow.model.attention = "local";
  narrow.model.attention_window = 1;
  kiln::Trainer c(narrow, quiet());
  EXPECT_NE(c.run().losses, dense_losses);
}

// data.corpus: kiln train tokenizes text itself, caches the shards per tokenizer, and the
// quickstart switches to GPT-2's BPE with data.tokenizer alone.
TEST_F(TrainerTest, CorpusIsTokenizedOnceAndCachedPerTokenizer) {
  const fs::path text = dir_ / "text";
  fs::create_directories(text);
  {
    std::ofstream out(text / "stories.txt");
    for (int i = 0; i < 300; ++i)
      out << "The cat " << (i % 7) << " sat on mat " << (i % 5) << ", and then it slept.\n%\n";
  }
  kiln::ExperimentConfig c = config("corpus");
  c.data.train.clear();
  c.data.val.clear();
  c.data.corpus = text.string();
  c.data.separator = "%";
  c.data.cache_dir = (dir_ / "cache").string();
  c.train.max_steps = 3;
  c.train.eval_every = 3;
  c.train.eval_batches = 1;
  c.checkpoint.every = 0;
  const kiln::CorpusShards where = kiln::corpus_shards(c.data);
  EXPECT_EQ(where.dir.rfind((dir_ / "cache" / "byte-").string(), 0), 0u) << where.dir;
  kiln::Trainer first(c, quiet());
  EXPECT_EQ(first.run().steps_run, 3);
  ASSERT_TRUE(fs::exists(where.dir + "/manifest.json"));
  EXPECT_EQ(first.model().shape().vocab, 257);
  // A second run reuses the shards as they are.
  const auto stamp = fs::last_write_time(where.dir + "/manifest.json");
  EXPECT_FALSE(kiln::prepare_corpus_shards(c.data, where));
  EXPECT_EQ(fs::last_write_time(where.dir + "/manifest.json"), stamp);
  // An edited corpus file is tokenized again.
  { std::ofstream(text / "stories.txt", std::ios::app) << "A new story.\n%\n"; }
  EXPECT_TRUE(kiln::prepare_corpus_shards(c.data, where));

  // One key switches to GPT-2's BPE: its own cache folder, a 50257-token model.
  const char* bpe = std::getenv("KILN_GPT2_BPE_DIR");
  c.data.tokenizer = "gpt2";
  c.data.tokenizer_dir = bpe ? bpe : KILN_SOURCE_DIR "/../shared/data/gpt2-bpe";
  c.train.run_dir = (dir_ / "corpus_gpt2").string();
  const kiln::CorpusShards gpt2 = kiln::corpus_shards(c.data);
  EXPECT_NE(gpt2.dir, where.dir);
  kiln::Trainer second(c, quiet());
  EXPECT_EQ(second.run().steps_run, 3);
  EXPECT_EQ(second.model().shape().vocab, 50257);
  std::ifstream manifest(gpt2.dir + "/manifest.json");
  EXPECT_EQ(nlohmann::json::parse(manifest)["tokenizer"], "gpt2");
}

TEST(Trainer, CudaWithoutADeviceIsAClearError) {
  if (kiln::device::cuda_available()) GTEST_SKIP() << "a device is present";
  kiln::ExperimentConfig c;
  c.train.device = "cuda";
  c.data.train = "/nonexistent/*.bin";
  try {
    kiln::Trainer trainer(c, kiln::TrainOptions{});
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.device=cuda"), std::string::npos) << e.what();
  }
}

// --init-from a Hugging Face folder (the transformers-made LLaMA of tests/fixtures/hf, 101
// tokens): training starts from its weights and the loss falls; a config whose architecture
// differs is refused with both values named; a run folder works as --init-from too.
TEST_F(TrainerTest, InitFromAHuggingFaceFolderTrains) {
  const std::string hf = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf/llama";
  kiln::ExperimentConfig c = config("from_hf");
  c.model = kiln::hf_model_config(hf);
  c.model.attention_block = 16;
  c.train.max_steps = 20;
  kiln::TrainOptions options;
  options.quiet = true;
  options.init_from = hf;
  const kiln::TrainResult result = kiln::Trainer(c, options).run();
  ASSERT_EQ(result.losses.size(), 20u);
  EXPECT_LT(result.losses.back(), 0.7 * result.losses.front());

  kiln::ExperimentConfig wider = c;
  wider.model.n_embd = 64;
  wider.train.run_dir = (dir_ / "wider").string();
  try {
    kiln::Trainer(wider, options).run();
    ADD_FAILURE() << "a mismatched architecture was accepted";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("width (model.n_embd) 32 but the config gives 64"), std::string::npos)
        << e.what();
  }

  // The run folder just written, as --init-from: the newest checkpoint's weights.
  kiln::ExperimentConfig again = c;
  again.train.run_dir = (dir_ / "from_run").string();
  again.train.max_steps = 1;
  options.init_from = c.train.run_dir;
  const kiln::TrainResult resumed = kiln::Trainer(again, options).run();
  EXPECT_LT(resumed.losses.front(), result.losses.front());
}
