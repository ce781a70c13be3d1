// kiln train / tokenize / tokenizer train / sample / config.
#include "launch/commands.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/checkpoint/atomic_file.h"
#include "core/checkpoint/hugging_face.h"
#include "core/checkpoint/model_io.h"
#include "core/checkpoint/run_dir.h"
#include "core/checkpoint/safetensors.h"
#include "core/data/bpe_train.h"
#include "core/data/tokenizer.h"
#include "core/eval/corpus_tasks.h"
#include "core/eval/evaluator.h"
#include "core/eval/suite.h"
#include "kernels/device.h"
#include "parallel/communicator.h"
#include "parallel/layout.h"
#include "trainers/preemption.h"
#include "trainers/rollout.h"
#include "trainers/trainer.h"

namespace kiln::cli {

namespace {

// A run stopped by a signal: where it stands, and under Slurm a requeue of this job, which then
// continues from the checkpoint (kiln submit's jobs set train.resume=auto).
void report_stop(const TrainResult& result, const std::string& run_dir) {
  const auto checkpoint = find_latest_checkpoint(run_dir);
  std::printf("stopped by %s at step %lld; checkpoint %s. Continue with kiln train --resume (a run with "
              "train.resume=auto continues by itself); exit status %d\n",
              result.stop_signal > 0 ? signal_name(result.stop_signal) : "a signal to another rank",
              static_cast<long long>(result.last_step), checkpoint ? checkpoint->c_str() : "(none)", kStopExitStatus);
  std::fflush(stdout);
  const char* job = std::getenv("SLURM_JOB_ID");
  if (job == nullptr || std::getenv("KILN_NO_REQUEUE") != nullptr) return;
  const std::string command = message("scontrol requeue ", job, " 2>&1");
  const int status = run_shell_command(command);
  if (status == 0)
    std::printf("requeued Slurm job %s: it continues from the checkpoint when it starts again\n", job);
  else
    std::printf("kiln: warning: `%s` failed (status %d); the job was not requeued. Submit it again (kiln submit) "
                "and it continues from the checkpoint\n", command.c_str(), status);
  std::fflush(stdout);
}

}  // namespace

int train(const TrainArgs& args) {
  install_stop_handlers();  // first: a stop asked while starting up is honoured after step 1
  ExperimentConfig config = load_config(args.config, args.overrides);
  TrainOptions options;
  // train.resume=auto continues when there is a checkpoint (unless --overwrite asks for a fresh start).
  options.resume = args.resume.empty() && config.train.resume == "auto" && !args.overwrite ? "auto" : args.resume;
  options.init_from = args.init_from;
  options.stop_after = args.stop_after;
  options.overwrite = args.overwrite;
  ParallelContext parallel =
      make_parallel_context(make_world_communicator(config.parallel.timeout_s, true), config);
  const std::string run_dir = config.train.run_dir;
  if (config.train.resume == "auto" && args.overwrite && launcher_rank() == 0)
    std::printf("--overwrite: starting afresh in %s; train.resume=auto does not apply\n", run_dir.c_str());
  Trainer trainer(std::move(config), options, parallel);
  const TrainResult result = trainer.run();
  if (result.stop_signal != 0) {
    if (parallel.is_main()) report_stop(result, run_dir);
    return kStopExitStatus;
  }
  if (!parallel.is_main()) return 0;
  if (result.steps_run == 0) {
    std::printf("nothing to do: the run is already at step %lld of train.max_steps\n",
                static_cast<long long>(result.last_step));
    return 0;
  }
  std::printf("done: %lld steps, final loss %.4f", static_cast<long long>(result.steps_run), result.losses.back());
  if (result.last_val_loss) std::printf(", validation loss %.4f", *result.last_val_loss);
  std::printf(", %.0f tok/s, MFU %.1f%%\n", result.tokens_per_s, 100.0 * result.mfu);
  return 0;
}

int tokenize(const TokenizeOptions& options) {
  const TokenizeReport report = tokenize_corpus(options);
  std::printf("tokenized %llu documents: %llu train tokens, %llu validation tokens -> %s\n",
              static_cast<unsigned long long>(report.documents),
              static_cast<unsigned long long>(report.train_tokens),
              static_cast<unsigned long long>(report.val_tokens), options.out_dir.c_str());
  for (const auto& shard : report.shards) std::printf("  %s\n", shard.c_str());
  if (report.skipped_records > 0)
    std::printf("skipped %llu malformed JSONL record(s) (--skip-bad-records)\n",
                static_cast<unsigned long long>(report.skipped_records));
  return 0;
}

int tokenizer_train(const TokenizerTrainArgs& args) {
  check_bpe_vocab_size(args.vocab_size);  // before reading any text
  KILN_CHECK(!args.out_dir.empty(), "tokenizer train: no output folder; pass --out DIR");
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
  };
  const auto start = Clock::now();
  const BpeCorpusCounts corpus = count_corpus_pieces(args.corpus, args.threads);
  const double read_s = seconds_since(start);
  std::size_t used_files = 0;  // files that gave text: binary folder members are also in skipped
  for (const CorpusFile& file : corpus.files)
    used_files += std::binary_search(corpus.skipped.begin(), corpus.skipped.end(), file.path) ? 0 : 1;
  std::printf("read %llu documents, %llu bytes from %zu files in %.2f s (%zu distinct pieces)\n",
              static_cast<unsigned long long>(corpus.counts.documents()),
              static_cast<unsigned long long>(corpus.counts.bytes()), used_files, read_s,
              corpus.counts.pieces().size());
  if (!corpus.skipped.empty())
    std::printf("skipped %zu links or binary files\n", corpus.skipped.size());
  if (corpus.skipped_records > 0)
    std::printf("skipped %llu malformed JSONL record(s) (--skip-bad-records)\n",
                static_cast<unsigned long long>(corpus.skipped_records));

  const auto learn_start = Clock::now();
  BpeTrainOptions options;
  options.min_frequency = args.min_frequency;
  options.threads = args.threads;
  const BpeVocabulary vocab = train_bpe(corpus.counts, args.vocab_size, options);
  std::printf("learned %zu merges in %.2f s: vocab size %d (256 bytes + %zu merges + %s)\n",
              vocab.merges.size(), seconds_since(learn_start), vocab.vocab_size(),
              vocab.merges.size(), std::string(kEotText).c_str());
  if (vocab.stop == BpeVocabulary::Stop::kMinFrequency)
    std::printf("stopped early at vocab size %d of %d: no pair occurs %llu times or more "
                "(--min-frequency)\n", vocab.vocab_size(), args.vocab_size,
                static_cast<unsigned long long>(args.min_frequency));
  if (vocab.stop == BpeVocabulary::Stop::kNoPairs)
    std::printf("stopped early at vocab size %d of %d: every piece of the corpus is one token\n",
                vocab.vocab_size(), args.vocab_size);
  for (const std::string& path : write_bpe_files(vocab, args.out_dir))
    std::printf("wrote %s\n", path.c_str());
  std::printf("total %.2f s; use it with: kiln tokenize --tokenizer gpt2 --tokenizer-dir %s ...\n",
              seconds_since(start), args.out_dir.c_str());
  return 0;
}

namespace {

// A checkpoint's model (fp32 activations on either device, bf16 matmuls if the run trained with
// them) and its tokenizer, for sampling and evaluation.
struct Loaded {
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Gpt> model;
  std::string dir;
};

Loaded load_for_inference(const std::string& checkpoint, const std::string& device_name,
                          const std::string& tokenizer_dir) {
  Loaded l;
  l.dir = resolve_checkpoint(checkpoint);
  const ExperimentConfig config = checkpoint_config(l.dir);
  l.tokenizer = make_tokenizer(config.data.tokenizer, tokenizer_dir.empty() ? config.data.tokenizer_dir : tokenizer_dir);
  KILN_CHECK(device_name == "cpu" || device_name == "cuda", "--device ", device_name, " is not cpu or cuda");
  const Device device = device_name == "cuda" ? Device::cuda : Device::cpu;
  KILN_CHECK(device == Device::cpu || device::cuda_available(), "--device cuda, but ", device::cuda_description());
  GptShape shape = GptShape::from_config(config.model, l.tokenizer->vocab_size());
  shape.bf16 = false;
  shape.recompute = false;
  shape.score_head = SafetensorsFile(l.dir + "/model.safetensors").contains("score.weight");  // a reward model
  l.model = std::make_unique<Gpt>(shape, device);
  load_model(*l.model, l.dir + "/model.safetensors");
  return l;
}

}  // namespace

int sample(const SampleArgs& args) {
  KILN_CHECK(args.batch >= 1, "--batch ", args.batch, " must be at least 1");
  Loaded loaded = load_for_inference(args.checkpoint, args.device, args.tokenizer_dir);
  const auto& tokenizer = loaded.tokenizer;
  Gpt& model = *loaded.model;
  const std::vector<std::string> texts = args.prompts.empty() ? std::vector<std::string>{""} : args.prompts;
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<std::uint64_t> seeds;
  for (const std::string& text : texts) {
    std::vector<std::int32_t> ids = tokenizer->encode_ids(text);
    if (ids.empty()) ids.push_back(static_cast<std::int32_t>(tokenizer->eot()));
    for (int k = 0; k < args.batch; ++k) {
      prompts.push_back(ids);
      seeds.push_back(args.sample.seed + static_cast<std::uint64_t>(k));
    }
  }
  auto print_ids = [](const std::vector<std::int32_t>& ids) {
    std::printf("ids:");
    for (auto id : ids) std::printf(" %d", id);
    std::printf("\n");
  };
  auto text_of = [&](std::int32_t id) { return tokenizer->decode({static_cast<std::uint32_t>(id)}); };
  Decoder decoder(model);
  const auto eot = static_cast<std::int32_t>(tokenizer->eot());
  if (prompts.size() == 1) {
    // One sequence: print as tokens arrive. The byte tokenizer may split a UTF-8 character
    // across tokens, so bytes are written raw and the terminal reassembles them.
    std::printf("%s", texts[0].c_str());
    std::fflush(stdout);
    const auto out = decoder.generate(prompts, args.sample, eot, seeds, [&](int, std::int32_t id) {
      const std::string piece = text_of(id);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    });
    std::printf("\n");
    if (args.ids) print_ids(out[0]);
    return 0;
  }
  const auto out = decoder.generate(prompts, args.sample, eot, seeds);
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::printf("== sample %zu (prompt %zu, seed %llu)\n%s", i + 1, i / args.batch + 1,
                static_cast<unsigned long long>(seeds[i]), texts[i / args.batch].c_str());
    std::string text;
    for (auto id : out[i]) text += text_of(id);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::printf("\n");
    if (args.ids) print_ids(out[i]);
  }
  return 0;
}

int eval(const EvalArgs& args) {
  KILN_CHECK(args.batch >= 1, "--batch ", args.batch, " must be at least 1");
  KILN_CHECK(!args.task_files.empty(), "kiln eval needs at least one task file");
  std::vector<EvalTask> tasks;
  for (const std::string& file : args.task_files)
    for (EvalTask& t : load_eval_tasks(file)) tasks.push_back(std::move(t));
  // Under mpirun the ranks share the documents (the scores equal one process's); rank 0 writes.
  const std::unique_ptr<Communicator> world = make_world_communicator(ParallelConfig{}.timeout_s, false);
  if (args.device == "cuda" && world->size() > 1) device::use_device(gpu_of_rank(*world));
  omp_set_num_threads(threads_per_rank(0, *world));  // ranks on one machine share its cores
  Loaded loaded = load_for_inference(args.checkpoint, args.device, args.tokenizer_dir);
  EvalOptions options;
  options.batch_rows = args.batch;
  options.limit = args.limit;
  options.num_fewshot = args.num_fewshot;
  options.ranks = {world->rank(), world->size(), [&](double* v, std::int64_t n) { world->sum(v, n); }};
  const EvalReport report = evaluate(*loaded.model, *loaded.tokenizer, tasks, options);
  if (world->rank() != 0) return 0;
  nlohmann::json j = report.to_json();
  j["checkpoint"] = loaded.dir;
  j["task_files"] = args.task_files;
  // Default: beside the run's checkpoints (pruning old checkpoints keeps it), named by checkpoint.
  const std::filesystem::path ckpt(loaded.dir);
  const std::string out = !args.out.empty() ? args.out
                          : ckpt.parent_path().filename() == "checkpoints"
                              ? (ckpt.parent_path().parent_path() / ("eval_" + ckpt.filename().string() + ".json")).string()
                              : loaded.dir + "/eval.json";
  write_file_atomic(out, j.dump(1) + "\n");
  std::printf("%s\n", report.table().c_str());
  std::string speed;  // the rates the JSON holds
  const nlohmann::json& rate = j["throughput"];
  if (report.mc_docs > 0) speed += message(", multiple choice ", rate["multiple_choice_examples_per_s"].get<double>(), " examples/s");
  if (report.generated_tokens > 0) speed += message(", generation ", rate["generated_tokens_per_s"].get<double>(), " tokens/s");
  std::printf("%.1f s%s; results: %s\n", report.seconds, speed.c_str(), out.c_str());
  return 0;
}

int tasks(const TasksArgs& args) {
  if (!args.corpus_config.empty()) {
    const ExperimentConfig config = load_config(args.corpus_config, {});
    KILN_CHECK(!config.data.corpus.empty(), args.corpus_config, ": data.corpus is not set; --corpus makes the probes "
               "from the text a config trains on (a config reading token shards has none)");
    CorpusTaskOptions options;
    options.inputs = {config.data.corpus};
    options.separator = config.data.separator;
    options.jsonl_field = config.data.jsonl_field;
    options.seed = args.seed;
    options.train = args.train;
    options.test = args.test;
    const auto files = write_corpus_tasks(args.dir, options);
    std::printf("wrote %zu files to %s: word_end and next_word from %s (%d exemplar and %d scored records each; "
                "k = 0, 1, 2, 4, 8)\n", files.size(), args.dir.c_str(), config.data.corpus.c_str(), args.train, args.test);
    return 0;
  }
  const auto files = write_task_suite(args.dir, args.seed, {args.train, args.val, args.test});
  std::printf("wrote %zu files to %s: 12 tasks in the clusters", files.size(), args.dir.c_str());
  for (const std::string& c : suite_clusters()) std::printf(" %s", c.c_str());
  std::printf(" (records, seen templates, evaluation task files, mixtures)\n");
  return 0;
}

int prefs(const PrefsArgs& args) {
  const auto files = write_preference_world(args.dir, args.world);
  std::printf("wrote %zu files to %s: SFT records and mixtures, preference pairs (gold-ranked and length-ranked), "
              "prompts (docs/rlhf.md)\n", files.size(), args.dir.c_str());
  return 0;
}

int policy_eval(const PolicyEvalArgs& args) {
  KILN_CHECK(args.batch >= 1 && args.max_new_tokens >= 1, "--batch and --max-new-tokens must be at least 1");
  Loaded policy = load_for_inference(args.checkpoint, args.device, "");
  const int seq_len = policy.model->shape().context;
  const std::vector<PromptRecord> prompts = load_prompts(args.prompts, *policy.tokenizer, seq_len, args.max_new_tokens);
  Loaded reward;
  ScoreNorm norm;
  if (!args.reward.empty()) {
    reward = load_for_inference(args.reward, args.device, "");
    KILN_CHECK(reward.model->params().has(Role::score_weight), "--reward ", args.reward, " has no scalar head "
               "(score.weight); it is not a reward model: train one with train.stage=reward");
    KILN_CHECK(reward.tokenizer->name() == policy.tokenizer->name() &&
                   reward.tokenizer->vocab_size() == policy.tokenizer->vocab_size(),
               "--reward ", args.reward, " reads the ", reward.tokenizer->name(), " tokenizer and the policy the ",
               policy.tokenizer->name(), "; a reward model must read the policy's tokens");
    norm = read_score_norm(args.reward);
  }
  const PolicyScores s = score_policy(*policy.model, *policy.tokenizer, prompts, args.max_new_tokens, seq_len,
                                      args.batch, 0, 1, [](double*, std::int64_t) {}, reward.model.get(), norm,
                                      args.temperature, args.seed);
  nlohmann::json j = s.as_map();
  j["checkpoint"] = policy.dir;
  j["prompts"] = args.prompts;
  j["n"] = prompts.size();
  j["temperature"] = args.temperature;
  if (!args.reward.empty()) j["reward"] = reward.dir;
  if (!args.out.empty()) write_file_atomic(args.out, j.dump(1) + "\n");
  std::printf("%s\n", j.dump(1).c_str());
  return 0;
}

int layout(const LayoutArgs& args) {
  const BlockLayout layout = build_layout(args.pattern, args.seq_len, args.heads);
  KILN_CHECK(args.head >= 0 && args.head < args.heads, "--head ", args.head, " must be below --heads ", args.heads);
  const int n = layout.num_blocks, cell = n <= 32 ? 16 : n <= 128 ? 6 : 3, margin = 24;
  const int size = n * cell;
  std::string svg = message("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", size + 2 * margin,
                            "\" height=\"", size + 2 * margin + 20, "\" font-family=\"sans-serif\" font-size=\"12\">\n",
                            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  svg += message("<text x=\"", margin, "\" y=\"16\">", args.pattern.describe(), ", T=", args.seq_len,
                 args.heads > 1 ? message(", head ", args.head) : std::string(), ", density ",
                 static_cast<int>(layout.density() * 1000) / 10.0, "% (rows: query blocks, columns: key blocks)</text>\n");
  for (int q = 0; q < n; ++q)
    for (int k = 0; k <= q; ++k) {
      const bool on = layout.allows(args.head, q, k);
      svg += message("<rect x=\"", margin + k * cell, "\" y=\"", margin + 8 + q * cell, "\" width=\"", cell,
                     "\" height=\"", cell, "\" fill=\"", on ? "#1f4e9c" : "#e4e8ee", "\"/>\n");
    }
  svg += "</svg>\n";
  write_file_atomic(args.out, svg);
  std::printf("%s: %d x %d blocks of %d tokens, %zu active, density %.4f of causal -> %s\n",
              args.pattern.describe().c_str(), n, n, layout.block, layout.cols.size(), layout.density(),
              args.out.c_str());
  return 0;
}

int show_config(const std::string& config, const std::vector<std::string>& overrides) {
  if (config.empty()) {
    std::printf("%s", config_reference().c_str());
    return 0;
  }
  std::printf("%s", to_yaml(load_config(config, overrides)).c_str());
  return 0;
}

int import_hf(const std::string& hf_dir, const std::string& out_dir) {
  KILN_CHECK(is_hf_folder(hf_dir), hf_dir, " is not a Hugging Face model folder (no config.json)");
  KILN_CHECK(!out_dir.empty(), "kiln import: no output folder; pass HF_DIR OUT_DIR");
  ExperimentConfig config;
  config.model = hf_model_config(hf_dir);
  // GPT-2's vocabulary is GPT-2's BPE; other tokenizers are the user's to name.
  const bool gpt2_bpe = config.model.vocab_size == 50257;
  if (gpt2_bpe) config.data.tokenizer = "gpt2";
  config.train.run_dir = "runs/" + std::filesystem::path(out_dir).filename().string();
  config.train.seq_len = std::min(config.train.seq_len, config.model.context);
  Gpt model(GptShape::from_config(config.model, config.model.vocab_size));
  load_hf_weights(model, hf_dir);
  std::filesystem::create_directories(out_dir);
  write_file_atomic(out_dir + "/config.yaml", to_yaml(config));
  save_model(model, out_dir + "/model.safetensors", {{"kiln.imported_from", hf_dir}});
  std::printf("imported %s: %s, %d layers, %d heads (%d key/value), width %d, vocab %d, %s, %lld parameters\n",
              hf_dir.c_str(), config.model.arch.c_str(), config.model.n_layer, config.model.n_head,
              model.shape().kv_heads(), config.model.n_embd, config.model.vocab_size, model.shape().describe().c_str(),
              static_cast<long long>(model.shape().num_params()));
  std::printf("  %s/config.yaml       its model section (set data.* and train.* for a run)\n", out_dir.c_str());
  std::printf("  %s/model.safetensors kiln's names and layouts\n", out_dir.c_str());
  if (!gpt2_bpe)
    std::printf("  data.tokenizer: the model's vocabulary (%d) is not GPT-2's; set data.tokenizer for its tokenizer\n",
                config.model.vocab_size);
  std::printf("next: kiln sample --checkpoint %s ...   or   kiln train %s/config.yaml --init-from %s\n", out_dir.c_str(),
              out_dir.c_str(), hf_dir.c_str());
  return 0;
}

int export_hf(const std::string& source, const std::string& out_dir, double shard_mb) {
  KILN_CHECK(!out_dir.empty(), "kiln export: no output folder; pass RUN_OR_CHECKPOINT OUT_DIR");
  const std::string checkpoint = resolve_checkpoint(source);
  const ExperimentConfig config = checkpoint_config(checkpoint);
  const auto tokenizer = make_tokenizer(config.data.tokenizer, config.data.tokenizer_dir);
  Gpt model(GptShape::from_config(config.model, tokenizer->vocab_size()));
  load_model(model, checkpoint + "/model.safetensors");
  std::vector<std::string> files = kiln::export_hf(model, out_dir, static_cast<int>(tokenizer->eot()),
                                                   static_cast<std::int64_t>(shard_mb * (1 << 20)));
  if (config.data.tokenizer == "gpt2") {
    // transformers' GPT2Tokenizer reads the same two files under other names.
    namespace fs = std::filesystem;
    const fs::path from(config.data.tokenizer_dir);
    fs::copy_file(from / "encoder.json", fs::path(out_dir) / "vocab.json", fs::copy_options::overwrite_existing);
    fs::copy_file(from / "vocab.bpe", fs::path(out_dir) / "merges.txt", fs::copy_options::overwrite_existing);
    const nlohmann::json tokenizer_config = {{"tokenizer_class", "GPT2Tokenizer"},
                                             {"bos_token", "<|endoftext|>"},
                                             {"eos_token", "<|endoftext|>"},
                                             {"unk_token", "<|endoftext|>"},
                                             {"add_prefix_space", false},
                                             {"model_max_length", config.model.context}};
    write_file_atomic(out_dir + "/tokenizer_config.json", tokenizer_config.dump(2) + "\n");
    files.insert(files.end(), {"vocab.json", "merges.txt", "tokenizer_config.json"});
  }
  std::printf("exported %s (%s) to %s:\n", checkpoint.c_str(), model.shape().describe().c_str(), out_dir.c_str());
  for (const std::string& f : files) std::printf("  %s\n", f.c_str());
  if (config.data.tokenizer != "gpt2")
    std::printf("(data.tokenizer=%s has no Hugging Face tokenizer files; token ids are kiln's)\n",
                config.data.tokenizer.c_str());
  std::printf("in Python: AutoModelForCausalLM.from_pretrained(\"%s\")\n", out_dir.c_str());
  return 0;
}

}  // namespace kiln::cli
