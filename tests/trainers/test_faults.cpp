// Faults found by adversarial testing (docs/parallel.md, "On a cluster"), each refused with a
// message instead of lost or corrupted data: several YAML documents in one file, safetensors
// files with trailing bytes or tensors a model does not have, token ids beyond the vocabulary,
// a metrics.jsonl that cannot be written, numeric keys beyond what the code can hold, a second
// run on a folder a live run holds, --resume without a checkpoint, a trainer_state.json that
// contradicts its folder, a checkpoint of another tokenizer, and an interrupted kiln tokenize.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "core/checkpoint/atomic_file.h"
#include "core/checkpoint/model_io.h"
#include "core/checkpoint/run_dir.h"
#include "core/checkpoint/safetensors.h"
#include "core/config.h"
#include "core/data/instruct.h"
#include "core/data/shard.h"
#include "core/data/tokenize.h"
#include "core/eval/task.h"
#include "error_of.h"
#include "kernels/error.h"
#include "trainers/metrics.h"
#include "trainers/trainer.h"

namespace fs = std::filesystem;
using kiln::testing::error_of;

namespace {

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_faults_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) const {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  // A tiny pretraining run over a byte-sized vocabulary of repeating tokens.
  kiln::ExperimentConfig config(const std::string& run) const {
    std::vector<std::uint32_t> tokens;
    for (std::uint32_t i = 0; i < 4000; ++i) tokens.push_back((i * 7) % 50);
    for (const char* split : {"train", "val"})
      if (!fs::exists(dir_ / (std::string(split) + "_000.bin")))
        kiln::write_shard((dir_ / (std::string(split) + "_000.bin")).string(), tokens, 50);
    kiln::ExperimentConfig c;
    c.model.n_layer = 1;
    c.model.n_head = 2;
    c.model.n_embd = 16;
    c.model.context = 16;
    c.model.attention_block = 16;
    c.data.train = (dir_ / "train_*.bin").string();
    c.data.val = (dir_ / "val_*.bin").string();
    c.train.micro_batch = 2;
    c.train.seq_len = 16;
    c.train.max_steps = 4;
    c.train.eval_every = 0;
    c.train.threads = 1;
    c.train.run_dir = (dir_ / run).string();
    c.checkpoint.every = 2;
    c.checkpoint.keep = 0;
    return c;
  }
  static kiln::TrainResult train(const kiln::ExperimentConfig& c, const std::string& resume = "") {
    kiln::TrainOptions o;
    o.quiet = true;
    o.resume = resume;
    return kiln::Trainer(c, o).run();
  }

  fs::path dir_;
};

TEST_F(FaultTest, YamlWithASecondDocumentIsRefusedNamingItsLine) {
  const std::string two = "train:\n  max_steps: 5\n---\noptim:\n  lr: 0.5\n";
  EXPECT_NE(error_of([&] { kiln::parse_config(two, "exp.yaml"); }).find("exp.yaml:3: a second YAML document"),
            std::string::npos);
  // A leading "---" and a trailing empty document lose nothing.
  EXPECT_EQ(kiln::parse_config("---\ntrain:\n  max_steps: 5\n---\n", "exp.yaml").train.max_steps, 5);
  const std::string mixture = write("mixture.yaml", "tasks:\n  - name: a\n---\ntasks: []\n");
  EXPECT_NE(error_of([&] { kiln::MixtureConfig::load(mixture); }).find("mixture.yaml:3: a second YAML document"),
            std::string::npos);
  const std::string tasks = write("tasks.yaml", "- name: t\n---\n- name: u\n");
  EXPECT_NE(error_of([&] { kiln::load_eval_tasks(tasks); }).find("tasks.yaml:2: a second YAML document"),
            std::string::npos);
}

TEST_F(FaultTest, SafetensorsWithTrailingBytesOrAStrangerTensorIsRefused) {
  kiln::ExperimentConfig c = config("unused");
  kiln::Gpt model(kiln::GptShape::from_config(c.model, 50));
  model.init_weights(1);
  const std::string good = (dir_ / "model.safetensors").string();
  kiln::save_model(model, good, {});
  load_model(model, good);  // the file as written loads
  const std::string bytes = kiln::read_file(good);
  const std::string trailing = write("trailing.safetensors", bytes + "junk");
  EXPECT_NE(error_of([&] { kiln::SafetensorsFile f(trailing); }).find("4 bytes after the last tensor"),
            std::string::npos);
  std::vector<kiln::NamedTensor> tensors = kiln::model_tensors(model);
  kiln::Tensor extra = kiln::Tensor::zeros({3});
  tensors.push_back({"h.9.extra.weight", extra});
  const std::string stranger = (dir_ / "stranger.safetensors").string();
  kiln::write_safetensors(stranger, tensors, {});
  EXPECT_NE(error_of([&] { load_model(model, stranger); }).find("tensor 'h.9.extra.weight' is not a parameter"),
            std::string::npos);
}

TEST_F(FaultTest, ATokenBeyondTheVocabularyIsFoundWhenTheShardOpens) {
  const std::string path = (dir_ / "bad_000.bin").string();
  std::vector<std::uint32_t> tokens(1000, 3);
  kiln::write_shard(path, tokens, 50);
  {
    // Token 700 becomes 60, beyond the header's vocabulary of 50.
    std::FILE* f = std::fopen(path.c_str(), "r+b");
    ASSERT_NE(f, nullptr);
    const std::uint16_t bad = 60;
    std::fseek(f, static_cast<long>(fs::file_size(path) - 2 * (1000 - 700)), SEEK_SET);
    std::fwrite(&bad, 2, 1, f);
    std::fclose(f);
  }
  const std::string e = error_of([&] { kiln::Shard s(path); });
  EXPECT_NE(e.find("token 700 is 60, not below the header's vocab_size 50"), std::string::npos) << e;
}

TEST_F(FaultTest, AMetricsWriteThatFailsStopsTheRun) {
  kiln::MetricsLog log("/dev/full", false, false, 10, 1, 0);
  kiln::StepRecord r;
  r.step = 1;
  const std::string e = error_of([&] { log.step(r); });
  EXPECT_NE(e.find("cannot write /dev/full"), std::string::npos) << e;
  EXPECT_NE(e.find("No space left on device"), std::string::npos) << e;
}

TEST_F(FaultTest, NumericKeysAreBoundedByWhatTheCodeHolds) {
  for (const char* bad : {"parallel:\n  timeout_s: 1e10\n", "train:\n  threads: 70000\n", "train:\n  threads: 50000\n",
                          "parallel:\n  bucket_mb: 1e300\n", "train:\n  micro_batch: 2000000000\n"}) {
    const std::string e = error_of([&] { kiln::parse_config(bad, "exp.yaml"); });
    EXPECT_NE(e.find("exp.yaml:2"), std::string::npos) << bad << ": " << e;
  }
}

TEST_F(FaultTest, ARunFolderHeldByALiveRunIsRefusedNamingTheHolder) {
  const kiln::ExperimentConfig c = config("held");
  {
    kiln::RunDirLock holder(c.train.run_dir);
    const std::string e = error_of([&] { train(c); });
    EXPECT_NE(e.find("is in use by another run (pid " + std::to_string(::getpid())), std::string::npos) << e;
  }
  // Released (as a dead holder's lock is, by the kernel): the run goes ahead.
  EXPECT_EQ(train(c).steps_run, 4);
}

TEST_F(FaultTest, ResumeWithoutACheckpointSaysSoUnlessAuto) {
  kiln::ExperimentConfig c = config("fresh");
  EXPECT_NE(error_of([&] { train(c, "latest"); }).find("holds no complete checkpoint"), std::string::npos);
  EXPECT_EQ(train(c, "auto").steps_run, 4);  // nothing to resume: a fresh start
  c.train.max_steps = 6;
  const kiln::TrainResult more = train(c, "auto");  // now it continues from step 4
  EXPECT_EQ(more.steps_run, 2);
}

TEST_F(FaultTest, ATrainerStateThatContradictsItsFolderIsRefused) {
  const kiln::ExperimentConfig c = config("state");
  train(c);
  const std::string ckpt = c.train.run_dir + "/checkpoints/step_00000004";
  const std::string path = ckpt + "/trainer_state.json";
  nlohmann::json state = nlohmann::json::parse(kiln::read_file(path));
  state["step"] = 50;
  kiln::write_file_atomic(path, state.dump());
  const std::string e = error_of([&] { train(c, ckpt); });
  EXPECT_NE(e.find("trainer_state.json says step 50 but its folder is step_00000004"), std::string::npos) << e;
  // Copied under another name, the weights' own step still disagrees.
  fs::copy(ckpt, c.train.run_dir + "/copy", fs::copy_options::recursive);
  const std::string copy = error_of([&] { train(c, c.train.run_dir + "/copy"); });
  EXPECT_NE(copy.find("model.safetensors was saved at step 4"), std::string::npos) << copy;
}

TEST_F(FaultTest, ResumingACheckpointOfAnotherTokenizerSaysSo) {
  kiln::ExperimentConfig c = config("tok");
  train(c);
  const std::string ckpt = c.train.run_dir + "/checkpoints/step_00000004";
  kiln::ExperimentConfig other = kiln::load_config(ckpt + "/config.yaml");
  other.data.tokenizer = "gpt2";
  kiln::write_file_atomic(ckpt + "/config.yaml", kiln::to_yaml(other));
  const std::string e = error_of([&] { train(c, ckpt); });
  EXPECT_NE(e.find("was trained with data.tokenizer=gpt2 but this run reads data.tokenizer=byte"), std::string::npos)
      << e;
}

TEST_F(FaultTest, AnInterruptedTokenizeLeavesThePreviousOutputWhole) {
  const std::string text = write("a.txt", std::string(20000, 'a') + "\n%\n" + std::string(5000, 'b') + "\n");
  kiln::TokenizeOptions o;
  o.inputs = {text};
  o.separator = "%";
  o.out_dir = (dir_ / "out").string();
  kiln::tokenize_corpus(o);
  const std::string manifest = kiln::read_file(o.out_dir + "/manifest.json");
  // A second run over other input fails part-way (a malformed JSONL record after good ones).
  const std::string bad = write("b.jsonl", std::string("{\"text\": \"hello there\"}\n").append(200, ' ') + "\n{oops\n");
  kiln::TokenizeOptions again = o;
  again.inputs = {bad};
  EXPECT_NE(error_of([&] { kiln::tokenize_corpus(again); }), "(no error)");
  EXPECT_EQ(kiln::read_file(o.out_dir + "/manifest.json"), manifest);
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  // A folder that holds other files is not replaced.
  write("out/notes.txt", "mine");
  EXPECT_NE(error_of([&] { kiln::tokenize_corpus(o); }).find("holds notes.txt, which kiln tokenize did not write"),
            std::string::npos);
}

}  // namespace
