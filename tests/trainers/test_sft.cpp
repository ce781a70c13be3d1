// train.stage: sft on two tiny synthetic tasks (reverse a word, upper-case it; byte tokenizer):
// what the packed rows label, that prompt tokens carry no gradient, that the loop tunes,
// validates per task, resumes bit-exactly and starts from train.init_from, and the config
// errors of the stage.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/data/tokenizer.h"
#include "core/eval/evaluator.h"
#include "core/model/gpt.h"
#include "trainers/sft.h"
#include "trainers/trainer.h"

namespace fs = std::filesystem;

namespace {

class SftTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_sft_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::mt19937 gen(5);
    auto word = [&] {
      std::string w(3 + gen() % 3, 'a');
      for (char& ch : w) ch = static_cast<char>('a' + gen() % 6);
      return w;
    };
    for (const char* split : {"train", "val"}) {
      std::ofstream reverse(dir_ / (std::string("reverse_") + split + ".jsonl"));
      std::ofstream upper(dir_ / (std::string("upper_") + split + ".jsonl"));
      const int n = std::string(split) == "train" ? 150 : 20;
      for (int i = 0; i < n; ++i) {
        std::string w = word(), r(w.rbegin(), w.rend()), u = w;
        for (char& ch : u) ch = static_cast<char>(ch - 'a' + 'A');
        reverse << nlohmann::json{{"instruction", "reverse " + w}, {"output", r}}.dump() << "\n";
        upper << nlohmann::json{{"instruction", "upper " + w}, {"output", u}}.dump() << "\n";
      }
    }
    std::ofstream(dir_ / "templates.yaml") << "templates:\n"
                                              "  - {name: plain, prompt: \"{instruction}\\n\", response: \"{output}\"}\n"
                                              "  - {name: qa, prompt: \"Q: {instruction}\\nA: \", response: \"{output}\"}\n";
    for (const char* split : {"train", "val"})
      std::ofstream(dir_ / (std::string("mixture_") + split + ".yaml"))
          << "seed: 7\ntasks:\n"
          << "  - {name: reverse, file: reverse_" << split << ".jsonl, templates: templates.yaml}\n"
          << "  - {name: upper, file: upper_" << split << ".jsonl, templates: templates.yaml}\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  kiln::ExperimentConfig config(const std::string& run) const {
    kiln::ExperimentConfig c;
    c.model.n_layer = 2;
    c.model.n_head = 2;
    c.model.n_embd = 64;
    c.model.context = 64;
    c.model.attention_block = 16;
    c.data.mixture = (dir_ / "mixture_train.yaml").string();
    c.data.val_mixture = (dir_ / "mixture_val.yaml").string();
    c.optim.lr = 3e-3f;
    c.optim.warmup_steps = 5;
    c.train.stage = "sft";
    c.train.micro_batch = 4;
    c.train.seq_len = 64;
    c.train.max_steps = 60;
    c.train.eval_every = 30;
    c.train.run_dir = (dir_ / run).string();
    c.checkpoint.every = 30;
    c.checkpoint.keep = 0;
    c.train.threads = 1;
    return c;
  }

  fs::path dir_;
};

}  // namespace

// Every example's response and the end-of-text closing it are targets (mask 1); prompts and
// padding are not; padding is not end-of-text; positions restart at each example.
TEST_F(SftTest, RowsLabelResponsesAndEndOfTextOnly) {
  const kiln::SftStage stage(config("rows"), 0, 1);
  const kiln::Batch& b = stage.train_rows().batch;
  const int eot = stage.eot();
  std::int64_t eot_targets = 0, masked_eot = 0, starts = 0;
  for (std::size_t i = 0; i < b.inputs.size(); ++i) {
    if (b.mask[i] && b.targets[i] == eot) ++eot_targets;
    if (!b.mask[i] && b.targets[i] == eot) ++masked_eot;
    if (b.positions[i] == 0 && b.inputs[i] != eot) ++starts;
    EXPECT_TRUE(b.mask[i] == 0 || b.targets[i] != eot || b.inputs[i] != eot);
  }
  const std::int64_t examples = static_cast<std::int64_t>(stage.train_rows().placements.size());
  EXPECT_EQ(examples, 300);
  EXPECT_EQ(eot_targets, examples);  // one labelled end-of-text per response
  EXPECT_EQ(masked_eot, 0);          // padding targets are the pad id, never end-of-text
  EXPECT_GE(starts, examples);       // each example (and each padding run) starts at position 0
  // A response token is the answer: "cba" for "reverse abc" is 3 bytes + end-of-text.
  std::int64_t response = 0;
  for (auto m : b.mask) response += m;
  EXPECT_GT(response, 4 * examples);
  EXPECT_LT(response, 7 * examples);
}

// Targets under mask 0 (prompt text, padding) do not change the gradient at all; a response
// target does.
TEST_F(SftTest, PromptTokensCarryNoGradient) {
  const kiln::ExperimentConfig c = config("grad");
  const kiln::SftStage stage(c, 0, 1);
  kiln::Batch b = kiln::slice_rows(stage.train_rows().batch, 0, 4);
  kiln::Gpt model(kiln::GptShape::from_config(c.model, stage.vocab_size()));
  model.init_weights(3);
  auto grads = [&](const kiln::Batch& batch) {
    model.zero_grad();
    model.forward_backward(batch, 1.0f);
    const kiln::Tensor& g = model.gradient_buffer();
    return std::vector<float>(g.f32(), g.f32() + g.numel());
  };
  const std::vector<float> base = grads(b);
  kiln::Batch prompt_changed = b;
  int changed = 0;
  for (std::size_t i = 0; i < b.targets.size(); ++i)
    if (!b.mask[i]) {
      prompt_changed.targets[i] = (b.targets[i] + 17) % 256;
      ++changed;
    }
  ASSERT_GT(changed, 0);
  const std::vector<float> same = grads(prompt_changed);
  EXPECT_EQ(std::memcmp(base.data(), same.data(), base.size() * sizeof(float)), 0);
  kiln::Batch response_changed = b;
  for (std::size_t i = 0; i < b.targets.size(); ++i)
    if (b.mask[i]) {
      response_changed.targets[i] = (b.targets[i] + 17) % 256;
      break;
    }
  EXPECT_NE(grads(response_changed), base);
}

// Each pass is rendered afresh from train.seed: the same seed gives the same rows, another
// seed or a later pass other orders and template draws over the same examples.
TEST_F(SftTest, PassesAndSeedsDrawAfresh) {
  const kiln::ExperimentConfig c = config("draws");
  kiln::ExperimentConfig other = c;
  other.train.seed = c.train.seed + 1;
  kiln::SftStage a(c, 0, 1), same(c, 0, 1), b(other, 0, 1);
  const auto inputs = [](const kiln::SftStage& s) { return s.train_rows().batch.inputs; };
  const auto examples = [](const kiln::SftStage& s) { return s.train_rows().placements.size(); };
  EXPECT_EQ(inputs(a), inputs(same));
  EXPECT_NE(inputs(a), inputs(b));
  const auto first_pass = inputs(a);
  const std::size_t count = examples(a);
  a.start_pass(1);
  EXPECT_NE(inputs(a), first_pass);
  EXPECT_EQ(examples(a), count);
  a.start_pass(0);
  EXPECT_EQ(inputs(a), first_pass);
}

// The loop tunes on the mixture (the response loss falls), validates each task, resumes
// bit-exactly from a checkpoint, and train.init_from starts a new run from the tuned weights.
TEST_F(SftTest, TunesValidatesPerTaskResumesAndInitsFrom) {
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  const kiln::ExperimentConfig c = config("tune");
  const kiln::TrainResult full = kiln::Trainer(c, quiet).run();
  ASSERT_EQ(full.losses.size(), 60u);
  EXPECT_LT(full.losses.back(), 0.5 * full.losses.front());
  std::ifstream metrics(c.train.run_dir + "/metrics.jsonl");
  std::string line;
  std::vector<nlohmann::json> vals;
  while (std::getline(metrics, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) vals.push_back(j);
  }
  ASSERT_EQ(vals.size(), 2u);
  for (const auto& v : vals) {
    ASSERT_TRUE(v.contains("val_loss_by_task"));
    EXPECT_TRUE(v["val_loss_by_task"].contains("reverse"));
    EXPECT_TRUE(v["val_loss_by_task"].contains("upper"));
  }
  EXPECT_LT(vals[1]["val_loss"].get<double>(), vals[0]["val_loss"].get<double>());

  kiln::TrainOptions stop = quiet;
  stop.stop_after = 30;
  const kiln::ExperimentConfig half = config("half");
  kiln::Trainer(half, stop).run();
  kiln::TrainOptions resume = quiet;
  resume.resume = half.train.run_dir;
  const kiln::TrainResult resumed = kiln::Trainer(half, resume).run();
  ASSERT_EQ(resumed.losses.size(), 30u);
  for (int i = 0; i < 30; ++i) EXPECT_EQ(resumed.losses[i], full.losses[30 + i]) << "step " << 31 + i;

  kiln::ExperimentConfig again = config("again");
  again.train.init_from = c.train.run_dir;
  again.train.max_steps = 1;
  const kiln::TrainResult from_tuned = kiln::Trainer(again, quiet).run();
  EXPECT_LT(from_tuned.losses.front(), 0.6 * full.losses.front());
}

// train.eval_tasks: the evaluator runs at every validation and its scores go to metrics.jsonl;
// the last ones equal kiln::evaluate on the trained model.
TEST_F(SftTest, EvaluatesTasksAtEveryValidation) {
  std::ofstream(dir_ / "eval.yaml") << "task: reverse\ncluster: strings\noutput_type: generate_until\n"
                                       "dataset: reverse_val.jsonl\ndoc_to_target: \"{output}\"\n"
                                       "templates:\n  - {name: seen, doc_to_text: \"{instruction}\\n\"}\n"
                                       "  - {name: unseen, doc_to_text: \"Please {instruction}.\\n\"}\n"
                                       "generation: {until: [\"\\n\"], max_gen_toks: 8}\n";
  kiln::ExperimentConfig c = config("eval");
  c.train.max_steps = 30;
  c.train.eval_every = 15;
  c.train.eval_tasks = (dir_ / "eval.yaml").string();
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  kiln::Trainer trainer(c, quiet);
  trainer.run();
  std::ifstream metrics(c.train.run_dir + "/metrics.jsonl");
  std::string line;
  std::vector<nlohmann::json> evals;
  while (std::getline(metrics, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("eval_scores")) evals.push_back(j);
  }
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_EQ(evals[1]["step"], 30);
  ASSERT_EQ(evals[1]["eval_scores"].size(), 2u);  // two templates, k = 0
  ASSERT_EQ(evals[1]["eval_spreads"].size(), 2u);  // exact_match and stopped_at_eot
  const auto tokenizer = kiln::make_tokenizer("byte", "");
  const kiln::EvalReport direct =
      kiln::evaluate(trainer.model(), *tokenizer, kiln::load_eval_tasks((dir_ / "eval.yaml").string()), {});
  EXPECT_EQ(evals[1]["eval_scores"], direct.to_json()["scores"]);
}

// A held-out cluster never reaches the training rows; the run folder records what was trained
// and held out; validation still scores the held-out task (zero-shot).
TEST_F(SftTest, HeldOutClusterStaysOutOfTrainingAndIsRecorded) {
  for (const char* split : {"train", "val"})
    std::ofstream(dir_ / (std::string("holdout_") + split + ".yaml"))
        << "seed: 7\nholdout_clusters: [case]\ntasks:\n"
        << "  - {name: reverse, cluster: order, file: reverse_" << split << ".jsonl, templates: templates.yaml}\n"
        << "  - {name: upper, cluster: case, file: upper_" << split << ".jsonl, templates: templates.yaml}\n";
  kiln::ExperimentConfig c = config("holdout");
  c.data.mixture = (dir_ / "holdout_train.yaml").string();
  c.data.val_mixture = (dir_ / "holdout_val.yaml").string();
  c.train.max_steps = 2;
  c.train.eval_every = 2;
  {
    const kiln::SftStage stage(c, 0, 1);
    const kiln::Batch& b = stage.train_rows().batch;
    EXPECT_EQ(stage.train_rows().placements.size(), 150u);  // reverse only
    std::vector<std::uint32_t> ids(b.inputs.begin(), b.inputs.end());
    EXPECT_EQ(kiln::make_tokenizer("byte", "")->decode(ids).find("upper"), std::string::npos);
  }
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  kiln::Trainer(c, quiet).run();
  std::ifstream in(c.train.run_dir + "/stage.json");
  const nlohmann::json record = nlohmann::json::parse(in);
  EXPECT_EQ(record["mixture"]["trained"][0]["task"], "reverse");
  EXPECT_EQ(record["mixture"]["held_out"][0]["task"], "upper");
  std::ifstream metrics(c.train.run_dir + "/metrics.jsonl");
  std::string line, last_val;
  while (std::getline(metrics, line))
    if (line.find("val_loss_by_task") != std::string::npos) last_val = line;
  EXPECT_NE(last_val.find("\"upper\""), std::string::npos) << last_val;
}

TEST_F(SftTest, ConfigErrorsNameTheKeys) {
  auto error_of = [](const std::string& yaml) {
    try {
      kiln::parse_config(yaml, "x.yaml");
    } catch (const kiln::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of("train:\n  stage: sft\n").find("set data.mixture"), std::string::npos);
  EXPECT_NE(error_of("data:\n  mixture: m.yaml\n").find("data.mixture is read by train.stage=sft"), std::string::npos);
  EXPECT_NE(error_of("train:\n  stage: sft\ndata:\n  mixture: m.yaml\n  corpus: text/\n").find("data.corpus is pretraining data"),
            std::string::npos);
}
