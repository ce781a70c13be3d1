// What the preference stages share about prompts and responses (docs/rlhf.md): prompt records
// read and checked, responses sampled from a policy by batched decoding, sequences scored by a
// reward model at their last token, and a policy scored on held-out prompts against the gold
// rule (core/eval/preference_world.h) and a reward model.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/data/tokenizer.h"
#include "core/model/decode.h"
#include "core/model/gpt.h"
#include "core/model/heads.h"

namespace kiln {

// A prompt record {prompt (or instruction/input), answer (optional)}, rendered like the prompts
// of instruction tuning.
struct PromptRecord {
  std::vector<std::int32_t> ids;
  std::string answer;       // the gold rule's answer, or ""
  bool has_answer = false;
  std::string where;        // file:line
};

// Reads prompt records; a prompt that leaves fewer than max_new_tokens of room in seq_len is an
// error naming its record.
std::vector<PromptRecord> load_prompts(const std::string& path, const Tokenizer& tokenizer, int seq_len,
                                       int max_new_tokens);

// A reward model's score normalisation, stored in its model.safetensors metadata by the reward
// stage (kiln_score_mean, kiln_score_std): identity when absent.
struct ScoreNorm {
  double mean = 0.0, std = 1.0;
  bool stored = false;
};
ScoreNorm read_score_norm(const std::string& checkpoint_or_run);

// The scalar head's value at the last token of each sequence (each run alone in its own row;
// rows of seq_len, `rows` to a forward pass).
std::vector<double> last_token_scores(Gpt& model, ScalarHead& head, const std::vector<std::vector<std::int32_t>>& seqs,
                                      int seq_len, int rows);

// The model the decoder (which runs whole models) samples from: `model` itself, or under tensor
// parallelism a whole copy gathered from its shards into `whole` (a collective over the
// tensor-parallel group; the same on every rank). `config` and `vocab` shape the copy.
Gpt& gathered_whole(Gpt& model, const ModelConfig& config, int vocab, std::unique_ptr<Gpt>& whole);

// Sampled responses: tokens (without the end-of-text) and whether the end-of-text was chosen.
struct Responses {
  std::vector<std::vector<std::int32_t>> tokens;
  std::vector<bool> ended;
  // Per response token (and the end-of-text when chosen): the log-probability of the chosen
  // token and the entropy of the distribution it was drawn from, at the sampling temperature,
  // from the decoder's logits.
  std::vector<std::vector<double>> logprobs, entropies;
};
Responses sample_responses(Gpt& policy, const std::vector<std::vector<std::int32_t>>& prompts,
                           const SampleOptions& options, std::int32_t eot, const std::vector<std::uint64_t>& seeds);

// A policy on held-out prompts: its responses (greedy, or sampled at `temperature` with a seed
// per prompt from `seed`, the same whatever the layout), scored by the gold rule (prompts with an
// answer) and, given a reward model, by its normalised score. Each replica takes every
// replicas-th prompt; sums go through sum_many.
struct PolicyScores {
  double gold = std::numeric_limits<double>::quiet_NaN();     // mean gold reward
  double correct = std::numeric_limits<double>::quiet_NaN();  // fraction answered correctly
  double length = 0.0;     // mean response length in tokens
  double eot_rate = 0.0;   // fraction of responses that ended with end-of-text
  double proxy = std::numeric_limits<double>::quiet_NaN();    // mean normalised reward-model score
  double proxy_std = std::numeric_limits<double>::quiet_NaN();  // its standard deviation over the responses
  std::map<std::string, double> as_map() const;
};
PolicyScores score_policy(Gpt& policy, const Tokenizer& tokenizer, const std::vector<PromptRecord>& prompts,
                          int max_new_tokens, int seq_len, int rows, int replica, int replicas,
                          const std::function<void(double*, std::int64_t)>& sum_many, Gpt* reward = nullptr,
                          ScoreNorm norm = {}, float temperature = 0.0f, std::uint64_t seed = 0);

}  // namespace kiln
