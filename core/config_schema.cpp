// The config schema's contents: every key of config.h, in file order. Adding a key here (and
// its field in config.h) is all it takes for it to be parsed, checked, saved and documented.
#include "core/config_schema.h"

namespace kiln::config_schema {
namespace {

// ---- The allowed values of every string enum: the one place that lists them. ----
const std::vector<std::string> kNormChoices = {"pre", "post"};
const std::vector<std::string> kArchChoices = {"gpt2", "llama"};
const std::vector<std::string> kRopeScalingChoices = {"none", "llama3"};
const std::vector<std::string> kNormKindChoices = {"layernorm", "rmsnorm"};
const std::vector<std::string> kPositionChoices = {"learned", "rope"};
const std::vector<std::string> kMlpChoices = {"gelu", "swiglu"};
const std::vector<std::string> kMatmulChoices = {"f32", "bf16"};
const std::vector<std::string> kScheduleChoices = {"cosine", "constant"};
const std::vector<std::string> kProgressChoices = {"auto", "on", "off"};
const std::vector<std::string> kStageChoices = {"pretrain", "sft", "reward", "dpo", "ppo"};
const std::vector<std::string> kTokenizerChoices = {"byte", "gpt2"};
const std::vector<std::string> kDeviceChoices = {"cpu", "cuda"};

// ---- The schema: every key of config.h, in file order. ----

void model_keys(Schema& s) {
  SectionBuilder<ModelConfig>(s, "model", &ExperimentConfig::model, "network shape and numerics")
      .key("n_layer", &ModelConfig::n_layer, between(1, 1024), "number of transformer blocks")
      .aka({"num_layers", "num_hidden_layers", "n_layers", "layers", "depth"})
      .key("n_head", &ModelConfig::n_head, between(1, 1024), "attention heads per block")
      .aka({"num_heads", "num_attention_heads", "n_heads", "heads"})
      .key("n_embd", &ModelConfig::n_embd, between(1, 65536), "width of the residual stream")
      .aka({"hidden_size", "d_model", "n_embed", "dim", "width", "embed_dim"})
      .key("context", &ModelConfig::context, between(1, 1 << 20),
           "number of learned positions (longest sequence the model can read)")
      .aka({"n_positions", "n_ctx", "block_size", "max_position_embeddings", "context_length"})
      .key("vocab_size", &ModelConfig::vocab_size, between(0, 1 << 24),
           "0: take it from data.tokenizer (byte: 257, gpt2: encoder.json's, 50257 for GPT-2's)")
      .aka({"vocab", "n_vocab"})
      .key("vocab_multiple", &ModelConfig::vocab_multiple, between(1, 65536),
           "the embedding is padded to a multiple of this")
      .key("arch", &ModelConfig::arch, one_of(kArchChoices),
           "preset: gpt2, or llama (rmsnorm, rope, swiglu, no biases, untied head); set keys override it")
      .aka({"architecture", "model_type"})
      .key("norm", &ModelConfig::norm, one_of(kNormChoices), "norm placement")
      .key("norm_kind", &ModelConfig::norm_kind, one_of(kNormKindChoices), "normalisation")
      .key("norm_eps", &ModelConfig::norm_eps, above(0), "epsilon of the norms (layernorm: 1e-5 only, for now)")
      .aka({"layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps", "eps_norm"})
      .key("position", &ModelConfig::position, one_of(kPositionChoices),
           "positions: learned embeddings, or rotary (rope)")
      .key("rope_theta", &ModelConfig::rope_theta, above(0), "rope: base of the rotary frequencies")
      .key("rope_scaling", &ModelConfig::rope_scaling, one_of(kRopeScalingChoices),
           "rope: frequency scaling (llama3: Llama 3's, with the rope_* numbers below)")
      .key("rope_factor", &ModelConfig::rope_factor, above(0), "rope_scaling=llama3: low frequencies divided by this")
      .key("rope_low_freq_factor", &ModelConfig::rope_low_freq_factor, above(0),
           "rope_scaling=llama3: wavelengths past rope_original_context / this are scaled fully")
      .key("rope_high_freq_factor", &ModelConfig::rope_high_freq_factor, above(0),
           "rope_scaling=llama3: wavelengths below rope_original_context / this are kept")
      .key("rope_original_context", &ModelConfig::rope_original_context, at_least(1),
           "rope_scaling=llama3: the context the model was first trained at")
      .aka({"rotary_base", "rope_base"})
      .key("mlp", &ModelConfig::mlp, one_of(kMlpChoices), "MLP kind")
      .key("mlp_width", &ModelConfig::mlp_width, between(0, 1 << 20),
           "hidden width of the MLP; 0: 4 x n_embd (gelu) or 8/3 x n_embd rounded up to mlp_multiple_of (swiglu)")
      .aka({"n_inner", "intermediate_size", "ffn_dim", "d_ff", "ffn_hidden_size"})
      .key("mlp_multiple_of", &ModelConfig::mlp_multiple_of, between(1, 1 << 16),
           "swiglu with mlp_width 0: the width is rounded up to a multiple of this (LLaMA's multiple_of)")
      .aka({"multiple_of"})
      .key("n_kv_head", &ModelConfig::n_kv_head, between(0, 1 << 16),
           "key/value heads; 0: n_head; a divisor of n_head: grouped-query attention (split over parallel.tp ranks "
           "when tp divides it, replicated when it divides tp)")
      .aka({"num_key_value_heads", "n_kv_heads", "num_kv_heads"})
      .key("bias", &ModelConfig::bias, between(0, 1), "1: linears and norms have biases (0: with rmsnorm)")
      .key("tie_embeddings", &ModelConfig::tie_embeddings, between(0, 1),
           "1: the LM head is the token embedding; 0: its own weight (lm_head.weight)")
      .aka({"tie_word_embeddings", "tied_embeddings"})
      .key("matmul", &ModelConfig::matmul, one_of(kMatmulChoices),
           "matmul inputs (bf16: fp32 accumulate and fp32 master weights)")
      .key("dtype", &ModelConfig::dtype, one_of(kMatmulChoices),
           "activations (bf16: mixed precision on cuda; fp32 master weights and moments)")
      .key("recompute", &ModelConfig::recompute, between(0, 1),
           "1: recompute each block's activations in backward (memory of one block)")
      .key("init_std", &ModelConfig::init_std, above(0), "std of the normal weight init")
      .key("attention_block", &ModelConfig::attention_block, between(16, 128),
           "query/key tile of the attention kernel: 16, 32, 64 or 128")
      .key("attention", &ModelConfig::attention, not_empty(),
           "dense | local | strided | fixed | gpt3 | one per layer, comma-separated")
      .key("attention_window", &ModelConfig::attention_window, at_least(1),
           "local/strided: recent key blocks attended (own block included)")
      .key("attention_stride", &ModelConfig::attention_stride, at_least(1),
           "strided: period in blocks; fixed: blocks per chunk")
      .key("attention_summary", &ModelConfig::attention_summary, at_least(1),
           "fixed: summary blocks at the end of each chunk")
      .key("attention_global", &ModelConfig::attention_global, at_least(0),
           "leading blocks every query attends to (global tokens)")
      .key("attention_per_head", &ModelConfig::attention_per_head, between(0, 1),
           "fixed: 1 gives each head other summary blocks");
}

void data_keys(Schema& s) {
  SectionBuilder<DataConfig>(s, "data", &ExperimentConfig::data, "token shards and tokenizer")
      .key("train", &DataConfig::train, Limits(),
           "training shards: a file, folder or glob, or a blend PATTERN@WEIGHT,... (relative to the config file)")
      .path(PathBase::config_file, true)
      .key("val", &DataConfig::val, Limits(), "validation shards, the same way (\"\": none)")
      .path(PathBase::config_file, true)
      .key("corpus", &DataConfig::corpus, Limits(),
           "instead of train/val: text files, a folder or a glob that kiln tokenizes with "
           "data.tokenizer (cached; 5% of documents for validation; relative to the config file)")
      .path(PathBase::config_file)
      .key("separator", &DataConfig::separator, Limits(),
           "corpus: a line equal to this separates documents (\"\": one document per file)")
      .key("jsonl_field", &DataConfig::jsonl_field, Limits(),
           "corpus: the field of .jsonl records that holds the text")
      .key("cache_dir", &DataConfig::cache_dir, Limits(),
           "corpus: folder for its token shards, one subfolder per corpus and tokenizer "
           "(relative to the working directory)")
      .path(PathBase::working_dir)
      .key("tokenizer", &DataConfig::tokenizer, one_of(kTokenizerChoices),
           "tokenizer the shards were written with")
      .key("mixture", &DataConfig::mixture, Limits(),
           "train.stage=sft: the task mixture YAML it tunes on (docs/instruction-data.md; relative to the config file)")
      .path(PathBase::config_file)
      .key("val_mixture", &DataConfig::val_mixture, Limits(),
           "train.stage=sft: a task mixture whose per-task losses validation reports (\"\": none)")
      .path(PathBase::config_file)
      .key("tokenizer_dir", &DataConfig::tokenizer_dir, Limits(),
           "gpt2: folder holding encoder.json and vocab.bpe (relative to the config file; "
           "\"\": $KILN_GPT2_BPE_DIR)")
      .path(PathBase::config_file)
      .key("preferences", &DataConfig::preferences, Limits(),
           "train.stage=reward or dpo: preference records {prompt, chosen, rejected} (JSONL; relative to the "
           "config file)")
      .path(PathBase::config_file)
      .key("val_preferences", &DataConfig::val_preferences, Limits(),
           "reward, dpo: held-out preference records for validation (\"\": none)")
      .path(PathBase::config_file)
      .key("prompts", &DataConfig::prompts, Limits(),
           "train.stage=ppo: prompt records {prompt, answer (optional: the gold rule's)} to roll out from (JSONL)")
      .path(PathBase::config_file)
      .key("val_prompts", &DataConfig::val_prompts, Limits(),
           "ppo, dpo: held-out prompts whose sampled responses validation scores; reward: the prompts of the "
           "reference responses that normalise the scores (\"\": none)")
      .path(PathBase::config_file);
}

void optim_keys(Schema& s) {
  SectionBuilder<OptimConfig>(s, "optim", &ExperimentConfig::optim, "AdamW and the LR schedule")
      .key("lr", &OptimConfig::lr, above(0).up_to(10), "peak learning rate")
      .aka({"learning_rate", "max_lr", "peak_lr"})
      .key("min_lr_ratio", &OptimConfig::min_lr_ratio, between(0, 1),
           "cosine decays to lr * min_lr_ratio")
      .key("warmup_steps", &OptimConfig::warmup_steps, at_least(0),
           "linear warmup from 0 to lr over this many steps")
      .aka({"warmup", "warmup_iters", "num_warmup_steps"})
      .key("schedule", &OptimConfig::schedule, one_of(kScheduleChoices),
           "learning-rate schedule after warmup")
      .key("beta1", &OptimConfig::beta1, at_least(0).below(1), "AdamW first-moment decay")
      .key("beta2", &OptimConfig::beta2, at_least(0).below(1), "AdamW second-moment decay")
      .key("eps", &OptimConfig::eps, above(0), "AdamW denominator epsilon")
      .key("weight_decay", &OptimConfig::weight_decay, at_least(0),
           "decoupled weight decay, matmul weights only")
      .aka({"wd", "decay"})
      .key("grad_clip", &OptimConfig::grad_clip, at_least(0), "global-norm clip; 0 disables")
      .aka({"max_grad_norm", "clip_grad_norm", "gradient_clipping", "clip"});
}

void train_keys(Schema& s) {
  SectionBuilder<TrainConfig>(s, "train", &ExperimentConfig::train, "the training loop")
      .key("micro_batch", &TrainConfig::micro_batch, between(1, 1 << 20),
           "sequences per forward/backward pass")
      .aka({"batch_size", "micro_batch_size", "per_device_train_batch_size", "batch"})
      .key("seq_len", &TrainConfig::seq_len, between(1, 1 << 20),
           "tokens per training sequence (<= model.context)")
      .aka({"sequence_length", "seq_length", "max_seq_len", "max_length"})
      .key("grad_accum", &TrainConfig::grad_accum, between(1, 1 << 20),
           "micro-batches accumulated per optimizer step")
      .aka({"gradient_accumulation_steps", "accumulation_steps", "grad_accum_steps"})
      .key("max_steps", &TrainConfig::max_steps, at_least(1), "optimizer steps to train")
      .aka({"max_iters", "steps", "train_steps", "num_steps", "iterations", "train_iters"})
      .key("seed", &TrainConfig::seed, Limits(), "seed of weight init and data order")
      .key("eval_every", &TrainConfig::eval_every, at_least(0),
           "steps between validations; 0 disables")
      .key("eval_batches", &TrainConfig::eval_batches, between(1, 1 << 20), "micro-batches per validation")
      .key("eval_tasks", &TrainConfig::eval_tasks, Limits(),
           "evaluation task files, comma-separated (docs/evaluation.md), scored at every validation and logged "
           "(\"\": none; relative to the config file; needs parallel.tp=1)")
      .path(PathBase::config_file, true)
      .key("eval_limit", &TrainConfig::eval_limit, at_least(0), "eval_tasks: documents scored per task; 0: all")
      .key("run_dir", &TrainConfig::run_dir, not_empty(),
           "folder for checkpoints, logs and the resolved config.yaml (relative to the working directory)")
      .path(PathBase::working_dir)
      .aka({"output_dir", "out_dir", "save_dir", "checkpoint_dir"})
      .key("threads", &TrainConfig::threads, between(0, 1024), "CPU threads; 0: all cores")
      .key("stage", &TrainConfig::stage, one_of(kStageChoices),
           "what the loop trains: pretrain (token shards), sft (a task mixture's responses), reward (a reward model "
           "on preference pairs), dpo or ppo (a policy from preferences; docs/rlhf.md)")
      .key("init_from", &TrainConfig::init_from, Limits(),
           "weights to start from: a model.safetensors, run or checkpoint folder, or Hugging Face folder "
           "(\"\": initialise; --init-from overrides; relative to the config file)")
      .path(PathBase::config_file)
      .key("resume", &TrainConfig::resume, one_of({"off", "auto"}),
           "auto: continue from the newest complete checkpoint in run_dir if there is one, else start afresh "
           "(requeued cluster jobs); off: only --resume continues a run")
      .key("on_nonfinite", &TrainConfig::on_nonfinite, one_of({"stop", "skip"}),
           "a step with a non-finite loss or gradient norm: stop the run, or skip it (weights unchanged, logged)")
      .key("skip_limit", &TrainConfig::skip_limit, between(1, 1000000),
           "on_nonfinite=skip: skipped steps in a row after which the run stops")
      .key("device", &TrainConfig::device, one_of(kDeviceChoices),
           "where the model trains: cpu, or cuda (a build with nvcc and a GPU)");
}

void checkpoint_keys(Schema& s) {
  SectionBuilder<CheckpointConfig>(s, "checkpoint", &ExperimentConfig::checkpoint,
                                   "when to save and how many to keep")
      .key("every", &CheckpointConfig::every, at_least(0),
           "steps between checkpoints; 0: only at the end")
      .key("keep", &CheckpointConfig::keep, at_least(0), "newest checkpoints kept; 0 keeps all");
}

void log_keys(Schema& s) {
  SectionBuilder<LogConfig>(s, "log", &ExperimentConfig::log, "progress output")
      .key("every", &LogConfig::every, at_least(1), "steps between log lines")
      .key("progress", &LogConfig::progress, one_of(kProgressChoices),
           "progress bar (auto: on when stdout is a terminal)")
      .key("peak_flops", &LogConfig::peak_flops, at_least(0).up_to(1e21),
           "peak FLOP/s for MFU: of one machine (cpu) or of one GPU (cuda); 0: measured at the "
           "start (cpu) or derived from the GPU's model (cuda)");
}

void parallel_keys(Schema& s) {
  SectionBuilder<ParallelConfig>(s, "parallel", &ExperimentConfig::parallel,
                                 "data and tensor parallelism (docs/parallel.md)")
      .key("tp", &ParallelConfig::tp, between(1, 1024),
           "tensor-parallel ranks; data-parallel ranks = world size / tp")
      .aka({"tensor_parallel", "tensor_parallel_size", "tensor_model_parallel_size", "tp_size"})
      .key("zero", &ParallelConfig::zero, between(0, 1),
           "1: shard AdamW state over data-parallel ranks (ZeRO-1)")
      .key("bucket_mb", &ParallelConfig::bucket_mb, above(0).up_to(65536),
           "gradient all-reduce bucket size in MiB")
      .key("timeout_s", &ParallelConfig::timeout_s, above(0).up_to(1e6),
           "seconds a collective may take before the job is aborted")
      .key("rank_logs", &ParallelConfig::rank_logs, between(0, 1),
           "1: every rank also writes run_dir/rank_<r>.log");
}

}  // namespace

void preference_keys(Schema& s) {
  SectionBuilder<RolesConfig>(s, "roles", &ExperimentConfig::roles,
                              "the other models of a preference-tuning stage (docs/rlhf.md)")
      .key("reference", &RolesConfig::reference, Limits(),
           "dpo, ppo: the frozen reference model, a run or checkpoint folder (\"\": train.init_from); reward: the "
           "policy whose responses to data.val_prompts normalise the scores")
      .path(PathBase::config_file)
      .aka({"ref_model", "ref", "reference_model"})
      .key("reward", &RolesConfig::reward, Limits(),
           "ppo: the frozen reward model, a run or checkpoint folder of train.stage=reward")
      .path(PathBase::config_file)
      .aka({"reward_model", "rm"})
      .key("value", &RolesConfig::value, Limits(),
           "ppo: the value model's initial weights (\"\": roles.reward)")
      .path(PathBase::config_file)
      .aka({"critic", "value_model"});
  SectionBuilder<RewardConfig>(s, "reward", &ExperimentConfig::reward, "train.stage=reward: the Bradley-Terry loss")
      .key("center", &RewardConfig::center, at_least(0),
           "coefficient of the centring term (r_chosen + r_rejected)^2; 0: none")
      .aka({"center_rewards_coefficient"})
      .key("use_margin", &RewardConfig::use_margin, between(0, 1),
           "1: subtract a record's numeric 'margin' field inside the sigmoid")
      .key("norm_temperature", &RewardConfig::norm_temperature, above(0).up_to(100),
           "with data.val_prompts: temperature of the reference policy's responses whose scores set the stored "
           "mean and standard deviation")
      .key("norm_max_new_tokens", &RewardConfig::norm_max_new_tokens, between(1, 1 << 20),
           "with data.val_prompts: tokens a reference response may have");
  SectionBuilder<DpoConfig>(s, "dpo", &ExperimentConfig::dpo, "train.stage=dpo: direct preference optimisation")
      .key("beta", &DpoConfig::beta, above(0), "strength of the implicit KL constraint")
      .key("label_smoothing", &DpoConfig::label_smoothing, at_least(0).below(0.5),
           "conservative DPO: the assumed probability that a label is wrong")
      .key("loss", &DpoConfig::loss, one_of({"sigmoid", "ipo"}), "sigmoid (DPO) or ipo")
      .aka({"loss_type"})
      .key("reference", &DpoConfig::reference, one_of({"live", "precomputed"}),
           "reference log-probabilities computed with every batch (live) or once at the start (precomputed)");
  SectionBuilder<PpoConfig>(s, "ppo", &ExperimentConfig::ppo, "train.stage=ppo: rollouts, KL penalty, GAE, clipping")
      .key("rollout_prompts", &PpoConfig::rollout_prompts, between(1, 1 << 20),
           "prompts per rollout over all data-parallel ranks (a multiple of their number)")
      .aka({"rollout_batch_size", "batch_size"})
      .key("max_new_tokens", &PpoConfig::max_new_tokens, between(1, 1 << 20), "tokens a response may have")
      .aka({"response_length", "generate_max_len"})
      .key("temperature", &PpoConfig::temperature, above(0).up_to(100), "sampling temperature of rollouts")
      .key("kl_coef", &PpoConfig::kl_coef, at_least(0), "KL penalty coefficient (initial, when adaptive); 0: none")
      .aka({"init_kl_coef", "kl_penalty", "beta"})
      .key("kl_target", &PpoConfig::kl_target, at_least(0),
           "> 0: adapt kl_coef toward this KL per sequence (nats); 0: fixed")
      .key("kl_horizon", &PpoConfig::kl_horizon, above(0), "adaptive KL: sequences over which the coefficient adapts")
      .key("kl_estimator", &PpoConfig::kl_estimator, one_of({"k1", "k2", "k3"}),
           "per-token KL estimate: k1 = logp - ref, k2 = (logp - ref)^2 / 2, k3 = exp(ref - logp) - 1 - (ref - logp)")
      .key("missing_eot_penalty", &PpoConfig::missing_eot_penalty, Limits(),
           "added to the reward of a response that ends without end-of-text")
      .key("reward_normalize", &PpoConfig::reward_normalize, between(0, 1),
           "1: normalise scores by the reward model's stored mean and standard deviation")
      .key("reward_clip", &PpoConfig::reward_clip, at_least(0), "rewards clipped to [-this, this]; 0: no clip")
      .key("gamma", &PpoConfig::gamma, between(0, 1), "GAE discount")
      .key("lambda", &PpoConfig::lam, between(0, 1), "GAE lambda")
      .aka({"lam", "gae_lambda"})
      .key("clip_ratio", &PpoConfig::clip_ratio, above(0).below(1), "policy ratio clip epsilon")
      .aka({"cliprange", "eps_clip"})
      .key("value_clip", &PpoConfig::value_clip, at_least(0), "value clip around the rollout's values; 0: none")
      .aka({"cliprange_value"})
      .key("epochs", &PpoConfig::epochs, between(1, 1000), "passes over each rollout")
      .aka({"ppo_epochs", "max_epochs"})
      .key("minibatches", &PpoConfig::minibatches, between(1, 1 << 20),
           "optimizer steps per pass over a rollout (each train.max_steps step is one)")
      .key("value_lr", &PpoConfig::value_lr, at_least(0).up_to(10), "value model's peak learning rate; 0: optim.lr")
      .aka({"critic_learning_rate", "vf_lr"})
      .key("ptx_coef", &PpoConfig::ptx_coef, at_least(0),
           "PPO-ptx: weight of the SFT loss on data.mixture added to the policy's; 0: none");
}

const Schema& schema() {
  static const Schema table = [] {
    Schema s;
    model_keys(s);
    data_keys(s);
    optim_keys(s);
    train_keys(s);
    checkpoint_keys(s);
    log_keys(s);
    parallel_keys(s);
    preference_keys(s);
    return s;
  }();
  return table;
}

}  // namespace kiln::config_schema
