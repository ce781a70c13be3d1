// kiln: the command line. Parses arguments (CLI11), calls one subcommand, and is the only place
// where an error becomes an exit code: 1 for kiln::Error (bad input, with a message naming the
// fix), 2 for usage errors, 3 for anything unexpected.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <string>

#include "core/eval/corpus_tasks.h"
#include "kernels/error.h"
#include "launch/commands.h"
#include "launch/scaling.h"
#include "launch/sweep.h"
#include "launch/submit.h"
#include "parallel/communicator.h"

namespace {

constexpr const char* kExamples = R"(
Examples:
  kiln tokenize --input /usr/share/games/fortunes --separator % --out data/fortunes
  kiln tokenizer train --input /usr/share/games/fortunes --separator % --vocab-size 8000 --out data/bpe8k
  kiln train configs/quickstart.yaml
  kiln train configs/quickstart.yaml optim.lr=1e-3 model.n_layer=6
  kiln train configs/quickstart.yaml --resume          # continue from the newest checkpoint
  mpirun -np 2 kiln train configs/quickstart.yaml      # data parallel over 2 ranks
  kiln sample --checkpoint runs/quickstart --prompt "The meaning of life" --top-k 40
  kiln sample --checkpoint runs/quickstart --prompt "Q: Why?" --batch 4 --ids   # 4 samples at once
  kiln config configs/quickstart.yaml train.max_steps=50   # print the resolved config
  kiln config                                              # every config key with its help
  kiln import path/to/hf-llama runs/llama-imported         # a Hugging Face model as a kiln checkpoint
  kiln export runs/quickstart exported/quickstart          # a run as a Hugging Face model folder
  kiln scaling fit runs/scaling/results.jsonl             # scaling laws with 95% intervals
  kiln scaling plan --fit runs/scaling/fit.json --flops 1e15 --base configs/quickstart.yaml
  kiln layout --pattern strided --seq 1024 --block 32 --window 4 --stride 4 --out strided.svg
)";

// Reports a fatal error. Under mpirun the other ranks may be waiting in a collective for this
// one, so the whole job is ended (MPI_Abort) rather than left to hang.
// Before the ranks communicate (a config error) every rank fails alike and rank 0 alone says so;
// later, a rank's error may be its own, and each rank that fails says which it is.
int fail(int code, const char* kind, const char* what) {
  std::fflush(stdout);
  const bool several = kiln::launched_with_several_ranks();
  const int rank = kiln::launcher_rank();
  if (!several)
    std::fprintf(stderr, "\nkiln: %s: %s\n", kind, what);
  else if (kiln::communication_started())
    std::fprintf(stderr, "\nkiln: rank %d: %s: %s\n", rank, kind, what);
  else if (rank == 0)
    std::fprintf(stderr, "\nkiln: %s: %s\n", kind, what);
  std::fflush(stderr);
  kiln::abort_all_ranks(code);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kiln: train GPT-style language models (pretraining on CPU; see docs/)"};
  app.footer(kExamples);
  app.require_subcommand(1);

  kiln::cli::TrainArgs train_args;
  auto* train = app.add_subcommand("train", "Train a model from a YAML experiment config");
  train->add_option("config", train_args.config, "Experiment YAML (configs/*.yaml)")->required();
  train->add_option("overrides", train_args.overrides, "Overrides: section.key=value ...");
  bool resume = false;
  std::string resume_from;
  train->add_flag("--resume", resume, "Continue from the newest checkpoint in train.run_dir");
  train->add_option("--resume-from", resume_from, "Continue from this checkpoint folder or run dir");
  train->add_flag("--overwrite", train_args.overwrite,
                  "Start afresh even if train.run_dir holds a run (its checkpoints and metrics are deleted)");
  train->add_option("--init-from", train_args.init_from,
                    "Initial weights: a model.safetensors, a run or checkpoint folder, or a Hugging Face model folder");
  train->add_option("--stop-after", train_args.stop_after,
                    "Stop after this step (as if interrupted), keeping the schedule of max_steps");
  train->footer(kExamples);

  kiln::TokenizeOptions tok;
  auto* tokenize = app.add_subcommand("tokenize", "Turn text files into token shards");
  tokenize->add_option("--input", tok.inputs, "Text files or folders")->required();
  tokenize->add_option("--out", tok.out_dir, "Output folder for train_*.bin, val_*.bin, manifest.json")->required();
  tokenize->add_option("--tokenizer", tok.tokenizer, "Tokenizer name: byte | gpt2")->capture_default_str();
  tokenize->add_option("--tokenizer-dir", tok.tokenizer_dir,
                       "gpt2: folder holding encoder.json and vocab.bpe (default: $KILN_GPT2_BPE_DIR)");
  tokenize->add_option("--separator", tok.separator, "A line equal to this separates documents (fortunes: %)");
  tokenize->add_option("--jsonl-field", tok.jsonl_field, "*.jsonl inputs: the field holding each document's text")->capture_default_str();
  tokenize->add_flag("--skip-bad-records", tok.skip_bad_records, "*.jsonl inputs: count and skip malformed records instead of failing");
  tokenize->add_option("--val-fraction", tok.val_fraction, "Fraction of documents for validation")->capture_default_str();
  tokenize->add_option("--seed", tok.seed, "Seed of the train/validation split")->capture_default_str();
  tokenize->add_option("--shard-tokens", tok.shard_tokens, "Most tokens per shard file")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 40))
      ->capture_default_str();

  kiln::cli::TokenizerTrainArgs bpe;
  bpe.corpus.command = "tokenizer train";
  auto* tokenizer = app.add_subcommand("tokenizer", "Tokenizer tools (train: learn a BPE vocabulary)");
  tokenizer->require_subcommand(1);
  auto* tokenizer_train = tokenizer->add_subcommand(
      "train", "Learn a byte-level BPE vocabulary from text; writes GPT-2's encoder.json and vocab.bpe");
  tokenizer_train->add_option("--input", bpe.corpus.inputs, "Text files, folders or glob patterns")->required();
  tokenizer_train->add_option("--vocab-size", bpe.vocab_size,
                              "Tokens including the 256 bytes and <|endoftext|> (at least 258)")->required();
  tokenizer_train->add_option("--out", bpe.out_dir, "Output folder for encoder.json and vocab.bpe (created if missing)")->required();
  tokenizer_train->add_option("--separator", bpe.corpus.separator, "A line equal to this separates documents (fortunes: %)");
  tokenizer_train->add_option("--jsonl-field", bpe.corpus.jsonl_field, "*.jsonl inputs: the field holding each document's text")->capture_default_str();
  tokenizer_train->add_flag("--skip-bad-records", bpe.corpus.skip_bad_records, "*.jsonl inputs: count and skip malformed records instead of failing");
  tokenizer_train->add_option("--min-frequency", bpe.min_frequency,
                              "Stop early when the most frequent pair occurs fewer times")->capture_default_str();
  tokenizer_train->add_option("--threads", bpe.threads, "Threads for reading and splitting text (0: OMP_NUM_THREADS)")->capture_default_str();

  kiln::cli::SampleArgs sample_args;
  auto* sample = app.add_subcommand("sample", "Generate text from a checkpoint");
  sample->add_option("--checkpoint", sample_args.checkpoint, "Checkpoint folder or run dir")->required();
  sample->add_option("--prompt", sample_args.prompts, "Text to continue (repeat for several prompts, decoded together)");
  sample->add_option("--batch", sample_args.batch, "Samples per prompt, decoded together (seeds --seed, --seed + 1, ...)")
      ->capture_default_str();
  sample->add_flag("--ids", sample_args.ids, "Print each sample's token ids after its text");
  sample->add_option("--device", sample_args.device, "Where to decode: cpu | cuda")->capture_default_str();
  sample->add_option("--tokenizer-dir", sample_args.tokenizer_dir,
                     "gpt2: folder holding encoder.json and vocab.bpe (default: the run's data.tokenizer_dir)");
  sample->add_option("--max-tokens", sample_args.sample.max_tokens, "Tokens to generate")->capture_default_str();
  sample->add_option("--temperature", sample_args.sample.temperature, "Softmax temperature; 0 = greedy")->capture_default_str();
  sample->add_option("--top-k", sample_args.sample.top_k, "Keep the k most likely tokens; 0 = all")->capture_default_str();
  sample->add_option("--top-p", sample_args.sample.top_p, "Nucleus sampling mass")->capture_default_str();
  sample->add_option("--seed", sample_args.sample.seed, "Sampling seed")->capture_default_str();
  bool no_stop = false;
  sample->add_flag("--no-stop", no_stop, "Do not stop at end-of-text");

  kiln::cli::EvalArgs eval_args;
  auto* eval = app.add_subcommand("eval", "Score a checkpoint on evaluation tasks (docs/evaluation.md)");
  eval->add_option("checkpoint", eval_args.checkpoint, "Run folder (its newest checkpoint) or checkpoint folder")
      ->required();
  eval->add_option("tasks", eval_args.task_files, "Task YAML files")->required();
  eval->add_option("--out", eval_args.out, "Results JSON (default: CHECKPOINT/eval.json)");
  eval->add_option("--batch", eval_args.batch, "Rows per forward pass and sequences per decode")->capture_default_str();
  eval->add_option("--limit", eval_args.limit, "Documents per task; 0 = all")->capture_default_str();
  eval->add_option("--num-fewshot", eval_args.num_fewshot, "Shots to score (overrides the tasks'), e.g. 0 1 4");
  eval->add_option("--device", eval_args.device, "Where to score: cpu | cuda")->capture_default_str();
  eval->add_option("--tokenizer-dir", eval_args.tokenizer_dir, "gpt2: folder holding encoder.json and vocab.bpe");

  kiln::cli::TasksArgs tasks_args;
  auto* tasks = app.add_subcommand("tasks", "Write the built-in synthetic task suite (12 tasks, 4 clusters)");
  tasks->add_option("dir", tasks_args.dir, "Folder to write")->required();
  tasks->add_option("--seed", tasks_args.seed, "Seed of the records")->capture_default_str();
  tasks->add_option("--train", tasks_args.train, "Training records per task")->capture_default_str();
  tasks->add_option("--val", tasks_args.val, "Validation records per task")->capture_default_str();
  tasks->add_option("--test", tasks_args.test, "Test records per task")->capture_default_str();
  tasks->add_option("--corpus", tasks_args.corpus_config,
                    "Instead of the suite, write in-context probes (word_end, next_word) from this config's corpus");

  kiln::cli::PrefsArgs prefs_args;
  auto* prefs = app.add_subcommand("prefs", "Write the preference world: SFT data, gold-ranked pairs and prompts (docs/rlhf.md)");
  prefs->add_option("dir", prefs_args.dir, "Folder to write")->required();
  prefs->add_option("--seed", prefs_args.world.seed, "Seed of the records")->capture_default_str();
  prefs->add_option("--sft", prefs_args.world.sft, "Instruction-tuning records")->capture_default_str();
  prefs->add_option("--pairs", prefs_args.world.pairs, "Training preference pairs")->capture_default_str();
  prefs->add_option("--val-pairs", prefs_args.world.val_pairs, "Held-out preference pairs")->capture_default_str();
  prefs->add_option("--prompts", prefs_args.world.prompts, "PPO training prompts")->capture_default_str();
  prefs->add_option("--val-prompts", prefs_args.world.val_prompts, "Held-out prompts")->capture_default_str();
  prefs->add_option("--sft-terse", prefs_args.world.sft_terse,
                    "Share of the SFT demonstrations that give the answer alone")->capture_default_str();
  prefs->add_option("--sft-verbose", prefs_args.world.sft_verbose,
                    "Share of the SFT demonstrations that pad the answer with filler (the rest are wrong)")
      ->capture_default_str();
  prefs->add_option("--label-noise", prefs_args.world.label_noise, "Probability that a training pair's labels are swapped")
      ->capture_default_str();
  prefs->add_option("--margin-scale", prefs_args.world.margin_scale,
                    "> 0: gold-ranked pairs carry a margin of this times their gold difference")
      ->capture_default_str();
  prefs->add_option("--tasks", prefs_args.world.tasks, "The suite's generation tasks to draw prompts from")
      ->delimiter(',')
      ->capture_default_str();

  kiln::cli::PolicyEvalArgs policy_eval_args;
  auto* policy_eval = app.add_subcommand("policy-eval", "Score a policy's responses by the gold rule and a reward model");
  policy_eval->add_option("checkpoint", policy_eval_args.checkpoint, "Run or checkpoint folder of the policy")->required();
  policy_eval->add_option("prompts", policy_eval_args.prompts, "Prompt records (JSONL: prompt, answer)")->required();
  policy_eval->add_option("--reward", policy_eval_args.reward, "Run or checkpoint folder of a reward model");
  policy_eval->add_option("--out", policy_eval_args.out, "Write the scores to this JSON file");
  policy_eval->add_option("--max-new-tokens", policy_eval_args.max_new_tokens, "Tokens a response may have")
      ->capture_default_str();
  policy_eval->add_option("--batch", policy_eval_args.batch, "Sequences decoded together")->capture_default_str();
  policy_eval->add_option("--device", policy_eval_args.device, "cpu | cuda")->capture_default_str();
  policy_eval->add_option("--temperature", policy_eval_args.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  policy_eval->add_option("--seed", policy_eval_args.seed, "Sampling seed (one stream per prompt)")->capture_default_str();

  kiln::cli::LayoutArgs layout_args;
  int per_head = 0;
  auto* layout = app.add_subcommand("layout", "Draw an attention block layout (SVG) and print its density");
  layout->add_option("--pattern", layout_args.pattern.kind, "dense | local | strided | fixed")->capture_default_str();
  layout->add_option("--seq", layout_args.seq_len, "Sequence length in tokens")->capture_default_str();
  layout->add_option("--block", layout_args.pattern.block, "Tokens per block")->capture_default_str();
  layout->add_option("--window", layout_args.pattern.window, "local/strided: recent blocks")->capture_default_str();
  layout->add_option("--stride", layout_args.pattern.stride, "strided period / fixed chunk, in blocks")->capture_default_str();
  layout->add_option("--summary", layout_args.pattern.summary, "fixed: summary blocks per chunk")->capture_default_str();
  layout->add_option("--global", layout_args.pattern.global, "leading global blocks")->capture_default_str();
  layout->add_option("--per-head", per_head, "fixed: 1 varies summaries by head")->capture_default_str();
  layout->add_option("--heads", layout_args.heads, "heads (for per-head layouts)")->capture_default_str();
  layout->add_option("--head", layout_args.head, "which head to draw")->capture_default_str();
  layout->add_option("--out", layout_args.out, "SVG file to write")->required();

  std::string config_path;
  std::vector<std::string> config_overrides;
  std::string import_from, import_to;
  auto* import = app.add_subcommand("import", "A Hugging Face model folder (GPT-2, LLaMA) as a kiln checkpoint folder");
  import->add_option("hf_dir", import_from, "Folder with config.json and safetensors weights")->required();
  import->add_option("out_dir", import_to, "Checkpoint folder to write (config.yaml, model.safetensors)")->required();

  std::string export_from, export_to;
  double shard_mb = 2000.0;
  auto* export_cmd = app.add_subcommand("export", "A kiln run or checkpoint as a Hugging Face model folder");
  export_cmd->add_option("source", export_from, "Run folder (its newest checkpoint) or checkpoint folder")->required();
  export_cmd->add_option("out_dir", export_to, "Folder to write")->required();
  export_cmd->add_option("--shard-mb", shard_mb, "Largest weights file in MiB; past it, shards and an index")
      ->capture_default_str();

  kiln::cli::SubmitArgs submit_args;
  auto* submit = app.add_subcommand("submit", "Submit a training run as a Slurm batch job (docs/parallel.md)");
  submit->add_option("config", submit_args.config, "Experiment YAML")->required();
  submit->add_option("overrides", submit_args.overrides, "Overrides: section.key=value ...");
  submit->add_option("--nodes", submit_args.nodes, "Nodes")->capture_default_str();
  submit->add_option("--gpus-per-node", submit_args.gpus_per_node, "GPUs per node, one rank each (train.device=cuda)");
  submit->add_option("--ranks-per-node", submit_args.ranks_per_node, "Ranks per node of a CPU job (default 1)");
  submit->add_option("--cpus-per-task", submit_args.cpus_per_task, "CPUs per rank (its OpenMP threads)");
  submit->add_option("--time", submit_args.time, "Time limit (Slurm's --time, e.g. 04:00:00)");
  submit->add_option("--partition", submit_args.partition, "Slurm partition");
  submit->add_option("--account", submit_args.account, "Slurm account");
  submit->add_option("--job-name", submit_args.job_name, "Job name (default kiln-<run folder>)");
  submit->add_option("--signal-seconds", submit_args.signal_seconds,
                     "Seconds before the time limit at which SIGUSR1 asks the run to checkpoint and requeue")
      ->capture_default_str();
  submit->add_option("--array", submit_args.array, "A file of override lines: one job-array task per line");
  submit->add_option("--sbatch-arg", submit_args.sbatch_args, "An extra #SBATCH option, e.g. --qos=high (repeatable)");
  submit->add_option("--kiln", submit_args.kiln, "The kiln binary the job runs (default: this one)");
  submit->add_flag("--dry-run", submit_args.dry_run, "Print the sbatch script instead of submitting it");

  kiln::cli::SweepArgs sweep_args;
  auto* sweep = app.add_subcommand("sweep", "Train a grid of model sizes x token (or compute) budgets; record each run");
  sweep->add_option("sweep", sweep_args.sweep, "Sweep YAML (configs/scaling/sweep.yaml)")->required();
  sweep->add_flag("--dry-run", sweep_args.dry_run, "List the points and their compute; train nothing");
  sweep->add_option("--array-out", sweep_args.array_out,
                    "Write the unfinished points as a kiln submit --array file instead of training them");
  sweep->add_option("--launcher", sweep_args.launcher, "Prefix of each training command, e.g. \"mpirun -np 2\"");

  auto* scaling = app.add_subcommand("scaling", "Scaling laws from a sweep's results: fit, plan (docs/scaling.md)");
  scaling->require_subcommand(1);
  kiln::cli::ScalingFitArgs fit_args;
  auto* scaling_fit = scaling->add_subcommand("fit", "Fit Kaplan's and Chinchilla's laws (Approaches 2 and 3) with intervals");
  scaling_fit->add_option("results", fit_args.results, "results.jsonl of kiln sweep")->required();
  scaling_fit->add_option("--out", fit_args.out, "Write the fit here (default: fit.json beside the results)");
  scaling_fit->add_option("--bootstrap", fit_args.bootstrap, "Resamples of the runs for 95% intervals (0: none)")
      ->capture_default_str();
  scaling_fit->add_option("--seed", fit_args.seed, "Seed of the resampling")->capture_default_str();
  scaling_fit->add_option("--delta", fit_args.delta, "Huber's delta on log-loss")->capture_default_str();
  kiln::cli::ScalingPlanArgs plan_args;
  auto* scaling_plan = scaling->add_subcommand("plan", "The compute-optimal model size and tokens, and a config for them");
  scaling_plan->add_option("--fit", plan_args.fit, "fit.json of kiln scaling fit")->required();
  scaling_plan->add_option("--flops", plan_args.flops, "Training compute in FLOPs (C = 6 N D)");
  scaling_plan->add_option("--params", plan_args.params, "Non-embedding parameters N");
  scaling_plan->add_option("--tokens", plan_args.tokens, "Training tokens D");
  scaling_plan->add_option("--base", plan_args.base, "A config to fill in with the planned shape and steps");
  scaling_plan->add_option("--out", plan_args.out, "Write the planned config here (beside --base)");

  auto* config = app.add_subcommand("config", "Print a resolved config, or every key with no file");
  config->add_option("config", config_path, "Experiment YAML");
  config->add_option("overrides", config_overrides, "Overrides: section.key=value ...");

  // CLI11 answers an unknown command with "A subcommand is required"; name it instead.
  if (argc > 1 && argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (const CLI::App* command : app.get_subcommands({})) {
      names += (names.empty() ? "" : ", ") + command->get_name();
      known = known || command->get_name() == argv[1];
    }
    if (!known) {
      std::fprintf(stderr, "kiln: unknown command '%s'; the commands are %s (kiln --help shows examples)\n",
                   argv[1], names.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  int code = 0;
  try {
    if (*train) {
      if ((resume || !resume_from.empty()) && train_args.overwrite)
        throw kiln::Error("--resume and --overwrite contradict each other: --resume continues the run in "
                          "train.run_dir, --overwrite deletes it and starts afresh; pass one of them");
      train_args.resume = !resume_from.empty() ? resume_from : (resume ? "latest" : "");
      code = kiln::cli::train(train_args);
    }
    if (*tokenize) code = kiln::cli::tokenize(tok);
    if (*tokenizer_train) code = kiln::cli::tokenizer_train(bpe);
    if (*sample) {
      sample_args.sample.stop_at_eot = !no_stop;
      code = kiln::cli::sample(sample_args);
    }
    if (*config) code = kiln::cli::show_config(config_path, config_overrides);
    if (*sweep) code = kiln::cli::sweep(sweep_args);
    if (*scaling_fit) code = kiln::cli::scaling_fit(fit_args);
    if (*scaling_plan) code = kiln::cli::scaling_plan(plan_args);
    if (*submit) code = kiln::cli::submit(submit_args);
    if (*eval) code = kiln::cli::eval(eval_args);
    if (*tasks) {
      if (!tasks_args.corpus_config.empty() && tasks->count("--test") == 0)
        tasks_args.test = kiln::CorpusTaskOptions{}.test;  // the probes score 200 records per task
      code = kiln::cli::tasks(tasks_args);
    }
    if (*prefs) code = kiln::cli::prefs(prefs_args);
    if (*policy_eval) code = kiln::cli::policy_eval(policy_eval_args);
    if (*import) code = kiln::cli::import_hf(import_from, import_to);
    if (*export_cmd) code = kiln::cli::export_hf(export_from, export_to, shard_mb);
    if (*layout) {
      layout_args.pattern.per_head = per_head != 0;
      code = kiln::cli::layout(layout_args);
    }
  } catch (const kiln::Error& e) {
    code = fail(1, "error", e.what());
  } catch (const std::exception& e) {
    code = fail(3, "unexpected error", e.what());
  }
  kiln::finalize_communication();
  return code;
}
