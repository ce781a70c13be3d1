// Preference pairs, rendered and packed (preference_data.h).
#include "trainers/preference_data.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/data/jsonl.h"
#include "core/rng.h"
#include "kernels/error.h"

namespace kiln {

PreferenceData::PreferenceData(const std::string& path, const Tokenizer& tokenizer, int seq_len, std::uint64_t seed,
                               bool use_margin)
    : path_(path), seed_(seed) {
  pack_.seq_len = seq_len;
  pack_.eot_id = tokenizer.eot();
  pack_.pad_id = pack_.eot_id == 0 ? 1 : 0;
  std::vector<PreferenceRecord> records;
  std::vector<std::string> where;
  read_jsonl(path, JsonlOptions{}, [&](const nlohmann::json& json, const std::string& at) {
    PreferenceRecord record = parse_preference_record(json, at);
    KILN_CHECK(record.chosen != record.rejected, at, ": 'chosen' and 'rejected' are the same response; a pair "
               "must prefer one response over another (drop the record)");
    double margin = 0.0;
    if (use_margin && json.contains("margin")) {
      KILN_CHECK(json["margin"].is_number() && std::isfinite(json["margin"].get<double>()), at,
                 ": field 'margin' must be a finite number");
      margin = json["margin"].get<double>();
    }
    records.push_back(std::move(record));
    where.push_back(at);
    margins_.push_back(margin);
  });
  KILN_CHECK(!records.empty(), path, " holds no preference records");
  const InstructRenderer renderer(tokenizer, TemplateSet::builtin(), RenderOptions{seed, 0, 0});
  for (std::size_t i = 0; i < records.size(); ++i) {
    PreferencePair pair = renderer.render_preference(records, i);
    const std::size_t longest = std::max(pair.chosen.size(), pair.rejected.size());
    KILN_CHECK(pair.prompt_tokens < static_cast<std::size_t>(seq_len) && longest <= static_cast<std::size_t>(seq_len),
               where[i], ": the prompt (", pair.prompt_tokens, " tokens) and its longer response come to ", longest,
               " tokens, more than train.seq_len=", seq_len, "; shorten the record or raise train.seq_len");
    pairs_.push_back(std::move(pair));
  }
  start_pass(0);
}

void PreferenceData::start_pass(std::uint64_t pass) {
  order_.resize(pairs_.size());
  std::iota(order_.begin(), order_.end(), std::size_t{0});
  shuffle(order_, Rng(seed_, 0x5052454650415353ull + pass));  // "PREFPASS"
  pass_ = pass;
}

std::vector<std::size_t> PreferenceData::step_pairs(int micro, int micro_batch, int grad_accum, int replica,
                                                    int replicas) const {
  const std::size_t per_step = static_cast<std::size_t>(micro_batch) * grad_accum * replicas;
  KILN_CHECK(per_step <= pairs_.size(), path_, " has ", pairs_.size(), " pairs, fewer than one step reads (train.micro_batch x "
             "train.grad_accum x data-parallel ranks = ", per_step, "); lower them or add pairs");
  std::vector<std::size_t> out;
  const std::size_t first = next_ + (static_cast<std::size_t>(micro) * replicas + replica) * micro_batch;
  for (int j = 0; j < micro_batch; ++j) out.push_back(order_[first + j]);
  return out;
}

void PreferenceData::advance(int micro_batch, int grad_accum, int replicas) {
  const std::size_t per_step = static_cast<std::size_t>(micro_batch) * grad_accum * replicas;
  next_ += per_step;
  if (next_ + per_step > pairs_.size()) {  // the rest of the pass is too short for a step
    next_ = 0;
    start_pass(pass_ + 1);
  }
}

void PreferenceData::restore(const nlohmann::json& state) {
  KILN_CHECK(state.contains("pass") && state.contains("next") && state.contains("pairs") &&
                 state["next"].is_number_unsigned() && state["pass"].is_number_unsigned(),
             "trainer_state.json: stage_state has no preference data position; it is damaged or from another stage");
  KILN_CHECK(state["pairs"].get<std::size_t>() == pairs_.size(), "the checkpoint was trained on ",
             state["pairs"].get<std::size_t>(), " preference pairs and ", path_, " now holds ", pairs_.size(),
             "; resume with the same data, or start a new run with --init-from the checkpoint");
  start_pass(state["pass"].get<std::uint64_t>());
  next_ = state["next"].get<std::uint64_t>();
  KILN_CHECK(next_ < pairs_.size(), "trainer_state.json: stage_state.next ", next_, " is past the ", pairs_.size(),
             " pairs of ", path_, "; the file is damaged or belongs to another run");
}

std::vector<std::size_t> PreferenceData::indices(std::size_t first, std::size_t count) const {
  std::vector<std::size_t> out;
  for (std::size_t i = first; i < std::min(pairs_.size(), first + count); ++i) out.push_back(i);
  return out;
}

PairBatch PreferenceData::batch(const std::vector<std::size_t>& indices) const {
  std::vector<Example> examples;
  PairBatch out;
  for (std::size_t i : indices) {
    examples.push_back(pairs_.at(i).chosen);
    examples.push_back(pairs_.at(i).rejected);
    out.margins.push_back(margins_.at(i));
  }
  Packed packed = pack_examples(examples, pack_);
  for (std::size_t j = 0; j < indices.size(); ++j) {
    out.chosen.push_back(packed.placements[2 * j]);
    out.rejected.push_back(packed.placements[2 * j + 1]);
  }
  out.batch = std::move(packed.batch);
  return out;
}

}  // namespace kiln
