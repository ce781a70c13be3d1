// The training loop, run directory and checkpoint contents, on one process or as one rank of a
// data-parallel job.
#include "trainers/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "core/checkpoint/atomic_file.h"
#include "core/checkpoint/hugging_face.h"
#include "core/checkpoint/model_io.h"
#include "core/checkpoint/run_dir.h"
#include "core/checkpoint/safetensors.h"
#include "core/data/corpus_cache.h"
#include "core/eval/evaluator.h"
#include "kernels/device.h"
#include "parallel/nccl_communicator.h"
#include "parallel/tensor_parallel_group.h"
#include "trainers/metrics.h"
#include "trainers/preemption.h"

namespace kiln {

namespace {
constexpr int kTrainerStateVersion = 1;

// A checkpoint resumes only into the model it was trained as.
void check_same_model(const ModelConfig& saved, const ModelConfig& now, const std::string& checkpoint) {
  auto same = [&](const char* key, const auto& a, const auto& b) {
    KILN_CHECK(a == b, "checkpoint ", checkpoint, " was trained with model.", key, "=", a,
               " but the config says ", b, "; resume with the model section it was trained with");
  };
  same("n_layer", saved.n_layer, now.n_layer);
  same("n_head", saved.n_head, now.n_head);
  same("n_embd", saved.n_embd, now.n_embd);
  same("context", saved.context, now.context);
  same("vocab_size", saved.vocab_size, now.vocab_size);
  same("vocab_multiple", saved.vocab_multiple, now.vocab_multiple);
  same("norm", saved.norm, now.norm);
  same("norm_kind", saved.norm_kind, now.norm_kind);
  same("position", saved.position, now.position);
  same("mlp", saved.mlp, now.mlp);
  same("mlp_width", saved.mlp_width, now.mlp_width);
  same("n_kv_head", saved.n_kv_head, now.n_kv_head);
  same("bias", saved.bias, now.bias);
  same("tie_embeddings", saved.tie_embeddings, now.tie_embeddings);
  same("norm_eps", saved.norm_eps, now.norm_eps);
  same("rope_theta", saved.rope_theta, now.rope_theta);
  same("rope_scaling", saved.rope_scaling, now.rope_scaling);
  same("rope_factor", saved.rope_factor, now.rope_factor);
  same("rope_low_freq_factor", saved.rope_low_freq_factor, now.rope_low_freq_factor);
  same("rope_high_freq_factor", saved.rope_high_freq_factor, now.rope_high_freq_factor);
  same("rope_original_context", saved.rope_original_context, now.rope_original_context);
  same("mlp_multiple_of", saved.mlp_multiple_of, now.mlp_multiple_of);
}

// A Hugging Face model's architecture against the run's (both as specs, so an explicit MLP width
// equals the same width from a rule): every difference is named with both values.
void check_same_architecture(const GptShape& hf, const GptShape& run, const std::string& dir) {
  auto same = [&](const char* what, const auto& a, const auto& b) {
    KILN_CHECK(a == b, "--init-from ", dir, ": the Hugging Face model has ", what, " ", a, " but the config gives ", b,
               "; `kiln import ", dir, " OUT` writes a config that matches it");
  };
  same("layers (model.n_layer)", hf.n_layer, run.n_layer);
  same("heads (model.n_head)", hf.n_head, run.n_head);
  same("width (model.n_embd)", hf.n_embd, run.n_embd);
  same("key/value heads (model.n_kv_head)", hf.kv_heads(), run.kv_heads());
  same("MLP width", hf.ffn(), run.ffn());
  same("vocabulary (model.vocab_size)", hf.vocab, run.vocab);
  same("norm (model.norm_kind)", hf.rms_norm ? "rmsnorm" : "layernorm", run.rms_norm ? "rmsnorm" : "layernorm");
  same("norm epsilon (model.norm_eps)", hf.norm_eps, run.norm_eps);
  same("positions (model.position)", hf.rope ? "rope" : "learned", run.rope ? "rope" : "learned");
  same("MLP (model.mlp)", hf.swiglu ? "swiglu" : "gelu", run.swiglu ? "swiglu" : "gelu");
  same("biases (model.bias)", hf.bias, run.bias);
  same("a tied head (model.tie_embeddings)", hf.tied_head, run.tied_head);
  same("parameter names (model.arch)", hf.llama_names ? "llama" : "gpt2", run.llama_names ? "llama" : "gpt2");
  if (hf.rope) {
    same("rope_theta (model.rope_theta)", hf.rope_theta, run.rope_theta);
    same("Llama 3 rope scaling (model.rope_scaling)", hf.rope_scaling.llama3, run.rope_scaling.llama3);
    if (hf.rope_scaling.llama3) {
      same("rope_scaling factor (model.rope_factor)", hf.rope_scaling.factor, run.rope_scaling.factor);
      same("low_freq_factor (model.rope_low_freq_factor)", hf.rope_scaling.low_freq_factor,
           run.rope_scaling.low_freq_factor);
      same("high_freq_factor (model.rope_high_freq_factor)", hf.rope_scaling.high_freq_factor,
           run.rope_scaling.high_freq_factor);
      same("original_max_position_embeddings (model.rope_original_context)", hf.rope_scaling.original_context,
           run.rope_scaling.original_context);
    }
    KILN_CHECK(run.context <= hf.context, "--init-from ", dir, ": model.context=", run.context,
               " is longer than the Hugging Face model's max_position_embeddings ", hf.context);
  } else {
    same("positions (model.context)", hf.context, run.context);
  }
}

// A test hook for failure handling (docs/parallel.md): KILN_FAULT=KIND:RANK:STEP (STEP+ : that
// step and every later one). kill: the rank dies (SIGKILL) and hang: it stops responding, at the
// start of the step; nangrad: one gradient becomes NaN after the step's backward passes;
// slowsave: rank 0 takes 2 x parallel.timeout_s + 1 s to write the step's checkpoint.
bool fault_now(const char* wanted, int rank, std::int64_t step) {
  static const char* fault = std::getenv("KILN_FAULT");
  if (fault == nullptr) return false;
  char kind[8] = {};
  int fault_rank = -1;
  long long fault_step = -1;
  char plus = 0;
  const int n = std::sscanf(fault, "%7[a-z]:%d:%lld%c", kind, &fault_rank, &fault_step, &plus);
  if (n < 3 || std::strcmp(kind, wanted) != 0 || fault_rank != rank) return false;
  return n == 4 && plus == '+' ? step >= fault_step : step == fault_step;
}

void inject_fault(int rank, std::int64_t step) {
  const char* kind = fault_now("kill", rank, step) ? "kill" : fault_now("hang", rank, step) ? "hang" : nullptr;
  if (kind == nullptr) return;
  std::fprintf(stderr, "kiln: KILN_FAULT: rank %d %s at step %lld\n", rank, kind, static_cast<long long>(step));
  std::fflush(stderr);
  if (std::strcmp(kind, "kill") == 0) std::raise(SIGKILL);
  if (std::strcmp(kind, "hang") == 0)
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

}  // namespace

ExperimentConfig checkpoint_config(const std::string& checkpoint_dir) {
  KILN_CHECK(std::filesystem::exists(checkpoint_dir + "/config.yaml"), checkpoint_dir,
             " has no config.yaml; it is not a kiln checkpoint folder (those are "
             "run_dir/checkpoints/step_NNNNNNNN)");
  return load_config(checkpoint_dir + "/config.yaml");
}

namespace {
// The fields of trainer_state.json, each checked, with errors naming the file and the field.
struct TrainerState {
  std::int64_t step, tokens_seen, threads;
  nlohmann::json stage_state;
};

TrainerState read_trainer_state(const std::string& path, const std::string& stage, int version) {
  const auto state = nlohmann::json::parse(read_file(path), nullptr, false);
  KILN_CHECK(!state.is_discarded() && state.is_object() && state.value("format", "") == "kiln-trainer-state",
             path, ": not a kiln trainer state file");
  auto integer = [&](const char* field) {
    KILN_CHECK(state.contains(field) && state[field].is_number_integer() && state[field].get<std::int64_t>() >= 0,
               path, ": field '", field, "' must be a non-negative integer; the file is damaged");
    return state[field].get<std::int64_t>();
  };
  KILN_CHECK(integer("version") <= version, path, ": version ", integer("version"),
             " is newer than this kiln (", version, ")");
  KILN_CHECK(state.value("stage", "") == stage, path, ": checkpoint of stage '",
             state.value("stage", ""), "' cannot resume stage '", stage, "'");
  KILN_CHECK(state.contains("stage_state") && state["stage_state"].is_object(), path,
             ": field 'stage_state' is missing; the file is damaged");
  return {integer("step"), integer("tokens_seen"), integer("threads"), state["stage_state"]};
}

// trainer_state.json's step agrees with the folder it is in (step_NNNNNNNN) and with the step the
// weights were saved at (model.safetensors' kiln_step): a state copied into the wrong folder, or
// edited, would otherwise resume the schedule and data at the wrong place without a word.
void check_state_matches_folder(const std::string& checkpoint, std::int64_t step) {
  const std::string folder = std::filesystem::path(checkpoint).filename().string();
  std::int64_t named = -1;
  if (folder.size() > 5 && folder.rfind("step_", 0) == 0 &&
      folder.find_first_not_of("0123456789", 5) == std::string::npos)
    named = std::stoll(folder.substr(5));
  KILN_CHECK(named < 0 || named == step, checkpoint, "/trainer_state.json says step ", step, " but its folder is ",
             folder, "; the checkpoint is inconsistent (a file was copied or edited): resume from another checkpoint");
  const SafetensorsFile weights(checkpoint + "/model.safetensors");
  const auto saved = weights.metadata().find("kiln_step");
  KILN_CHECK(saved == weights.metadata().end() || saved->second == std::to_string(step), checkpoint,
             "/trainer_state.json says step ", step, " but model.safetensors was saved at step ",
             saved == weights.metadata().end() ? std::string() : saved->second,
             "; the checkpoint is inconsistent (a file was copied or edited): resume from another checkpoint");
}

// A fresh start must not silently replace an earlier run's metrics and checkpoints.
void prepare_run_dir(const std::string& run_dir, bool overwrite) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool has_run = fs::exists(run_dir + "/metrics.jsonl", ec) || fs::exists(run_dir + "/checkpoints", ec);
  if (has_run) {
    KILN_CHECK(overwrite, "train.run_dir=", run_dir, " already holds a run (metrics.jsonl or "
               "checkpoints/); continue it with --resume, choose another train.run_dir, or pass "
               "--overwrite to replace it");
    fs::remove_all(run_dir + "/checkpoints", ec);
    fs::remove(run_dir + "/metrics.jsonl", ec);
  }
  fs::create_directories(run_dir, ec);
  KILN_CHECK(!ec && fs::is_directory(run_dir), "cannot create train.run_dir=", run_dir, ": ",
             ec ? ec.message() : "a file of that name exists", "; choose another train.run_dir");
}

// NCCL needs one GPU per rank of a group; two ranks on one GPU (both see only the same device)
// would get NCCL's "invalid usage". Every rank compares the UUIDs of the group's GPUs.
void check_one_rank_per_gpu(Communicator& group) {
  constexpr int kWords = 4;  // 16 bytes carried as floats (a byte-exact copy)
  const auto mine = device::device_uuid();
  std::vector<float> all(static_cast<std::size_t>(kWords * group.size()));
  float* slot = all.data() + kWords * group.rank();
  std::memcpy(slot, mine.data(), mine.size());
  group.all_gather(slot, all.data(), static_cast<std::int64_t>(all.size()));
  for (int r = 0; r < group.size(); ++r)
    KILN_CHECK(r == group.rank() || std::memcmp(all.data() + kWords * r, mine.data(), mine.size()) != 0,
               "ranks ", r, " and ", group.rank(), " of the data-parallel group share one GPU (",
               device::cuda_description(), "); NCCL needs a GPU per rank: start at most as many "
               "ranks per machine as it has GPUs, or give each rank its own (srun "
               "--gpus-per-task=1, CUDA_VISIBLE_DEVICES)");
}

}  // namespace

// data.corpus: rank 0 tokenizes it into the cache (or finds it current) while the others wait;
// the stage then reads the cached shards. The run's config.yaml keeps data.corpus as written.
ExperimentConfig Trainer::with_corpus_shards(const ExperimentConfig& config) const {
  if (config.data.corpus.empty()) return config;
  const CorpusShards shards = corpus_shards(config.data);
  if (parallel_.is_main()) {
    if (prepare_corpus_shards(config.data, shards))
      say("tokenized data.corpus=" + config.data.corpus + " with data.tokenizer=" +
          config.data.tokenizer + " into " + shards.dir);
    else
      say("data.corpus: using the shards in " + shards.dir);
  }
  parallel_.world->barrier_untimed();  // tokenizing a large corpus may take longer than parallel.timeout_s
  ExperimentConfig staged = config;
  staged.data.train = shards.train;
  staged.data.val = shards.val;
  return staged;
}

Trainer::Trainer(ExperimentConfig config, TrainOptions options)
    : Trainer(std::move(config), std::move(options), owned_parallel_) {}

Trainer::Trainer(ExperimentConfig config, TrainOptions options, ParallelContext& parallel)
    : config_(std::move(config)),
      options_(std::move(options)),
      owned_parallel_(&parallel == &owned_parallel_ ? single_process_context() : ParallelContext{}),
      parallel_(parallel) {
  omp_set_num_threads(threads_per_rank(config_.train.threads, *parallel_.world));
  if (config_.train.device == "cuda") {
    KILN_CHECK(device::cuda_available(), "train.device=cuda, but ", device::cuda_description(),
               "; train on the cpu (train.device=cpu) or on a machine with a GPU and a kiln "
               "built with nvcc");
    KILN_CHECK(parallel_.dims.tp == 1, "train.device=cuda with parallel.tensor=", parallel_.dims.tp,
               ": tensor parallelism runs on the cpu only in this version; use data parallelism "
               "(parallel.tensor=1) on GPUs");
    KILN_CHECK(config_.parallel.zero == 0 || parallel_.dims.dp == 1, "train.device=cuda with "
               "parallel.zero=1: ZeRO-1 runs on the cpu only in this version; set parallel.zero=0");
    const int gpu = gpu_of_rank(*parallel_.world);
    device::use_device(gpu);
    // Gradients are summed over the data-parallel group on the GPUs, by NCCL (before the memory
    // baseline below: NCCL's own buffers are not kiln's to plan; a NCCL that connects lazily, on
    // the first collective, still adds its buffers to the report after step 1).
    if (parallel_.dims.dp > 1) {
      check_one_rank_per_gpu(*parallel_.dp);
      grad_comm_ = make_nccl_communicator(*parallel_.dp, gpu, config_.parallel.timeout_s, "data-parallel");
    }
    device_ = Device::cuda;
    // The baseline of the memory report: blocks cached from earlier work in this process go
    // back to CUDA first, so what this run allocates is measured, not what it reuses.
    device::release_cached();
    device::synchronize();
    std::size_t free_bytes = 0, total_bytes = 0;
    device::mem_info(&free_bytes, &total_bytes);
    device_used_at_start_ = total_bytes - free_bytes;
  }
  stage_ = make_stage(with_corpus_shards(config_), parallel_.dp_rank, parallel_.dims.dp);
  if (!config_.train.eval_tasks.empty()) {  // read now, so a bad task file stops the run before step 1
    for (const std::string& file : split_list(config_.train.eval_tasks))
      if (!file.empty())
        for (EvalTask& t : load_eval_tasks(file)) eval_tasks_.push_back(std::move(t));
    eval_tokenizer_ = make_tokenizer(config_.data.tokenizer, config_.data.tokenizer_dir);
  }
  if (parallel_.dims.tp > 1) tp_ops_ = std::make_unique<TensorParallelGroup>(*parallel_.tp);
  GptShape shape = GptShape::from_config(config_.model, stage_->vocab_size(), parallel_.dims.tp, parallel_.tp_rank);
  shape.score_head = stage_->scalar_head();
  main_.model = std::make_unique<Gpt>(shape, device_, tp_ops_.get());
  main_.optim = config_.optim;
  make_optimizer(main_);
  build_roles();
  ctx_.replica = parallel_.dp_rank;
  ctx_.replicas = parallel_.dims.dp;
  if (parallel_.dims.dp > 1) {
    ctx_.sum_over_replicas = [this](double v) { return parallel_.dp->sum(v); };
    ctx_.sum_many = [this](double* v, std::int64_t n) { parallel_.dp->sum(v, n); };
    ctx_.max_over_replicas = [this](double v) {
      float x = static_cast<float>(v);  // the collectives carry floats: enough for a logged maximum
      parallel_.dp->all_reduce(&x, 1, ReduceOp::max);
      return static_cast<double>(x);
    };
  }
  if (main_.sync) ctx_.before_last_backward = [this] { main_.sync->arm(); };
  ctx_.before_last_backward_of = [this](const std::string& name) {
    for (ModelRole& role : others_)
      if (role.name == name && role.sync) role.sync->arm();
  };
}

// AdamW over the role's whole model, or over this rank's slice of it (ZeRO-1); gradient sync for
// data parallelism without ZeRO.
void Trainer::make_optimizer(ModelRole& role) {
  Gpt& model = *role.model;
  const std::int64_t n = model.parameter_buffer().numel();
  if (config_.parallel.zero == 1 && parallel_.dims.dp > 1) {
    const Chunk mine = chunk_of(n, parallel_.dims.dp, parallel_.dp_rank);
    role.optimizer = std::make_unique<AdamW>(role.optim, model, mine.begin, mine.end);
    role.grad_shard = Tensor::zeros({mine.size()});
  } else {
    role.optimizer = std::make_unique<AdamW>(role.optim, model);
    if (parallel_.dims.dp > 1)
      role.sync = std::make_unique<GradientSync>(model, grad_comm_ ? *grad_comm_ : *parallel_.dp,
                                                 config_.parallel.bucket_mb);
  }
}

// The stage's other roles: each built from its checkpoint's model section on this run's device and
// layout, checked to read the run's tokens, and loaded (a trained role's weights are replaced
// by the run's own checkpoint on resume).
void Trainer::build_roles() {
  for (const RoleRequest& request : stage_->roles()) {
    const std::string key = "roles." + request.name;
    KILN_CHECK(!request.from.empty(), "train.stage=", stage_->name(), " needs a ", request.name, " model: set ", key,
               " to a run or checkpoint folder");
    std::error_code ec;
    KILN_CHECK(std::filesystem::is_directory(request.from, ec), key, "=", request.from,
               " is not a folder; give a kiln run or checkpoint folder");
    const std::string checkpoint = resolve_checkpoint(request.from);
    const ExperimentConfig theirs = checkpoint_config(checkpoint);
    KILN_CHECK(theirs.data.tokenizer == config_.data.tokenizer, key, "=", request.from, " was trained with "
               "data.tokenizer=", theirs.data.tokenizer, " but this run reads data.tokenizer=", config_.data.tokenizer,
               "; every model of a run must read the same tokens: use a ", request.name, " model trained with ",
               config_.data.tokenizer);
    const std::string weights = checkpoint + "/model.safetensors";
    const SafetensorsFile file(weights);
    if (request.scalar_head)
      KILN_CHECK(file.contains("score.weight"), key, "=", request.from, ": ", weights, " has no scalar head "
                 "(score.weight); it is not a reward or value model: train one with train.stage=reward");
    // Their architecture; this run's precision and kernel settings (they train or run here).
    ModelConfig m = theirs.model;
    m.dtype = config_.model.dtype;
    m.matmul = config_.model.matmul;
    m.recompute = config_.model.recompute;
    m.attention_block = config_.model.attention_block;
    GptShape shape = GptShape::from_config(m, stage_->vocab_size(), parallel_.dims.tp, parallel_.tp_rank);
    shape.score_head = request.scalar_head;
    ModelRole& role = others_.emplace_back();
    role.name = request.name;
    role.from = request.from;
    role.model = std::make_unique<Gpt>(shape, device_, tp_ops_.get());
    const std::string embedding = role.model->params().get(Role::token_embedding).name;
    if (file.contains(embedding)) {
      const std::int64_t rows = file.shape(embedding).at(0);
      KILN_CHECK(rows == stage_->vocab_size(), key, "=", request.from, " has a vocabulary of ", rows,
                 " tokens but this run's tokenizer has ", stage_->vocab_size(), "; use a ", request.name,
                 " model of the same vocabulary");
    }
    load_model(*role.model, weights);
    if (request.trainable) {
      role.optim = config_.optim;
      if (request.lr > 0) role.optim.lr = request.lr;
      make_optimizer(role);
    }
  }
}

Trainer::~Trainer() = default;

void Trainer::say(const std::string& line) const {
  if (!options_.quiet && parallel_.is_main()) std::printf("%s\n", line.c_str());
}

// --init-from: a model.safetensors file, a kiln run or checkpoint folder (its model.safetensors),
// or a Hugging Face model folder (config.json and safetensors weights, checked against the
// config's architecture).
void Trainer::init_from(const std::string& source) {
  std::error_code ec;
  KILN_CHECK(std::filesystem::exists(source, ec), "--init-from ", source, " does not exist; pass a model.safetensors, "
             "a run or checkpoint folder, or a Hugging Face model folder");
  Gpt& model = *main_.model;
  if (is_hf_folder(source)) {
    const ModelConfig hf = hf_model_config(source);
    GptShape run = model.shape();
    run.tp_size = 1;  // compare whole models
    run.tp_rank = 0;
    check_same_architecture(GptShape::from_config(hf, hf.vocab_size), run, source);
    load_hf_weights(model, source);
    say("initial weights from the Hugging Face model " + source);
    return;
  }
  const std::string file = std::filesystem::is_directory(source, ec) ? resolve_checkpoint(source) + "/model.safetensors"
                                                                     : source;
  if (stage_->scalar_head() && !SafetensorsFile(file).contains("score.weight")) {
    // A reward model from a language model: the trunk from the file, the scalar head from the seed.
    model.init_weights(config_.train.seed, config_.model.init_std);
    load_model(model, file, {"score.weight"});
    say("initial weights from " + file + " (its trunk; the scalar head starts from train.seed)");
    return;
  }
  load_model(model, file);
  say("initial weights from " + file);
}

void Trainer::start_or_resume() {
  std::optional<std::string> checkpoint;
  const std::string& run_dir = config_.train.run_dir;
  // The folder is this run's until it ends: a second kiln train on it is refused before anything
  // is read or deleted.
  if (parallel_.is_main()) run_lock_ = std::make_unique<RunDirLock>(run_dir);
  if (options_.resume == "auto" || options_.resume == "latest") {
    checkpoint = find_latest_checkpoint(run_dir);
    KILN_CHECK(checkpoint || options_.resume == "auto", "--resume: train.run_dir=", run_dir, " holds no complete "
               "checkpoint to continue from (", run_dir, "/checkpoints); start afresh without --resume (with "
               "--overwrite if the folder keeps the metrics of a run that saved none), or set train.resume=auto to "
               "continue when there is a checkpoint and start afresh when there is none");
    if (!checkpoint) {
      std::int64_t records = 0;
      if (std::ifstream old(run_dir + "/metrics.jsonl"); old)
        for (std::string line; std::getline(old, line);) ++records;
      say(message("train.resume=auto: no checkpoint in ", run_dir, "; starting afresh",
                  records > 0 ? message(" (the ", records, " records of metrics.jsonl left by a run that saved no "
                                        "checkpoint are replaced)")
                              : std::string()));
    }
  } else if (!options_.resume.empty()) {
    checkpoint = resolve_checkpoint(options_.resume);
  }
  if (!checkpoint) {
    // train.resume=auto with nothing to resume from starts afresh, replacing what an early crash left.
    if (parallel_.is_main()) prepare_run_dir(run_dir, options_.overwrite || options_.resume == "auto");
    parallel_.world->barrier_untimed();
    if (!options_.init_from.empty()) {
      init_from(options_.init_from);
    } else if (!config_.train.init_from.empty()) {
      init_from(config_.train.init_from);
    } else {
      main_.model->init_weights(config_.train.seed, config_.model.init_std);
    }
    return;
  }
  // Every rank reads the (layout-independent) files and keeps what it needs.
  const ExperimentConfig saved = checkpoint_config(*checkpoint);
  KILN_CHECK(saved.data.tokenizer == config_.data.tokenizer, "checkpoint ", *checkpoint,
             " was trained with data.tokenizer=", saved.data.tokenizer, " but this run reads data.tokenizer=",
             config_.data.tokenizer, "; its embedding rows are that tokenizer's ids, so it cannot continue on another's: set data.tokenizer to "
             "the checkpoint's, or start a new run");
  check_same_model(saved.model, config_.model, *checkpoint);
  auto restore = [&](ModelRole& role) {
    Gpt& model = *role.model;
    AdamW& optimizer = *role.optimizer;
    load_model(model, *checkpoint + "/" + role.weights_file());
    Tensor m = Tensor::zeros(model.parameter_buffer().shape());
    Tensor v = Tensor::zeros(model.parameter_buffer().shape());
    optimizer.set_steps(load_optimizer(model, m, v, *checkpoint + "/" + role.optimizer_file()));
    optimizer.exp_avg().copy_from(m.view(optimizer.begin(), {optimizer.end() - optimizer.begin()}));
    optimizer.exp_avg_sq().copy_from(v.view(optimizer.begin(), {optimizer.end() - optimizer.begin()}));
  };
  restore(main_);
  for (ModelRole& role : others_)
    if (role.optimizer) restore(role);
  const TrainerState state =
      read_trainer_state(*checkpoint + "/trainer_state.json", stage_->name(), kTrainerStateVersion);
  check_state_matches_folder(*checkpoint, state.step);
  start_step_ = state.step;
  tokens_seen_ = state.tokens_seen;
  stage_->restore(state.stage_state);
  say(message(options_.resume == "auto" ? "train.resume=auto: " : "", "resumed from ", *checkpoint, " at step ",
              start_step_));
  if (state.threads != omp_get_max_threads())
    say(message("note: the checkpoint was written with ", state.threads, " thread(s) per rank and "
                "this run uses ", omp_get_max_threads(), "; it continues correctly but not "
                "bit-identically (set train.threads=", state.threads, " for that)"));
}

void Trainer::save_checkpoint(std::int64_t step) {
  // Every rank takes part in gathering tensor-parallel shards (and ZeRO-1 moments); the main rank writes.
  const bool main = parallel_.is_main();
  const std::string tmp = main ? begin_checkpoint(config_.train.run_dir, step) : std::string();
  std::map<std::string, std::string> metadata = stage_->model_metadata(*main_.model, ctx_);
  metadata["kiln_step"] = std::to_string(step);
  auto save = [&](ModelRole& role) {
    Gpt& model = *role.model;
    AdamW& optimizer = *role.optimizer;
    // Moments of the whole model: with ZeRO-1 each rank contributes its slice.
    const std::int64_t n = model.parameter_buffer().numel();
    Tensor m = optimizer.exp_avg(), v = optimizer.exp_avg_sq();
    if (optimizer.end() - optimizer.begin() != n) {  // ZeRO-1 (cpu only)
      m = Tensor::empty({n});
      v = Tensor::empty({n});
      parallel_.dp->all_gather(optimizer.exp_avg().f32(), m.f32(), n);
      parallel_.dp->all_gather(optimizer.exp_avg_sq().f32(), v.f32(), n);
    }
    save_model(model, tmp + "/" + role.weights_file(),
               role.name.empty() ? metadata : std::map<std::string, std::string>{{"kiln_step", std::to_string(step)}},
               main);
    save_optimizer(model, m, v, optimizer.steps(), tmp + "/" + role.optimizer_file(), main);
  };
  save(main_);
  for (ModelRole& role : others_)
    if (role.optimizer) save(role);
  if (main) {
    nlohmann::json roles = nlohmann::json::object();
    for (const ModelRole& role : others_)
      roles[role.name] = {{"from", role.from}, {"trained", role.optimizer != nullptr}};
    const nlohmann::json state = {{"format", "kiln-trainer-state"},
                                  {"version", kTrainerStateVersion},
                                  {"stage", stage_->name()},
                                  {"step", step},
                                  {"tokens_seen", tokens_seen_},
                                  {"seed", config_.train.seed},
                                  {"threads", omp_get_max_threads()},
                                  {"layout", {{"dp", parallel_.dims.dp}, {"tp", parallel_.dims.tp}}},
                                  {"roles", roles},
                                  {"stage_state", stage_->state()}};
    write_file_atomic(tmp + "/trainer_state.json", state.dump(2) + "\n");
    write_file_atomic(tmp + "/config.yaml", to_yaml(config_));
    // transformers' from_pretrained(checkpoint) reads it (GPT-2 and LLaMA-shaped models).
    GptShape whole = main_.model->shape();
    whole.tp_size = 1;
    whole.tp_rank = 0;
    write_hf_config(tmp, whole, stage_->eot());
    if (fault_now("slowsave", parallel_.rank, step))  // a test of a write longer than the timeout
      std::this_thread::sleep_for(std::chrono::duration<double>(2 * config_.parallel.timeout_s + 1));
    commit_checkpoint(config_.train.run_dir, step, tmp, config_.checkpoint.keep);
  }
  // Nobody runs ahead of a checkpoint that is not on disk yet. Writing a large one may take longer
  // than parallel.timeout_s, and the other ranks know rank 0 is writing: no deadline here.
  parallel_.world->barrier_untimed();
}

namespace {
std::string mib(double bytes) { return message(static_cast<long long>(std::llround(bytes / (1 << 20))), " MiB"); }
}  // namespace

void Trainer::print_memory_plan() {
  // Every model of the run: the trained one first, then the stage's other roles.
  double params = 0, grads = 0, optimizer = 0, activations = 0;
  std::string per_role;
  auto count = [&](ModelRole& role) {
    Gpt& model = *role.model;
    model.reserve_activations(config_.train.micro_batch, config_.train.seq_len);
    const Tensor& copy = model.bf16_weights();  // model.dtype bf16: the weights products read
    const double p = static_cast<double>(model.parameter_buffer().nbytes()) +
                     (copy.defined() ? static_cast<double>(copy.nbytes()) : 0.0);
    const double g = static_cast<double>(model.gradient_buffer().nbytes());
    const double o = role.optimizer ? static_cast<double>(role.optimizer->exp_avg().nbytes() +
                                                          role.optimizer->exp_avg_sq().nbytes()) +
                                          (role.grad_shard.defined() ? static_cast<double>(role.grad_shard.nbytes()) : 0.0)
                                    : 0.0;
    const double a = static_cast<double>(model.activation_bytes());
    params += p;
    grads += g;
    optimizer += o;
    activations += a;
    if (!others_.empty())
      per_role += message("\n  ", role.name.empty() ? stage_->name() == "reward" ? "reward (trained)" : "policy (trained)"
                                                    : role.name + (role.optimizer ? " (trained)" : " (frozen)"),
                          ": ", mib(p + g + o + a));
  };
  count(main_);
  for (ModelRole& role : others_) count(role);
  // cuda: the cuBLASLt workspace and kernel scratch (sort buffers, reduction partials); with
  // bf16 products on fp32 activations (model.matmul bf16), the rounded copies of the largest
  // product's inputs, the LM head's gradient (logits and activations).
  double workspace = 0.0;
  if (device_ == Device::cuda) {
    workspace = 40.0 * (1 << 20);
    const GptShape& s = main_.model->shape();
    if (s.bf16_matmul && !s.bf16) {
      const double rows = static_cast<double>(config_.train.micro_batch) * config_.train.seq_len;
      workspace += 2.0 * (rows * s.local_vocab() + rows * s.n_embd + static_cast<double>(s.local_vocab()) * s.n_embd);
    }
  }
  const double total = params + grads + optimizer + activations + workspace;
  planned_bytes_ = static_cast<std::int64_t>(total);
  say(message("memory plan (", device_name(device_), "): parameters ", mib(params), ", gradients ",
              mib(grads), ", optimizer ", mib(optimizer), ", activations ", mib(activations),
              device_ == Device::cuda ? ", workspace " + mib(workspace) : std::string(), " = ",
              mib(total), per_role));
}

void Trainer::print_measured_memory() {
  if (device_ != Device::cuda) return;
  std::size_t free_bytes = 0, total_bytes = 0;
  device::mem_info(&free_bytes, &total_bytes);
  const double used = static_cast<double>(total_bytes - free_bytes) - static_cast<double>(device_used_at_start_);
  measured_bytes_ = static_cast<std::int64_t>(used);
  const device::AllocatorStats stats = device::allocator_stats();
  say(message("memory after step 1 (cudaMemGetInfo): ", mib(used), " used by this run (plan ",
              mib(static_cast<double>(planned_bytes_)), ", ",
              std::llround(100.0 * (used - static_cast<double>(planned_bytes_)) / static_cast<double>(planned_bytes_)),
              "% off); allocator: ", mib(static_cast<double>(stats.peak_in_use)), " peak in use, ",
              mib(static_cast<double>(stats.reserved)), " reserved"));
}

double Trainer::grad_sum_squares(const Gpt& model, const float* grads, std::int64_t begin, std::int64_t end) const {
  // Over elements [begin, end) of the flat buffer (grads points at element begin). Parameters
  // every tensor-parallel rank holds whole count on one rank only, and so do replicated
  // key/value heads (on the first of their replicas).
  const KernelTable& k = kernels_for(device_);
  if (parallel_.dims.tp == 1) return k.sum_squares(grads, end - begin);  // one pass (one wait on cuda)
  const float* base = model.parameter_buffer().f32();
  const ParamTable& table = model.params();
  double total = 0.0;
  auto add = [&](std::int64_t from, std::int64_t to) {  // flat range, clipped to [begin, end)
    from = std::max(begin, from);
    to = std::min(end, to);
    if (from < to) total += k.sum_squares(grads + (from - begin), to - from);
  };
  for (const Parameter& p : model.parameters()) {
    if (p.split == Split::none && parallel_.tp_rank != 0) continue;
    const std::int64_t at = p.value.f32() - base;
    if (p.split != Split::qkv || !table.is_copy(p, table.kv_columns(p).first)) {
      add(at, at + p.value.numel());
      continue;
    }
    const std::int64_t cols = p.value.shape().back(), q_cols = table.kv_columns(p).first;
    for (std::int64_t r = 0; r < p.value.numel() / cols; ++r) add(at + r * cols, at + r * cols + q_cols);
  }
  return total;
}

AdamW::StepStats Trainer::optimizer_step(ModelRole& role, float lr) {
  Gpt& model = *role.model;
  AdamW& optimizer = *role.optimizer;
  Tensor& grads = model.gradient_buffer();
  if (role.grad_shard.defined()) {
    // ZeRO-1: sum this rank's slice over the replicas, update it, then share the parameters.
    Tensor& params = model.parameter_buffer();
    const std::int64_t n = params.numel();
    const auto t0 = std::chrono::steady_clock::now();
    parallel_.dp->reduce_scatter(grads.f32(), role.grad_shard.f32(), n);
    comm_wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double squares = grad_sum_squares(model, role.grad_shard.f32(), optimizer.begin(), optimizer.end());
    const double norm = std::sqrt(parallel_.tp->sum(parallel_.dp->sum(squares)));
    // The norm is the same on every rank, so every rank skips together and no slice changes.
    if (skip_nonfinite(norm)) return {norm, 0.0f};
    const AdamW::StepStats stats = optimizer.step(lr, role.grad_shard.f32(), norm);
    const auto t1 = std::chrono::steady_clock::now();
    parallel_.dp->all_gather(params.f32() + optimizer.begin(), params.f32(), n);
    comm_wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    comm_bytes_ += 2.0 * n * sizeof(float);  // gradients in, parameters out
    return stats;
  }
  if (role.sync) {
    const auto t0 = std::chrono::steady_clock::now();
    role.sync->finish();
    comm_wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    comm_bytes_ += static_cast<double>(grads.numel()) * sizeof(float);
  }
  double norm = std::sqrt(parallel_.tp->sum(grad_sum_squares(model, grads.f32(), 0, grads.numel())));
  // The replicas hold the same summed gradients, so their norms agree; one more collective makes
  // sure they skip together even if one replica's gradients went bad after the sum.
  if (config_.train.on_nonfinite == "skip" && parallel_.dims.dp > 1 &&
      parallel_.dp->sum(std::isfinite(norm) ? 0.0 : 1.0) > 0)
    norm = std::numeric_limits<double>::quiet_NaN();
  if (skip_nonfinite(norm)) return {norm, 0.0f};
  return optimizer.step(lr, grads.f32(), norm);
}

bool Trainer::skip_nonfinite(double value) const {
  return !std::isfinite(value) && config_.train.on_nonfinite == "skip";
}

// train.eval_tasks: every rank scores its share of the documents with the model as it is (tp 1:
// every rank holds the whole model); the scores are one process's, and the main rank logs them.
void Trainer::evaluate_tasks(std::int64_t step, MetricsLog* log) {
  Communicator& world = *parallel_.world;
  EvalOptions options;
  options.limit = config_.train.eval_limit;
  options.batch_rows = config_.train.micro_batch;
  options.ranks = {world.rank(), world.size(), [&](double* v, std::int64_t n) { world.sum(v, n); }};
  const EvalReport report = evaluate(*main_.model, *eval_tokenizer_, eval_tasks_, options);
  if (parallel_.is_main() && log) log->evaluation(step, report);
}

PeakFlops Trainer::job_peak_flops() const {
  const bool bf16 = main_.model->shape().bf16_matmul || main_.model->shape().bf16;
  const int world = parallel_.dims.world;
  if (config_.log.peak_flops > 0) {
    const int sharing = device_ == Device::cuda ? 1 : parallel_.world->local_size();
    return {config_.log.peak_flops * world / sharing,
            message("log.peak_flops = ", config_.log.peak_flops, device_ == Device::cuda ? " per GPU" : " per machine")};
  }
  // Every rank measures its own threads while the others measure theirs, so ranks sharing a
  // machine share its cores as they do in training; the job's peak is their sum.
  parallel_.world->barrier();
  PeakFlops mine = device_ == Device::cuda ? device::cuda_peak_flops(bf16) : cpu::peak_flops(bf16);
  if (device_ == Device::cpu) {
    // Each thread was timed in its own CPU time, as if it had a core; with more threads on the
    // machine than cores, they share them.
    const double threads = static_cast<double>(parallel_.world->local_size()) * omp_get_max_threads();
    mine.flops_per_s *= std::min(1.0, std::thread::hardware_concurrency() / threads);
  }
  const double total = parallel_.world->sum(mine.flops_per_s);
  return {total, world > 1 ? message(mine.how, ", summed over ", world, " ranks") : mine.how};
}

TrainResult Trainer::run() {
  namespace fs = std::filesystem;
  const bool main = parallel_.is_main();
  start_or_resume();
  std::map<std::string, Gpt*> roles;
  for (ModelRole& role : others_) roles[role.name] = role.model.get();
  stage_->attach(roles);
  if (main) fs::create_directories(config_.train.run_dir);  // resuming into a new folder
  if (main) write_file_atomic(config_.train.run_dir + "/config.yaml", to_yaml(config_));
  if (const nlohmann::json record = stage_->record(); main && !record.is_null())
    write_file_atomic(config_.train.run_dir + "/stage.json", record.dump(1) + "\n");
  const GptShape& shape = main_.model->shape();
  const std::int64_t max_steps = config_.train.max_steps;
  const int dp = parallel_.dims.dp;
  const std::int64_t global_batch = static_cast<std::int64_t>(config_.train.micro_batch) * config_.train.grad_accum * dp;
  const double flops_per_token = shape.flops_per_token(config_.train.seq_len);
  const PeakFlops job_peak = job_peak_flops();
  const double peak = job_peak.flops_per_s;
  say(message("model: ", shape.n_layer, " layers, ", shape.n_head, " heads, width ", shape.n_embd,
              ", vocab ", shape.vocab, " (padded ", shape.padded_vocab, "), ",
              shape.describe(), ", ", shape.num_params(), " parameters, ",
              flops_per_token / 1e6, " MFLOP/token"));
  say(parallel_.describe() + (dp > 1 ? message(config_.parallel.zero ? ", ZeRO-1" : "",
                                               main_.sync ? message(", ", main_.sync->num_buckets(), " gradient buckets") : "")
                                     : std::string()));
  say(message("batch: ", config_.train.micro_batch, " x ", config_.train.grad_accum, " accumulation x ",
              dp, " data-parallel = ", global_batch, " sequences of ", config_.train.seq_len,
              " tokens per step; ", omp_get_max_threads(), " thread(s) per rank"));
  say(stage_->describe());
  say(message("MFU against ", peak, " FLOP/s", shape.bf16_matmul || shape.bf16 ? " (bf16)" : " (fp32)",
              ", ", job_peak.how));
  say("run dir: " + config_.train.run_dir);
  print_memory_plan();

  // Under mpirun stdout is often a forwarded pseudo-terminal: "auto" draws no bar there.
  const bool bar = !options_.quiet && main &&
                   (config_.log.progress == "on" ||
                    (config_.log.progress == "auto" && isatty(STDOUT_FILENO) && parallel_.dims.world == 1));
  std::unique_ptr<MetricsLog> log;
  if (main)
    log = std::make_unique<MetricsLog>(config_.train.run_dir + "/metrics.jsonl", !options_.quiet, bar,
                                       max_steps, config_.log.every, start_step_);
  else if (config_.parallel.rank_logs)
    log = std::make_unique<MetricsLog>(message(config_.train.run_dir, "/rank_", parallel_.rank, ".jsonl"),
                                       false, false, max_steps, config_.log.every, start_step_);
  StepContext& ctx = ctx_;
  TrainResult result;
  result.last_step = start_step_;
  const std::int64_t last = options_.stop_after > 0 ? std::min(options_.stop_after, max_steps) : max_steps;
  double timed_seconds = 0.0;
  std::int64_t timed_tokens = 0;
  for (std::int64_t step = start_step_ + 1; step <= last; ++step) {
    inject_fault(parallel_.rank, step);
    const auto t0 = std::chrono::steady_clock::now();
    const float lr = learning_rate(config_.optim, step, max_steps);
    main_.model->zero_grad();
    for (ModelRole& role : others_)
      if (role.optimizer) role.model->zero_grad();
    const StepLoss loss = stage_->accumulate_gradients(*main_.model, ctx);
    if (fault_now("nangrad", parallel_.rank, step)) main_.model->gradient_buffer().f32()[0] = std::nanf("");
    comm_wait_s_ = comm_bytes_ = 0.0;
    const AdamW::StepStats stats = optimizer_step(main_, lr);
    std::map<std::string, double> extra = stage_->step_metrics();
    for (ModelRole& role : others_)
      if (role.optimizer)
        extra[role.name + "_grad_norm"] = optimizer_step(role, learning_rate(role.optim, step, max_steps)).grad_norm;
    const double loss_sum = ctx.sum_over_replicas(loss.loss_sum);
    const double tokens = ctx.sum_over_replicas(static_cast<double>(loss.tokens));
    // A non-finite gradient norm (a NaN or infinite loss gives one): train.on_nonfinite=stop ends
    // the run (AdamW refuses the update); skip leaves the weights as they were, logs it, and stops
    // after train.skip_limit such steps in a row. The norm is the same on every rank. (A step with
    // no token that counts has a loss of 0/0 and no gradient; it is not a fault.)
    const bool nonfinite = !std::isfinite(stats.grad_norm);
    skipped_in_a_row_ = nonfinite ? skipped_in_a_row_ + 1 : 0;
    KILN_CHECK(skipped_in_a_row_ <= config_.train.skip_limit, skipped_in_a_row_, " steps in a row (up to step ", step,
               ") had a non-finite loss or gradient norm and were skipped (train.skip_limit=", config_.train.skip_limit,
               "); training diverged: lower optim.lr, or resume from an earlier checkpoint");
    const auto processed = static_cast<std::int64_t>(loss.processed) * dp;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    tokens_seen_ += processed;
    StepRecord record;
    record.step = step;
    record.loss = loss_sum / tokens;
    record.lr = lr;
    record.grad_norm = stats.grad_norm;
    record.tokens_per_s = processed / seconds;
    record.mfu = flops_per_token * record.tokens_per_s / peak;
    record.step_seconds = seconds;
    record.tokens = tokens_seen_;
    record.comm_wait_s = comm_wait_s_;
    record.comm_bytes = comm_bytes_;
    record.extra = std::move(extra);
    if (nonfinite) {
      record.extra["skipped"] = 1.0;
      if (log) log->note(message("step ", step, " skipped: the gradient norm is ", stats.grad_norm,
                                 " (train.on_nonfinite=skip; ", skipped_in_a_row_, " in a row)"));
    }
    record.console = stage_->console_metrics();
    if (tp_ops_) {  // tensor-parallel reductions happen inside forward and backward
      const auto [bytes, seconds] = tp_ops_->take_stats();
      record.comm_bytes += bytes;
      record.comm_wait_s += seconds;
    }
    if (log) log->step(record);
    if (step == start_step_ + 1) print_measured_memory();
    result.losses.push_back(record.loss);
    if (step > start_step_ + 1 || last == start_step_ + 1) {
      timed_seconds += seconds;
      timed_tokens += processed;
    }
    if (config_.train.eval_every > 0 && (step % config_.train.eval_every == 0 || step == max_steps)) {
      if (auto val = stage_->validation_loss(*main_.model, ctx)) {
        result.last_val_loss = val;
        if (log) log->validation(step, *val, stage_->task_losses(), stage_->validation_metrics());
      }
      if (!eval_tasks_.empty()) evaluate_tasks(step, log.get());
    }
    const bool saved = (config_.checkpoint.every > 0 && step % config_.checkpoint.every == 0) || step == max_steps;
    if (saved) {
      save_checkpoint(step);
      if (log) log->note(message("checkpoint: step ", step));
    }
    result.last_step = step;
    ++result.steps_run;
    // A stop asked by signal on any rank (preemption.h): the ranks agree on it here, at the step
    // boundary (one collective), write a checkpoint together and end the run.
    if (step < last && parallel_.world->sum(stop_signal() != 0 ? 1.0 : 0.0) > 0) {
      if (!saved) save_checkpoint(step);
      result.stop_signal = stop_signal() != 0 ? stop_signal() : -1;
      if (log)
        log->note(message("stopped at step ", step, " by ", result.stop_signal > 0 ? signal_name(result.stop_signal)
                                                                                    : "a signal to another rank",
                          "; checkpoint: step ", step));
      break;
    }
  }
  if (timed_seconds > 0) {
    result.tokens_per_s = timed_tokens / timed_seconds;
    result.mfu = flops_per_token * result.tokens_per_s / peak;
  }
  run_lock_.reset();  // the folder is free for the next run as soon as this one has ended
  return result;
}

}  // namespace kiln
