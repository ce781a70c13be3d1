// Experiment configuration: one YAML file per experiment, sections model/data/optim/train/
// checkpoint/log. Every key is declared exactly once (config.cpp's schema table) with its type,
// default, allowed range and help text; precedence is default < YAML file < command line
// (`section.key=value`). Unknown keys, wrong types and out-of-range values throw kiln::Error
// naming the file, line, key and the nearest valid key.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kiln {

struct ModelConfig {
  int n_layer = 4;
  int n_head = 4;
  int n_embd = 256;
  int context = 256;          // number of learned positions (HF n_positions)
  int vocab_size = 0;         // 0: take it from the tokenizer named in data.tokenizer
  int vocab_multiple = 64;    // the embedding is padded to a multiple of this
  std::string norm = "pre";   // pre | post (LayerNorm placement)
  // The rest of the architecture, as data (docs/model.md). GPT-2 is a LayerNorm (eps 1e-5),
  // learned positions, a GELU MLP 4 x n_embd wide, one key/value head per head, biases and a
  // head tied to the embedding. LLaMA's RMSNorm, RoPE, SwiGLU, grouped key/value heads and no
  // biases are kinds of the same keys.
  // gpt2 | llama: a preset over the keys below (llama: rmsnorm, rope, swiglu, no biases, an
  // untied head, Hugging Face LLaMA parameter names); a key set in the config overrides it.
  std::string arch = "gpt2";
  std::string norm_kind = "layernorm";  // layernorm | rmsnorm
  float norm_eps = 1e-5f;
  std::string position = "learned";     // learned | rope
  float rope_theta = 10000.0f;          // rope: base of the rotary frequencies
  // rope: none | llama3 (Llama 3's frequency scaling, with the four numbers below)
  std::string rope_scaling = "none";
  float rope_factor = 8.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  int rope_original_context = 8192;
  std::string mlp = "gelu";             // gelu | swiglu
  int mlp_width = 0;                    // 0: 4 * n_embd (gelu), LLaMA's rule (swiglu)
  int mlp_multiple_of = 256;            // swiglu, mlp_width 0: 8/3 n_embd rounded up to a multiple of this
  int n_kv_head = 0;                    // 0: n_head
  int bias = 1;                         // 1: linears and norms have biases
  int tie_embeddings = 1;               // 1: the LM head is the token embedding
  std::string matmul = "f32"; // f32 | bf16 (bf16 inputs, fp32 accumulate, fp32 master weights)
  // f32 | bf16: bf16 activations and weight copies, fp32 master weights, parameter gradients,
  // optimizer moments, LayerNorm statistics and losses (train.device=cuda, pre-LN).
  std::string dtype = "f32";
  // 1: keep only each block's output and recompute the rest of its activations during backward
  // (activation memory ~ one block instead of all; about one more forward pass of compute).
  int recompute = 0;
  float init_std = 0.02f;
  int attention_block = 64;   // query/key tile of the attention kernel
  // Attention pattern per layer: dense | local | strided | fixed | gpt3 (dense on even layers,
  // local on odd) | a comma-separated list, one per layer. Sizes are in blocks.
  std::string attention = "dense";
  int attention_window = 4;
  int attention_stride = 4;
  int attention_summary = 1;
  int attention_global = 0;
  int attention_per_head = 0;
};

struct DataConfig {
  std::string train;          // shard file, folder or glob of token shards for training
  std::string val;            // the same for validation ("" = no validation)
  // Instead of train/val: text (file, folder or glob) that `kiln train` tokenizes itself with
  // data.tokenizer into a cached shard folder (core/data/corpus_cache.h).
  std::string corpus;
  std::string separator;      // corpus: a line equal to this separates documents ("": one per file)
  std::string jsonl_field = "text";  // corpus: the field of .jsonl records holding the text
  std::string cache_dir = "data/cache";  // corpus: where its shards are kept
  std::string tokenizer = "byte";  // byte | gpt2
  // train.stage sft: the task mixture (core/data/instruct.h MixtureConfig) it tunes on, and one
  // whose tasks' losses validation reports ("": none).
  std::string mixture;
  std::string val_mixture;
  // gpt2: the folder holding encoder.json and vocab.bpe ("" = $KILN_GPT2_BPE_DIR, else an error).
  std::string tokenizer_dir;
  // train.stage reward and dpo: preference records {prompt, chosen, rejected} (JSONL) to train on
  // and to validate on ("": none).
  std::string preferences;
  std::string val_preferences;
  // train.stage ppo: prompt records {prompt, ...} (JSONL) to roll out from, and held-out ones
  // whose responses validation scores ("": none).
  std::string prompts;
  std::string val_prompts;
};

struct OptimConfig {
  float lr = 6e-4f;
  float min_lr_ratio = 0.1f;  // cosine decays to lr * min_lr_ratio
  int warmup_steps = 100;
  std::string schedule = "cosine";  // cosine | constant
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // applied to matmul weights only
  float grad_clip = 1.0f;     // global-norm clip; 0 disables
};

struct TrainConfig {
  int micro_batch = 8;
  int seq_len = 256;
  int grad_accum = 1;
  int max_steps = 1000;
  std::uint64_t seed = 1337;
  int eval_every = 100;       // 0 disables periodic validation
  int eval_batches = 10;
  // Evaluation task files (comma-separated; core/eval/task.h) scored by the main rank at every
  // validation, logged to metrics.jsonl ("": none), on the first eval_limit documents (0: all).
  std::string eval_tasks;
  int eval_limit = 0;
  std::string run_dir = "runs/default";
  int threads = 0;            // 0: all cores
  std::string stage = "pretrain";  // pretrain | sft
  // Weights to start from: a model.safetensors, a run or checkpoint folder, or a Hugging Face
  // model folder ("": initialise; `kiln train --init-from` overrides it).
  std::string init_from;
  std::string device = "cpu";  // cpu | cuda (the first GPU of each process)
  // auto: resume from the newest complete checkpoint in run_dir when there is one, else start
  // afresh (a requeued cluster job); off: only `kiln train --resume` resumes.
  std::string resume = "off";
  // A non-finite gradient norm (or loss): stop the run, or skip the step (weights unchanged,
  // logged), stopping after skip_limit such steps in a row.
  std::string on_nonfinite = "stop";
  int skip_limit = 3;
};

struct CheckpointConfig {
  int every = 500;            // 0: only at the end
  int keep = 3;               // newest checkpoints kept; 0 keeps all
};

struct LogConfig {
  int every = 1;
  std::string progress = "auto";  // auto | on | off (auto: on when stdout is a terminal)
  double peak_flops = 0.0;  // for MFU; 0: measured at start (cpu) or from the GPU's model (cuda)
};

struct ParallelConfig {
  int tp = 1;                 // tensor-parallel ranks; data-parallel ranks = world / tp
  int zero = 0;               // 1: shard AdamW state over data-parallel ranks (ZeRO-1)
  double bucket_mb = 8.0;     // gradient all-reduce bucket size, MiB
  double timeout_s = 300.0;   // a collective that takes longer aborts the job
  int rank_logs = 0;          // 1: every rank writes <run_dir>/rank_<r>.log
};

// The other models of a preference-tuning stage (docs/rlhf.md), each a run or checkpoint folder.
// The trained model itself (the policy, or the reward model being trained) starts from
// train.init_from.
struct RolesConfig {
  std::string reference;  // dpo, ppo: the frozen reference ("": train.init_from)
  std::string reward;     // ppo: the frozen reward model (a checkpoint with a scalar head)
  std::string value;      // ppo: the trained value model's initial weights ("": roles.reward)
};

struct RewardConfig {
  float center = 0.0f;        // coefficient of the centring term (r_chosen + r_rejected)^2
  int use_margin = 1;         // 1: a record's numeric "margin" field is subtracted inside the sigmoid
  // With data.val_prompts: the reference policy's responses to them (sampled at norm_temperature,
  // at most norm_max_new_tokens) are the samples whose score mean and deviation are stored.
  float norm_temperature = 1.0f;
  int norm_max_new_tokens = 40;
};

struct DpoConfig {
  float beta = 0.1f;
  float label_smoothing = 0.0f;      // conservative DPO: the probability that a label is wrong
  std::string loss = "sigmoid";      // sigmoid | ipo
  std::string reference = "live";    // live | precomputed (once, at the start)
};

struct PpoConfig {
  int rollout_prompts = 32;       // prompts per rollout, over all data-parallel ranks
  int max_new_tokens = 24;
  float temperature = 1.0f;
  float kl_coef = 0.05f;          // initial (or fixed) KL penalty coefficient; 0: no penalty
  float kl_target = 0.0f;         // > 0: adapt the coefficient toward this KL (nats per sequence)
  float kl_horizon = 10000.0f;
  std::string kl_estimator = "k1";  // k1 | k2 | k3
  float missing_eot_penalty = -1.0f;  // added to the score of a response without end-of-text
  int reward_normalize = 1;       // 1: (score - mean) / std with the reward model's stored statistics
  float reward_clip = 5.0f;       // |reward| clipped to this; 0: no clip
  float gamma = 1.0f;
  float lam = 0.95f;
  float clip_ratio = 0.2f;
  float value_clip = 0.2f;        // 0: no value clipping
  int epochs = 2;                 // passes over each rollout
  int minibatches = 2;            // optimizer steps per pass
  float value_lr = 0.0f;          // the value model's peak learning rate; 0: optim.lr
  float ptx_coef = 0.0f;          // > 0: add this times the SFT loss on data.mixture (PPO-ptx)
};

struct ExperimentConfig {
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  TrainConfig train;
  CheckpointConfig checkpoint;
  LogConfig log;
  ParallelConfig parallel;
  RolesConfig roles;
  RewardConfig reward;
  DpoConfig dpo;
  PpoConfig ppo;
  std::string source;  // the YAML file this came from ("" when built in code)
};

// The items of a comma-separated list key (data.train, train.eval_tasks), empty ones kept.
std::vector<std::string> split_list(const std::string& value);

// The text without leading and trailing spaces, tabs and line ends.
std::string trim(const std::string& text);

// Reads a YAML file and applies `section.key=value` overrides; validates everything.
ExperimentConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from YAML text; `name` stands in for the file name in error messages.
// model.arch's preset: sets m.arch and the architecture keys it presets (all but those `keep`
// names), for code that builds a config without YAML; returns the dotted keys it set. (A
// config file or override that sets model.arch gets the same through the parser.)
std::vector<std::string> set_arch(ModelConfig& m, const std::string& arch,
                                  const std::function<bool(const std::string&)>& keep = {});

ExperimentConfig parse_config(const std::string& yaml_text, const std::string& name,
                              const std::vector<std::string>& overrides = {});
// Applies overrides to an existing config (used when resuming: saved config < command line).
void apply_overrides(ExperimentConfig& config, const std::vector<std::string>& overrides);
// The fully resolved config as YAML, every key present; parse_config(to_yaml(c)) == c.
std::string to_yaml(const ExperimentConfig& config);
// Every key with type, default and help, for `kiln config`.
std::string config_reference();

}  // namespace kiln
