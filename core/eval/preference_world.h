// A preference world with a known truth, for reward modelling, PPO and DPO experiments
// (`kiln prefs DIR`, docs/rlhf.md). Prompts come from generation tasks of the built-in suite
// (core/eval/suite.h); responses are made from each prompt's answer in four kinds: the answer
// alone, the answer with filler after it ("... hope that helps!"), a wrong answer, and a wrong
// answer with filler. The gold rule ranks any response to a prompt:
//
//   gold = 1 (if the response is the answer, possibly followed by more text) - 0.02 per character
//          beyond the answer's length, at most 1 in all  (so in [-1, 1])
//
// correctness first, brevity second. Preference pairs are two responses of different kinds
// ranked by the gold rule, with optional label noise; a length-gamed set ranks the same pairs by
// length instead (a reward model trained on it can be gamed: the negative control). Every record
// keeps the prompt's `answer`, so anything a policy generates can be scored against the truth.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

// The gold reward of `response` (the text a policy wrote, without its end-of-text) to a prompt
// whose answer is `answer`.
double gold_reward(const std::string& answer, const std::string& response);
// Whether `response` gives `answer`: it starts with the answer, and no letter or digit follows it.
bool gold_correct(const std::string& answer, const std::string& response);

struct WorldOptions {
  std::uint64_t seed = 4321;
  int sft = 10000;          // instruction-tuning records
  int pairs = 20000;        // training preference pairs
  int val_pairs = 300;      // held-out preference pairs
  int prompts = 1000;       // PPO training prompts
  int val_prompts = 500;    // held-out prompts (gold evaluation)
  double label_noise = 0.0; // probability that a training pair's labels are swapped
  // > 0: each gold-ranked pair carries "margin": margin_scale x (gold of chosen - gold of rejected),
  // which the reward stage subtracts inside the sigmoid (reward.use_margin): pairs that differ in
  // correctness must be separated further than pairs that differ in padding.
  double margin_scale = 0.0;
  // The SFT data's responses by kind: answer alone, with filler, wrong (alone or with filler).
  // The demonstrators pad most answers, as chatty writers do, while the gold rule (like the
  // labellers) prefers brevity: the SFT policy leaves room that preference tuning can recover.
  double sft_terse = 0.15, sft_verbose = 0.8;  // the rest (5%) is wrong
  // The suite's generation tasks it draws prompts from. By default the four whose answer is (a
  // form of) a piece of the prompt: a small model can learn to check them, so the pairs measure
  // preference learning rather than arithmetic or spelling (a 4-layer byte model tuned on all
  // six string and extraction tasks reached 43% correct, and its reward model 68% accuracy).
  std::vector<std::string> tasks = {"uppercase", "first_word", "last_word", "find_number"};
};

// Writes into dir: sft_train.jsonl and sft_val.jsonl ({prompt, completion, task, answer}),
// mixture_sft.yaml and mixture_sft_val.yaml (their mixtures), prefs_train.jsonl and
// prefs_val.jsonl ({prompt, chosen, rejected, task, answer, gold_chosen, gold_rejected}),
// prefs_length_train.jsonl (the same kind of pairs, the longer response chosen), prompts_train.jsonl
// and prompts_val.jsonl ({prompt, task, answer}). Held-out files draw from other streams than the
// training files. Returns the files written.
std::vector<std::string> write_preference_world(const std::string& dir, const WorldOptions& options);

}  // namespace kiln
