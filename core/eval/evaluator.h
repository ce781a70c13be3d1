// The evaluator: scores a model on evaluation tasks (core/eval/task.h) for every template and
// every number of shots, and summarises the spread over templates (prompt sensitivity).
//
//  - multiple_choice, by rank classification: each option's log-likelihood given the prompt,
//    summed over the option's tokens (target_delimiter + option). acc: the highest-scoring option
//    is a gold one; acc_norm: the same with each score divided by the option's length in
//    characters (target_delimiter included), as lm-evaluation-harness normalises.
//  - generate_until, by greedy batched decoding until end-of-text, a stop string or max_gen_toks;
//    exact_match after normalisation: the text before the first stop string, with leading and
//    trailing whitespace removed, equals the gold answer so trimmed (case-sensitive);
//    stopped_at_eot: the answer ended with end-of-text within max_gen_toks (a tuned model
//    should stop by itself).
//
//  - loglikelihood_rolling: the log-likelihood of each document's doc_to_text as a whole, after
//    end-of-text, in windows of context/2 new tokens that each see up to context/2 earlier
//    tokens; perplexity = exp(-sum / tokens) and bits_per_byte = -sum / (bytes ln 2), over all
//    the task's documents (k-shot does not apply).
//
// k-shot prompts: k exemplars drawn without replacement from the task's fewshot_dataset with
// Rng(fewshot_seed, document index), each written doc_to_text + target_delimiter + its answer,
// joined by fewshot_delimiter before the document's own text. A prompt longer than the model's
// context keeps its newest tokens (counted in `truncated`).
//
// Each request is scored in its own row (causal attention, no packing), so a score does not
// depend on which other requests share its batch; batch_rows only sets how many rows one forward
// pass holds.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/data/tokenizer.h"
#include "core/eval/task.h"
#include "core/model/gpt.h"

namespace kiln {

// A context and a continuation, as token ids; its score is log P(continuation | context).
struct LoglikelihoodRequest {
  std::vector<std::int32_t> context;
  std::vector<std::int32_t> continuation;
};

// Summed log-probability of each request's continuation, batch_rows rows per forward pass
// (requests sorted by length, so rows of a pass have similar lengths). Contexts are cut from the
// left to fit the model's context; `truncated` (optional) counts those.
std::vector<double> loglikelihoods(Gpt& model, const std::vector<LoglikelihoodRequest>& requests, int batch_rows,
                                   std::int64_t* truncated = nullptr);

// The rolling requests of one text's tokens (loglikelihood_rolling): windows of context/2 new
// tokens, the first after end-of-text, each with up to context/2 earlier tokens as its context.
// Their log-likelihoods sum to the text's.
std::vector<LoglikelihoodRequest> rolling_requests(const std::vector<std::int32_t>& ids, std::int32_t eot,
                                                   int context);

// Ranks sharing an evaluation: rank r scores documents r, r + size, ... of every task, template
// and k, and the per-document results are summed over ranks, each one contributed by one rank and
// zeros by the others, so every rank ends with the same scores as one process alone, to the bit.
// `sum` sums values in place over the ranks (Communicator::sum over MPI, say).
struct EvalRanks {
  int rank = 0, size = 1;
  std::function<void(double* values, std::int64_t n)> sum;
};

struct EvalOptions {
  int batch_rows = 16;          // rows per forward pass (multiple choice) and sequences per decode
  std::int64_t limit = 0;       // score only the first `limit` documents of each task (0: all)
  std::vector<int> num_fewshot;  // overrides every task's num_fewshot when not empty
  EvalRanks ranks;              // default: this process alone
};

// One task, template and k: the metric values and the documents they average.
struct EvalScore {
  std::string task, cluster, template_name, output_type;
  int k = 0;
  std::int64_t docs = 0;
  std::int64_t truncated = 0;
  std::map<std::string, double> metrics;  // acc, acc_norm | exact_match, stopped_at_eot | perplexity, bits_per_byte
};

// The spread over a task's templates of one metric at one k.
struct EvalSpread {
  std::string task, metric;
  int k = 0;
  double mean = 0, std = 0, min = 0, max = 0;  // std: population standard deviation
  int templates = 0;
};

struct EvalReport {
  std::vector<EvalScore> scores;
  std::vector<EvalSpread> spreads;
  double seconds = 0;
  // For examples/s and tokens/s: over every rank (the times are this rank's).
  std::int64_t mc_docs = 0, generated_tokens = 0;
  double mc_seconds = 0, gen_seconds = 0;
  nlohmann::json to_json() const;
  std::string table() const;  // the per-template table and the spread table, for the console
};

EvalReport evaluate(Gpt& model, const Tokenizer& tokenizer, const std::vector<EvalTask>& tasks,
                    const EvalOptions& options);

}  // namespace kiln
