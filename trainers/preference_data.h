// Preference pairs for the reward and dpo stages (docs/rlhf.md): {prompt (or instruction/input),
// chosen, rejected, margin (optional number)} records read from JSONL, rendered through the
// built-in templates (the prompt, then each response and its end-of-text), checked, and packed
// micro-batch by micro-batch: a micro-batch's chosen and rejected examples share rows (each
// example attends only to itself, positions restart), so a response's score or log-probability
// does not depend on what it is packed with.
//
// Order: each pass over the pairs is a seeded permutation; an optimizer step reads the next
// micro_batch x grad_accum x replicas pairs, replica r's micro-batch a taking those at
// (a x replicas + r) x micro_batch, so a step reads the same pairs whatever the layout.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/data/instruct.h"
#include "core/data/packing.h"
#include "core/data/tokenizer.h"

namespace kiln {

struct PairBatch {
  Batch batch;                     // chosen_0, rejected_0, chosen_1, ... packed
  std::vector<Placement> chosen;   // where each pair's chosen example landed
  std::vector<Placement> rejected;
  std::vector<double> margins;     // each pair's margin (0 when the record has none)
  // The flat index (row * seq_len + column) of an example's last token (its end-of-text).
  std::int64_t last_token(const Placement& p) const {
    return static_cast<std::int64_t>(p.row) * batch.seq_len + p.offset + p.length - 1;
  }
};

class PreferenceData {
 public:
  // Reads and renders every pair of `path`; errors name the file and line of a bad record
  // (missing field, identical responses, longer than seq_len).
  PreferenceData(const std::string& path, const Tokenizer& tokenizer, int seq_len, std::uint64_t seed, bool use_margin);

  std::size_t size() const { return pairs_.size(); }
  const std::string& path() const { return path_; }
  // Pairs [first, first + count) of the file's order, cut at the end.
  std::vector<std::size_t> indices(std::size_t first, std::size_t count) const;
  // Pairs `indices` (into the file's order) packed into one batch.
  PairBatch batch(const std::vector<std::size_t>& indices) const;

  // The training order: the pairs of replica `replica`'s micro-batch `micro` (of grad_accum) of
  // the next step; advance() moves past the step (a new seeded pass when one is used up).
  std::vector<std::size_t> step_pairs(int micro, int micro_batch, int grad_accum, int replica, int replicas) const;
  void advance(int micro_batch, int grad_accum, int replicas);
  nlohmann::json state() const { return {{"pass", pass_}, {"next", next_}, {"pairs", pairs_.size()}}; }
  void restore(const nlohmann::json& state);
  // Rendered pairs, for tests and tools.
  const PreferencePair& pair(std::size_t i) const { return pairs_[i]; }

 private:
  void start_pass(std::uint64_t pass);

  std::string path_;
  std::vector<PreferencePair> pairs_;
  std::vector<double> margins_;
  PackOptions pack_;
  std::uint64_t seed_;
  std::uint64_t pass_ = 0;
  std::uint64_t next_ = 0;             // position in the pass's order of the next step's first pair
  std::vector<std::size_t> order_;     // the pass's permutation
};

}  // namespace kiln
