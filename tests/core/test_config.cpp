// Tests of the experiment config: defaults, precedence default < file < command line, every
// kind of error message (each must name the file, line, key and fix), cross-field checks, the
// to_yaml round trip, and that the shipped configs/*.yaml parse.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/config.h"
#include "kernels/error.h"

namespace kiln {
namespace {

const std::string kFile = "configs/x.yaml";

// Runs `action`, which must throw kiln::Error, and returns the message.
std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a kiln::Error, none was thrown";
  return "";
}

std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_of([&] { parse_config(yaml, kFile, overrides); });
}

void expect_contains(const std::string& message, const std::vector<std::string>& parts) {
  for (const std::string& part : parts)
    EXPECT_NE(message.find(part), std::string::npos)
        << "message: " << message << "\nlacks: " << part;
}

// Field by field, independent of the schema table in config.cpp.
void expect_same(const ExperimentConfig& a, const ExperimentConfig& b) {
  EXPECT_EQ(a.model.n_layer, b.model.n_layer);
  EXPECT_EQ(a.model.n_head, b.model.n_head);
  EXPECT_EQ(a.model.n_embd, b.model.n_embd);
  EXPECT_EQ(a.model.context, b.model.context);
  EXPECT_EQ(a.model.vocab_size, b.model.vocab_size);
  EXPECT_EQ(a.model.vocab_multiple, b.model.vocab_multiple);
  EXPECT_EQ(a.model.norm, b.model.norm);
  EXPECT_EQ(a.model.matmul, b.model.matmul);
  EXPECT_EQ(a.model.init_std, b.model.init_std);
  EXPECT_EQ(a.model.attention_block, b.model.attention_block);
  EXPECT_EQ(a.data.train, b.data.train);
  EXPECT_EQ(a.data.val, b.data.val);
  EXPECT_EQ(a.data.tokenizer, b.data.tokenizer);
  EXPECT_EQ(a.optim.lr, b.optim.lr);
  EXPECT_EQ(a.optim.min_lr_ratio, b.optim.min_lr_ratio);
  EXPECT_EQ(a.optim.warmup_steps, b.optim.warmup_steps);
  EXPECT_EQ(a.optim.schedule, b.optim.schedule);
  EXPECT_EQ(a.optim.beta1, b.optim.beta1);
  EXPECT_EQ(a.optim.beta2, b.optim.beta2);
  EXPECT_EQ(a.optim.eps, b.optim.eps);
  EXPECT_EQ(a.optim.weight_decay, b.optim.weight_decay);
  EXPECT_EQ(a.optim.grad_clip, b.optim.grad_clip);
  EXPECT_EQ(a.train.micro_batch, b.train.micro_batch);
  EXPECT_EQ(a.train.seq_len, b.train.seq_len);
  EXPECT_EQ(a.train.grad_accum, b.train.grad_accum);
  EXPECT_EQ(a.train.max_steps, b.train.max_steps);
  EXPECT_EQ(a.train.seed, b.train.seed);
  EXPECT_EQ(a.train.eval_every, b.train.eval_every);
  EXPECT_EQ(a.train.eval_batches, b.train.eval_batches);
  EXPECT_EQ(a.train.run_dir, b.train.run_dir);
  EXPECT_EQ(a.train.threads, b.train.threads);
  EXPECT_EQ(a.train.stage, b.train.stage);
  EXPECT_EQ(a.checkpoint.every, b.checkpoint.every);
  EXPECT_EQ(a.checkpoint.keep, b.checkpoint.keep);
  EXPECT_EQ(a.log.every, b.log.every);
  EXPECT_EQ(a.log.progress, b.log.progress);
  EXPECT_EQ(a.log.peak_flops, b.log.peak_flops);
}

TEST(Config, EmptyFileGivesDefaults) {
  expect_same(parse_config("", kFile), ExperimentConfig());
  expect_same(parse_config("# only a comment\n", kFile), ExperimentConfig());
  expect_same(parse_config("model:\n", kFile), ExperimentConfig());
  EXPECT_EQ(parse_config("", kFile).source, "");
}

TEST(Config, FileValueReplacesDefault) {
  ExperimentConfig c = parse_config(
      "model:\n  n_layer: 6\n  norm: post\noptim:\n  lr: 3e-4\n  grad_clip: 0\n"
      "data:\n  train: data/a_*.bin\ntrain:\n  seed: 18446744073709551615\n",
      kFile);
  EXPECT_EQ(c.model.n_layer, 6);
  EXPECT_EQ(c.model.norm, "post");
  EXPECT_EQ(c.optim.lr, 3e-4f);
  EXPECT_EQ(c.optim.grad_clip, 0.0f);  // a float key accepts an integer
  EXPECT_EQ(c.data.train, "data/a_*.bin");
  EXPECT_EQ(c.train.seed, std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(c.model.n_head, ExperimentConfig().model.n_head);  // untouched keys keep defaults
}

TEST(Config, CommandLineBeatsFile) {
  ExperimentConfig c = parse_config("model:\n  n_layer: 6\noptim:\n  lr: 3e-4\n", kFile,
                                    {"model.n_layer=8", "optim.lr = 1e-3", "model.n_layer=2"});
  EXPECT_EQ(c.model.n_layer, 2);  // the last override of a key wins
  EXPECT_EQ(c.optim.lr, 1e-3f);
}

TEST(Config, OverrideStringsKeepGlobsAndQuotes) {
  ExperimentConfig c = parse_config(
      "", kFile, {"data.train=*.bin", "data.val=", "train.run_dir='runs/a b'", "log.progress=on"});
  EXPECT_EQ(c.data.train, "*.bin");
  EXPECT_EQ(c.data.val, "");
  EXPECT_EQ(c.train.run_dir, "runs/a b");
  EXPECT_EQ(c.log.progress, "on");  // a string, not YAML 1.1's boolean
}

TEST(Config, UnknownKeySuggestsNearest) {
  std::string m = parse_error("model:\n  n_head: 4\n  n_layers: 6\n");
  EXPECT_EQ(m, "configs/x.yaml:3: unknown key 'model.n_layers'; did you mean 'model.n_layer'?");
  // A key in the wrong section points to the section that has it.
  expect_contains(parse_error("model:\n  lr: 1e-3\n"),
                  {"configs/x.yaml:2", "'model.lr'", "did you mean 'optim.lr'?"});
}

TEST(Config, UnknownSectionSuggestsNearest) {
  expect_contains(parse_error("model:\n  n_head: 4\noptimizer:\n  lr: 1e-3\n"),
                  {"configs/x.yaml:3", "unknown section 'optimizer'", "did you mean 'optim'?"});
  expect_contains(parse_error("n_layer: 4\n"),
                  {"configs/x.yaml:1", "'n_layer'", "under 'model:'", "model.n_layer"});
}

TEST(Config, WrongTypeNamesKeyAndValue) {
  EXPECT_EQ(parse_error("model:\n  n_layer: 4\n  n_head: four\n"),
            "configs/x.yaml:3: model.n_head: expected an integer, got 'four'");
  expect_contains(parse_error("optim:\n  lr: fast\n"),
                  {"configs/x.yaml:2", "optim.lr", "expected a number", "'fast'"});
  expect_contains(parse_error("model:\n  n_head: \"4\"\n"),
                  {"configs/x.yaml:2", "model.n_head", "without quotes"});
  expect_contains(parse_error("model:\n  n_head: [4]\n"),
                  {"configs/x.yaml:2", "model.n_head", "a list"});
  expect_contains(parse_error("train:\n  seed: -1\n"),
                  {"configs/x.yaml:2", "train.seed", "non-negative integer"});
  expect_contains(parse_error("model: 4\n"), {"configs/x.yaml:1", "section 'model' must be a map"});
  expect_contains(parse_error("- model\n"), {"configs/x.yaml:1", "expected a map of sections"});
}

TEST(Config, IntegerGivenAsFloatIsRejected) {
  expect_contains(
      parse_error("train:\n  max_steps: 1e3\n"),
      {"configs/x.yaml:2", "train.max_steps", "expected an integer", "'1e3'", "write 1000"});
  expect_contains(parse_error("model:\n\n  n_layer: 3.0\n"),
                  {"configs/x.yaml:3", "model.n_layer", "'3.0'", "write 3"});
}

TEST(Config, OutOfRangeSaysTheRange) {
  EXPECT_EQ(parse_error("model:\n  n_head: 4\n\n\noptim:\n  lr: -1\n"),
            "configs/x.yaml:6: optim.lr: -1 is out of range; it must be > 0 and <= 10");
  expect_contains(parse_error("model:\n  n_layer: 2000\n"),
                  {"configs/x.yaml:2", "model.n_layer", "2000", ">= 1 and <= 1024"});
  expect_contains(parse_error("optim:\n  beta2: 1\n"),
                  {"configs/x.yaml:2", "optim.beta2", ">= 0 and < 1"});
  expect_contains(parse_error("train:\n  micro_batch: 99999999999\n"),
                  {"configs/x.yaml:2", "train.micro_batch", "<= 1048576"});
  expect_contains(parse_error("optim:\n  eps: 0\n"), {"optim.eps", "> 0"});
  expect_contains(parse_error("optim:\n  lr: .nan\n"), {"optim.lr", "'.nan'"});
}

TEST(Config, EnumNotInChoices) {
  EXPECT_EQ(parse_error("model:\n  norm: psot\n"),
            "configs/x.yaml:2: model.norm: 'psot' is not a valid choice; use one of pre, post; "
            "did you mean 'post'?");
  expect_contains(parse_error("data:\n  tokenizer: gpt3\n"),
                  {"configs/x.yaml:2", "data.tokenizer", "'gpt3'", "byte, gpt2"});
  expect_contains(parse_error("", {"optim.schedule=linear"}),
                  {"command line: 'optim.schedule=linear'", "cosine, constant"});
}

TEST(Config, KeyGivenTwiceIsRejected) {
  expect_contains(parse_error("model:\n  n_layer: 4\n  n_layer: 6\n"),
                  {"configs/x.yaml:3", "model.n_layer", "twice", "line 2"});
  expect_contains(parse_error("model:\n  n_layer: 4\nmodel:\n  n_head: 4\n"),
                  {"configs/x.yaml:3", "section 'model'", "twice"});
}

TEST(Config, YamlSyntaxErrorNamesLine) {
  expect_contains(parse_error("model:\n  n_layer: 4\n n_head: 4\n"),
                  {"configs/x.yaml:3", "YAML syntax error"});
}

TEST(Config, BadOverrideFormSaysTheForm) {
  EXPECT_EQ(parse_error("", {"model.n_layer"}),
            "command line: 'model.n_layer': expected the form section.key=value, e.g. "
            "optim.lr=3e-4");
  expect_contains(parse_error("", {"=4"}), {"section.key=value"});
  expect_contains(parse_error("", {"n_layer=4"}),
                  {"command line: 'n_layer=4'", "section.key=value", "'model.n_layer'"});
}

TEST(Config, OverrideErrorsNameTheOverride) {
  EXPECT_EQ(parse_error("", {"model.n_layrs=6"}),
            "command line: 'model.n_layrs=6': unknown key 'model.n_layrs'; did you mean "
            "'model.n_layer'?");
  expect_contains(parse_error("", {"model.n_head=four"}),
                  {"command line: 'model.n_head=four'", "model.n_head", "expected an integer"});
  expect_contains(parse_error("", {"optim.lr=0"}),
                  {"command line: 'optim.lr=0'", "optim.lr", "out of range"});
}

TEST(Config, HeadsMustDivideWidth) {
  std::string m = parse_error("model:\n  n_layer: 2\n  n_head: 3\n  n_embd: 128\n");
  expect_contains(m, {"configs/x.yaml:3", "model.n_embd=128", "model.n_head=3",
                      "(configs/x.yaml:4)", "126 or 129"});
  expect_contains(parse_error("", {"model.n_head=5"}),
                  {"command line: 'model.n_head=5'", "model.n_embd=256 (default)", "n_head=5"});
}

TEST(Config, SeqLenMustFitContext) {
  expect_contains(parse_error("model:\n  context: 128\ntrain:\n  seq_len: 256\n"),
                  {"configs/x.yaml:4", "train.seq_len=256", "model.context=128",
                   "train.seq_len <= 128", "model.context >= 256"});
}

TEST(Config, CrossFieldChecksRunAfterOverrides) {
  // The file alone is inconsistent; the command line repairs it.
  ExperimentConfig c = parse_config("model:\n  context: 128\n", kFile, {"train.seq_len=128"});
  EXPECT_EQ(c.train.seq_len, 128);
  // Warmup longer than training is allowed.
  EXPECT_NO_THROW(parse_config("optim:\n  warmup_steps: 5000\ntrain:\n  max_steps: 10\n", kFile));
}

TEST(Config, ApplyOverridesValidatesAndLeavesConfigOnError) {
  ExperimentConfig c;
  apply_overrides(c, {"model.n_layer=8", "train.run_dir=runs/x"});
  EXPECT_EQ(c.model.n_layer, 8);
  EXPECT_EQ(c.train.run_dir, "runs/x");
  expect_contains(error_of([&] {
                    apply_overrides(c, {"model.n_layer=9", "model.n_head=7"});
                  }),
                  {"model.n_head=7", "not divisible"});
  EXPECT_EQ(c.model.n_layer, 8);  // untouched by the failed call
  c.model.norm = "sideways";      // a bad value set in code is caught too
  expect_contains(error_of([&] { apply_overrides(c, {}); }), {"model.norm", "'sideways'"});
}

TEST(Config, ToYamlRoundTripsNonDefaultConfig) {
  ExperimentConfig c;
  c.model.n_layer = 7;
  c.model.n_head = 3;
  c.model.n_embd = 96;
  c.model.context = 333;
  c.model.vocab_size = 300;
  c.model.norm = "post";
  c.model.matmul = "bf16";
  c.model.init_std = 0.0123456789f;
  c.data.train = "data/x \"quoted\" \\ back\tslash #hash: colon é/*.bin";
  c.data.val = "";
  c.optim.lr = 1.0f / 3.0f;
  c.optim.min_lr_ratio = 0.0f;
  c.optim.schedule = "constant";
  c.optim.beta2 = 0.999f;
  c.optim.eps = 1e-38f;
  c.optim.weight_decay = 0.1f + 0.2f;
  c.train.seq_len = 300;
  c.train.seed = std::numeric_limits<std::uint64_t>::max();
  c.train.run_dir = "runs/'single' and spaces ";
  c.train.threads = 2;
  c.checkpoint.keep = 0;
  c.log.progress = "off";
  c.log.peak_flops = 1.0 / 3.0 * 1e12;
  std::string yaml = to_yaml(c);
  ExperimentConfig back = parse_config(yaml, "resolved.yaml");
  expect_same(back, c);
  EXPECT_EQ(to_yaml(back), yaml);
}

TEST(Config, ToYamlListsEveryKeyWithHelp) {
  ExperimentConfig c;
  c.source = "configs/quickstart.yaml";
  std::string yaml = to_yaml(c);
  expect_contains(yaml,
                  {"# source: configs/quickstart.yaml", "\nmodel:", "\nlog:", "  n_layer: 4",
                   "# number of transformer blocks", "  seed: 1337", "  peak_flops: 0"});
  expect_same(parse_config(yaml, "resolved.yaml"), c);
}

TEST(Config, ReferenceListsEveryKey) {
  std::string ref = config_reference();
  expect_contains(ref, {"model.n_layer", "[1, 1024]", "model.norm", "pre|post", "optim.lr",
                        "(0, 10]", "optim.beta2", "[0, 1)", "train.seed", "uint64",
                        "log.peak_flops", "double", "checkpoint.keep", "data.tokenizer"});
  // Every key of the resolved YAML is in the reference.
  std::string yaml = to_yaml(ExperimentConfig());
  std::string section;
  int keys = 0;
  for (std::size_t pos = 0, end; pos < yaml.size(); pos = end + 1) {
    end = yaml.find('\n', pos);
    std::string line = yaml.substr(pos, end - pos);
    if (line.empty() || line[0] == '#') continue;
    std::string name = line.substr(0, line.find(':'));
    if (line[0] != ' ') {
      section = name;
      continue;
    }
    ++keys;
    EXPECT_NE(ref.find(section + "." + name.substr(2)), std::string::npos) << line;
  }
  EXPECT_EQ(keys, 113);  // every field of config.h (source aside)
}

TEST(Config, LoadMissingFileNamesPath) {
  expect_contains(error_of([] { load_config("configs/no_such_file.yaml"); }),
                  {"configs/no_such_file.yaml", "does not exist"});
}

TEST(Config, LoadSetsSourceAndNamesFileInErrors) {
  std::string path = testing::TempDir() + "kiln_test_config.yaml";
  std::ofstream(path) << "model:\n  n_layer: 2\n";
  ExperimentConfig c = load_config(path, {"model.n_head=2"});
  EXPECT_EQ(c.source, path);
  EXPECT_EQ(c.model.n_layer, 2);
  EXPECT_EQ(c.model.n_head, 2);
  std::ofstream(path) << "model:\n  n_layer: two\n";
  expect_contains(error_of([&] { load_config(path); }), {path + ":2", "model.n_layer"});
  std::filesystem::remove(path);
}

TEST(Config, ShippedQuickstartParses) {
  ExperimentConfig c = load_config(std::string(KILN_SOURCE_DIR) + "/configs/quickstart.yaml");
  EXPECT_EQ(c.model.n_layer, 4);
  EXPECT_EQ(c.model.n_embd % c.model.n_head, 0);
  EXPECT_LE(c.train.seq_len, c.model.context);
  EXPECT_EQ(c.data.tokenizer, "byte");
  EXPECT_EQ(c.data.corpus, "/usr/share/games/fortunes");
  EXPECT_TRUE(c.data.train.empty());
  // Folders kiln writes are relative to the working directory, and stored absolute.
  EXPECT_EQ(c.train.run_dir, (std::filesystem::current_path() / "runs/quickstart").string());
  // Files it reads are relative to the config's folder: shared/ beside the checkout.
  EXPECT_EQ(c.data.tokenizer_dir,
            (std::filesystem::path(KILN_SOURCE_DIR).parent_path() / "shared/data/gpt2-bpe").string());
  // GPT-2's BPE is one key away.
  EXPECT_EQ(load_config(std::string(KILN_SOURCE_DIR) + "/configs/quickstart.yaml",
                        {"data.tokenizer=gpt2"}).data.tokenizer, "gpt2");
  expect_same(parse_config(to_yaml(c), "resolved.yaml"), c);
}

TEST(Config, ShippedGpt2SmallParses) {
  ExperimentConfig c = load_config(std::string(KILN_SOURCE_DIR) + "/configs/gpt2-124m.yaml");
  EXPECT_EQ(c.model.n_layer, 12);
  EXPECT_EQ(c.model.n_head, 12);
  EXPECT_EQ(c.model.n_embd, 768);
  EXPECT_EQ(c.model.context, 1024);
  EXPECT_EQ(c.model.vocab_multiple, 128);
  EXPECT_EQ(c.train.grad_accum, 8);
  EXPECT_EQ(c.optim.beta2, 0.95f);
  EXPECT_EQ(c.train.run_dir, (std::filesystem::current_path() / "runs/gpt2-124m").string());
  EXPECT_EQ(c.data.train, std::string(KILN_SOURCE_DIR) + "/data/corpus/train_*.bin");
}

// A config means the same from any working directory: the paths it names for reading resolve
// against its own folder, folders kiln writes and command-line paths against the working
// directory, and the resolved config holds them all absolute.
TEST(Config, PathsResolveAgainstTheFileThatNamesThem) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("kiln_paths_" + std::to_string(::getpid()));
  fs::create_directories(dir / "configs");
  const std::string path = (dir / "configs/x.yaml").string();
  std::ofstream(path) << "data:\n  train: \"shards/a_*.bin@0.7,/abs/b.bin@0.3\"\n"
                         "  tokenizer_dir: ../tok\n  cache_dir: cache\ntrain:\n  run_dir: runs/x\n";
  const fs::path cwd = fs::current_path();
  const ExperimentConfig c = load_config(path, {"data.val=v/val_*.bin"});
  EXPECT_EQ(c.data.train, (dir / "configs/shards/a_*.bin").string() + "@0.7,/abs/b.bin@0.3");
  EXPECT_EQ(c.data.tokenizer_dir, (dir / "tok").string());
  EXPECT_EQ(c.data.val, (cwd / "v/val_*.bin").string());   // from the command line
  EXPECT_EQ(c.data.cache_dir, (cwd / "cache").string());   // written, so the working directory's
  EXPECT_EQ(c.train.run_dir, (cwd / "runs/x").string());
  // The saved config reads back the same from anywhere.
  const std::string saved = (dir / "saved.yaml").string();
  std::ofstream(saved) << to_yaml(c);
  fs::current_path(dir / "configs");
  const ExperimentConfig again = load_config(saved);
  fs::current_path(cwd);
  expect_same(again, c);
  fs::remove_all(dir);
}

// The architecture keys: what is implemented parses, what is not yet is an error naming the key
// and what to use; other tools' names for them are suggested.
TEST(Config, ArchitectureKeysNotImplementedYetNameTheKey) {
  EXPECT_EQ(parse_config("model:\n  mlp_width: 96\n", kFile).model.mlp_width, 96);
  EXPECT_EQ(parse_config("model:\n  norm_kind: rmsnorm\n  norm_eps: 1e-6\n", kFile).model.norm_kind, "rmsnorm");
  EXPECT_EQ(parse_config("model:\n  position: rope\n", kFile).model.position, "rope");
  EXPECT_EQ(parse_config("model:\n  mlp: swiglu\n", kFile).model.mlp, "swiglu");
  expect_contains(parse_error("model:\n  n_head: 3\n  n_embd: 9\n  position: rope\n"),
                  {"configs/x.yaml:4", "head size 3", "odd"});
  EXPECT_EQ(parse_config("model:\n  n_head: 4\n  n_kv_head: 2\n", kFile).model.n_kv_head, 2);
  expect_contains(parse_error("model:\n  n_head: 4\n  n_kv_head: 3\n"), {"configs/x.yaml:3", "does not divide model.n_head=4"});
  EXPECT_EQ(parse_config("model:\n  n_head: 4\n  n_kv_head: 2\nparallel:\n  tp: 2\n", kFile).model.n_kv_head, 2);
  // Fewer key/value heads than ranks are replicated when they divide the ranks; otherwise an error.
  EXPECT_EQ(parse_config("model:\n  n_head: 4\n  n_kv_head: 1\nparallel:\n  tp: 2\n", kFile).model.n_kv_head, 1);
  expect_contains(parse_error("model:\n  n_head: 6\n  n_kv_head: 2\n  n_embd: 192\nparallel:\n  tp: 3\n"),
                  {"configs/x.yaml:3", "model.n_kv_head=2 with parallel.tp=3", "split", "replicate"});
  EXPECT_EQ(parse_config("model:\n  n_head: 4\n  n_kv_head: 4\n", kFile).model.n_kv_head, 4);
  expect_contains(parse_error("model:\n  bias: 0\n"), {"model.bias=0 with model.norm_kind=layernorm", "not implemented",
                                                        "model.norm_kind=rmsnorm"});
  EXPECT_EQ(parse_config("model:\n  tie_embeddings: 0\n", kFile).model.tie_embeddings, 0);
  expect_contains(parse_error("model:\n  norm_eps: 1e-6\n"), {"model.norm_eps=1e-06 with model.norm_kind=layernorm", "not implemented"});
  expect_contains(parse_error("model:\n  intermediate_size: 96\n"), {"did you mean 'model.mlp_width'?"});
}

// model.arch=llama presets the LLaMA keys the config does not set; a key it sets wins, and the
// preset's values say where they came from.
TEST(Config, ArchPresetFillsWhatTheConfigDoesNotSet) {
  const kiln::ModelConfig llama = parse_config("model:\n  arch: llama\n", kFile).model;
  EXPECT_EQ(llama.norm_kind, "rmsnorm");
  EXPECT_EQ(llama.position, "rope");
  EXPECT_EQ(llama.mlp, "swiglu");
  EXPECT_EQ(llama.bias, 0);
  EXPECT_EQ(llama.tie_embeddings, 0);
  const kiln::ModelConfig mixed = parse_config("model:\n  arch: llama\n  mlp: gelu\n  tie_embeddings: 1\n", kFile).model;
  EXPECT_EQ(mixed.mlp, "gelu");
  EXPECT_EQ(mixed.tie_embeddings, 1);
  EXPECT_EQ(mixed.position, "rope");
  const kiln::ModelConfig by_override =
      kiln::parse_config("model:\n  n_head: 4\n", kFile, {"model.arch=llama", "model.position=learned"}).model;
  EXPECT_EQ(by_override.norm_kind, "rmsnorm");
  EXPECT_EQ(by_override.position, "learned");
  EXPECT_EQ(parse_config("model:\n  n_head: 4\n", kFile).model.norm_kind, "layernorm");  // no arch: GPT-2
  expect_contains(parse_error("model:\n  arch: llama\n  n_head: 3\n  n_embd: 9\n"),
                  {"model.arch=llama (configs/x.yaml:2)", "model.position=rope", "head size 3"});
}

TEST(Config, NamesOtherToolsUseSuggestTheKey) {
  expect_contains(parse_error("optim:\n  learning_rate: 1e-3\n"), {"did you mean 'optim.lr'?"});
  expect_contains(parse_error("train:\n  batch_size: 8\n"), {"did you mean 'train.micro_batch'?"});
  expect_contains(parse_error("model:\n  hidden_size: 8\n"), {"did you mean 'model.n_embd'?"});
  expect_contains(error_of([] { parse_config("", kFile, {"train.gradient_accumulation_steps=2"}); }),
                  {"did you mean 'train.grad_accum'?"});
  // Nothing close: no wild guess, the section's keys instead.
  const std::string m = parse_error("optim:\n  momentum_schedule_kind: 1\n");
  EXPECT_EQ(m.find("did you mean"), std::string::npos) << m;
  expect_contains(m, {"unknown key 'optim.momentum_schedule_kind'", "lr, min_lr_ratio", "kiln config"});
}

TEST(Config, BinaryOrNonUtf8FileIsNamedAsSuch) {
  expect_contains(parse_error(std::string("model:\n  n_layer: 4\n\x7f" "ELF\0\x02\x01", 27)),
                  {"configs/x.yaml:3", "binary file, not a YAML config", "configs/quickstart.yaml"});
  expect_contains(parse_error("model:\n  norm: pr\xe9\n"),
                  {"configs/x.yaml:2", "0xe9", "not UTF-8"});
  // The tab hint only where the failing line has a tab.
  expect_contains(parse_error("model:\n\tn_layer: 4\n"), {"YAML syntax error", "tab"});
  const std::string m = parse_error("model:\n  n_layer: [4\n");
  expect_contains(m, {"YAML syntax error"});
  EXPECT_EQ(m.find("tab"), std::string::npos) << m;
}

}  // namespace

TEST(Config, Bf16ActivationsNeedTheGpuAndPreLn) {
  expect_contains(parse_error("model:\n  dtype: bf16\n"),
                  {"configs/x.yaml:2", "model.dtype=bf16", "train.device=cuda", "model.matmul=bf16"});
  expect_contains(parse_error("model:\n  dtype: bf16\n  norm: post\ntrain:\n  device: cuda\n"),
                  {"model.dtype=bf16", "model.norm=pre"});
  EXPECT_NO_THROW(parse_config("model:\n  dtype: bf16\ntrain:\n  device: cuda\n", kFile));
}

TEST(Config, CorpusAndShardsAreExclusive) {
  expect_contains(parse_error("data:\n  train: d/train_*.bin\n  corpus: text/\n"),
                  {"configs/x.yaml:3", "data.corpus", "data.train", "keep one"});
  // The quickstart's shape: a corpus alone, and shards alone, are both fine.
  EXPECT_NO_THROW(parse_config("data:\n  corpus: text/\n  separator: \"%\"\n", kFile));
  EXPECT_NO_THROW(parse_config("data:\n  corpus: text/\n", kFile, {"data.corpus=", "data.train=x"}));
}

}  // namespace kiln
