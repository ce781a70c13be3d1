// The preference world (preference_world.h).
#include "core/eval/preference_world.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include <nlohmann/json.hpp>

#include "core/eval/generated_files.h"
#include "core/eval/suite.h"
#include "core/rng.h"
#include "kernels/error.h"

namespace kiln {

bool gold_correct(const std::string& answer, const std::string& response) {
  if (answer.empty() || response.compare(0, answer.size(), answer) != 0) return false;
  return response.size() == answer.size() || !std::isalnum(static_cast<unsigned char>(response[answer.size()]));
}

double gold_reward(const std::string& answer, const std::string& response) {
  const double extra = std::max<double>(0.0, static_cast<double>(response.size()) - static_cast<double>(answer.size()));
  return std::clamp((gold_correct(answer, response) ? 1.0 : 0.0) - 0.02 * extra, -1.0, 1.0);
}

namespace {

// Text after an answer that adds nothing: the gold rule charges it by length.
const std::vector<std::string> kFillers = {" - hope that helps!", ", that is my answer.", " (I am quite sure.)",
                                           ", I think.", " and that is all there is to it.", " Done!"};

enum class Kind { terse, verbose, wrong, wrong_verbose };

// A world item: a suite prompt and its answer, and the draws that make its responses.
struct Item {
  SuiteItem item;
  Rng rng;
  std::uint64_t next = 0;
  std::uint64_t u(std::uint64_t n) { return rng.u64(next++) % n; }
  double uniform() { return rng.uniform(next++); }
};

Item draw_item(const WorldOptions& o, std::uint64_t stream, std::uint64_t index) {
  const Rng rng(o.seed, stream);
  const std::string& task = o.tasks[rng.u64(2 * index) % o.tasks.size()];
  return {suite_item(task, o.seed, stream, index), Rng(o.seed ^ 0x9e3779b97f4a7c15ull, stream * 1000003ull + index)};
}

// A wrong answer: another item's answer of the same task, or the answer with a letter added.
std::string wrong_answer(Item& it) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    const SuiteItem other = suite_item(it.item.task, it.rng.seed(), 977 + it.u(1000), it.u(1u << 30));
    if (!gold_correct(it.item.answer, other.answer)) return other.answer;
  }
  return it.item.answer + "x";
}

std::string response_of(Item& it, Kind kind) {
  const bool wrong = kind == Kind::wrong || kind == Kind::wrong_verbose;
  std::string r = wrong ? wrong_answer(it) : it.item.answer;
  if (kind == Kind::verbose || kind == Kind::wrong_verbose) r += kFillers[it.u(kFillers.size())];
  return r;
}

nlohmann::json base_record(const Item& it) {
  return {{"prompt", it.item.prompt}, {"task", it.item.task}, {"answer", it.item.answer}};
}

std::string sft_lines(const WorldOptions& o, std::uint64_t stream, int count) {
  std::string lines;
  for (int i = 0; i < count; ++i) {
    Item it = draw_item(o, stream, static_cast<std::uint64_t>(i));
    const double u = it.uniform();
    const Kind kind = u < o.sft_terse ? Kind::terse : u < o.sft_terse + o.sft_verbose ? Kind::verbose
                      : it.u(2) ? Kind::wrong : Kind::wrong_verbose;
    nlohmann::json r = base_record(it);
    r["completion"] = response_of(it, kind);
    lines += r.dump() + "\n";
  }
  return lines;
}

// Pairs of responses of two different kinds, ranked by the gold rule (by_length: the longer
// one chosen), labels swapped with probability noise.
std::string pair_lines(const WorldOptions& o, std::uint64_t stream, int count, double noise, bool by_length,
                       double margin_scale) {
  std::string lines;
  for (int i = 0; i < count; ++i) {
    Item it = draw_item(o, stream, static_cast<std::uint64_t>(i));
    std::string a, b;
    double ga = 0.0, gb = 0.0;
    bool ranked = false;
    for (int attempt = 0; attempt < 16 && !ranked; ++attempt) {
      const auto ka = static_cast<Kind>(it.u(4));
      const auto kb = static_cast<Kind>((static_cast<std::uint64_t>(ka) + 1 + it.u(3)) % 4);
      a = response_of(it, ka);
      b = response_of(it, kb);
      ga = gold_reward(it.item.answer, a);
      gb = gold_reward(it.item.answer, b);
      ranked = a != b && (by_length ? a.size() != b.size() : ga != gb);
    }
    KILN_CHECK(ranked, "preference world: no rankable pair for item ", i, " of stream ", stream);
    bool a_first = by_length ? a.size() > b.size() : ga > gb;
    if (noise > 0.0 && it.uniform() < noise) a_first = !a_first;
    nlohmann::json r = base_record(it);
    r["chosen"] = a_first ? a : b;
    r["rejected"] = a_first ? b : a;
    r["gold_chosen"] = a_first ? ga : gb;
    r["gold_rejected"] = a_first ? gb : ga;
    if (margin_scale > 0) r["margin"] = margin_scale * std::abs(ga - gb);
    lines += r.dump() + "\n";
  }
  return lines;
}

std::string prompt_lines(const WorldOptions& o, std::uint64_t stream, int count) {
  std::string lines;
  for (int i = 0; i < count; ++i) lines += base_record(draw_item(o, stream, static_cast<std::uint64_t>(i))).dump() + "\n";
  return lines;
}

}  // namespace

std::vector<std::string> write_preference_world(const std::string& dir, const WorldOptions& o) {
  KILN_CHECK(o.sft >= 1 && o.pairs >= 1 && o.val_pairs >= 1 && o.prompts >= 1 && o.val_prompts >= 1,
             "the preference world needs at least one record of each kind");
  KILN_CHECK(o.margin_scale >= 0.0 && std::isfinite(o.margin_scale), "--margin-scale ", o.margin_scale,
             " must be a finite number >= 0");
  KILN_CHECK(o.label_noise >= 0.0 && o.label_noise <= 0.5, "--label-noise ", o.label_noise,
             " must be in [0, 0.5] (the probability that a pair's labels are swapped)");
  KILN_CHECK(o.sft_terse >= 0.0 && o.sft_verbose >= 0.0 && o.sft_terse + o.sft_verbose <= 1.0,
             "the SFT response mix must be probabilities that sum to at most 1");
  KILN_CHECK(!o.tasks.empty(), "the preference world needs at least one task");
  const std::vector<std::string> known = suite_generation_tasks();
  for (const std::string& t : o.tasks)
    KILN_CHECK(std::find(known.begin(), known.end(), t) != known.end(), "the preference world draws from the suite's "
               "generation tasks; '", t, "' is not one of them");
  GeneratedFiles out(dir);
  auto write = [&](const std::string& name, const std::string& text) { out.write(name, text); };
  write("sft_train.jsonl", sft_lines(o, 100, o.sft));
  write("sft_val.jsonl", sft_lines(o, 101, std::max(1, o.sft / 10)));
  const std::string seed = std::to_string(o.seed);
  write("mixture_sft.yaml", "seed: " + seed + "\ntasks:\n  - {name: world, file: sft_train.jsonl}\n");
  write("mixture_sft_val.yaml", "seed: " + seed + "\ntasks:\n  - {name: world, file: sft_val.jsonl}\n");
  write("prefs_train.jsonl", pair_lines(o, 102, o.pairs, o.label_noise, false, o.margin_scale));
  write("prefs_val.jsonl", pair_lines(o, 103, o.val_pairs, 0.0, false, 0.0));
  write("prefs_length_train.jsonl", pair_lines(o, 102, o.pairs, 0.0, true, 0.0));
  write("prompts_train.jsonl", prompt_lines(o, 104, o.prompts));
  write("prompts_val.jsonl", prompt_lines(o, 105, o.val_prompts));
  return out.written();
}

}  // namespace kiln
