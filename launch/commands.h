// The kiln subcommands. Each takes parsed options, does its work through the libraries and
// throws kiln::Error on failure; main.cpp turns errors into exit codes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/data/corpus.h"
#include "core/data/tokenize.h"
#include "core/model/attention_layout.h"
#include "core/model/decode.h"
#include "core/eval/preference_world.h"

namespace kiln::cli {

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
  std::string resume;  // "" fresh, "auto" newest in run_dir, or a path
  std::string init_from;
  bool overwrite = false;
  std::int64_t stop_after = 0;
};
int train(const TrainArgs& args);

int tokenize(const TokenizeOptions& options);

struct TokenizerTrainArgs {
  CorpusOptions corpus;  // inputs, --jsonl-field, --separator, --skip-bad-records
  int vocab_size = 0;
  std::uint64_t min_frequency = 2;
  int threads = 0;
  std::string out_dir;
};
// Learns a byte-level BPE vocabulary and writes encoder.json + vocab.bpe to out_dir.
int tokenizer_train(const TokenizerTrainArgs& args);

struct SampleArgs {
  std::string checkpoint;
  std::vector<std::string> prompts;  // none: one empty prompt (starts from end-of-text)
  int batch = 1;                     // sequences per prompt, seeds seed, seed + 1, ...
  bool ids = false;                  // print the token ids too
  std::string device = "cpu";
  std::string tokenizer_dir;  // gpt2: overrides the run's data.tokenizer_dir
  SampleOptions sample;
};
int sample(const SampleArgs& args);

struct EvalArgs {
  std::string checkpoint;        // run or checkpoint folder
  std::vector<std::string> task_files;
  std::string out;               // results JSON ("": <checkpoint>/eval.json)
  std::string device = "cpu";
  std::string tokenizer_dir;
  int batch = 16;                // rows per forward pass, sequences per decode
  std::int64_t limit = 0;        // documents per task (0: all)
  std::vector<int> num_fewshot;  // overrides the tasks' num_fewshot
};
int eval(const EvalArgs& args);

struct TasksArgs {
  std::string dir;
  std::uint64_t seed = 1234;
  int train = 400, val = 50, test = 100;  // records per task and split
  std::string corpus_config;  // --corpus CONFIG: the in-context probes from its corpus (core/eval/corpus_tasks.h)
};
int tasks(const TasksArgs& args);

// kiln prefs DIR: the preference world (core/eval/preference_world.h).
struct PrefsArgs {
  std::string dir;
  WorldOptions world;
};
int prefs(const PrefsArgs& args);

// kiln policy-eval RUN PROMPTS: responses of a policy to prompt records (greedy or sampled), scored by the
// gold rule (records with an answer) and, with --reward, by a reward model (normalised by its
// stored statistics); prints and writes JSON.
struct PolicyEvalArgs {
  std::string checkpoint;
  std::string prompts;
  std::string reward;         // "": no reward model
  std::string out;            // "": print only
  int max_new_tokens = 24;
  int batch = 16;
  std::string device = "cpu";
  float temperature = 0.0f;   // 0: greedy
  std::uint64_t seed = 0;
};
int policy_eval(const PolicyEvalArgs& args);

struct LayoutArgs {
  AttentionPattern pattern;
  std::int64_t seq_len = 1024;
  int heads = 1;
  int head = 0;
  std::string out;  // .svg file
};
// Draws a block layout as an SVG picture and prints its density.
int layout(const LayoutArgs& args);

// Prints the resolved config (file + overrides), or the key reference when config is "".
int show_config(const std::string& config, const std::vector<std::string>& overrides);

// kiln import HF_DIR OUT_DIR: a Hugging Face model folder as a kiln checkpoint folder (config.yaml
// with the model section, model.safetensors with kiln's names and layouts).
int import_hf(const std::string& hf_dir, const std::string& out_dir);
// kiln export RUN_OR_CHECKPOINT OUT_DIR: a Hugging Face model folder (config, weights sharded past
// shard_mb MiB, and GPT-2 BPE's tokenizer files for runs that use it).
int export_hf(const std::string& source, const std::string& out_dir, double shard_mb);

}  // namespace kiln::cli
