// In-context learning probes made from a training corpus (core/eval/corpus_tasks.h).
#include "core/eval/corpus_tasks.h"

#include <algorithm>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/data/corpus.h"
#include "core/data/tokenize.h"
#include "core/eval/generated_files.h"
#include "core/rng.h"
#include "kernels/error.h"

namespace kiln {

namespace {

bool letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool lower_word(const std::string& w) {
  return !w.empty() && std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

// A document's words: maximal runs of letters and apostrophes, with the text between each word
// and the next.
struct Word {
  std::string text, gap_after;
};
std::vector<Word> words_of(std::string_view doc) {
  std::vector<Word> out;
  std::size_t i = 0;
  while (i < doc.size()) {
    std::size_t start = i;
    while (i < doc.size() && (letter(doc[i]) || doc[i] == '\'')) ++i;
    if (i > start) out.push_back({std::string(doc.substr(start, i - start)), ""});
    start = i;
    while (i < doc.size() && !letter(doc[i]) && doc[i] != '\'') ++i;
    if (!out.empty()) out.back().gap_after = std::string(doc.substr(start, i - start));
  }
  return out;
}

// A draw of record i of one task and split: u(n) is uniform in [0, n).
struct Draw {
  Rng rng;
  std::uint64_t next = 0;
  std::uint64_t u(std::uint64_t n) { return rng.u64(next++) % n; }
};

// 4 options, the gold at a drawn place.
nlohmann::json record(const std::string& x, const std::string& gold, const std::vector<std::string>& distractors,
                      Draw& d) {
  std::vector<std::string> options = distractors;
  const std::size_t at = d.u(options.size() + 1);
  options.insert(options.begin() + static_cast<std::ptrdiff_t>(at), gold);
  return {{"x", x}, {"options", options}, {"label", at}, {"output", gold}};
}

constexpr int kDistractors = 3;
constexpr int kMaxTries = 10000;

}  // namespace

std::vector<std::string> write_corpus_tasks(const std::string& dir, const CorpusTaskOptions& options) {
  KILN_CHECK(options.train >= 8 && options.test >= 1, "corpus tasks need at least 8 exemplar and 1 test record per task");
  KILN_CHECK(!options.num_fewshot.empty(), "corpus tasks need at least one k in num_fewshot");
  for (int k : options.num_fewshot)
    KILN_CHECK(k >= 0 && k <= options.train, "num_fewshot holds ", k, "; each k must be in [0, ", options.train, "]");
  const std::string corpus_name = options.inputs.empty() ? std::string("(none)") : options.inputs.front();
  // The documents and their split, as training sees them.
  CorpusOptions corpus;
  corpus.inputs = options.inputs;
  corpus.separator = options.separator;
  corpus.jsonl_field = options.jsonl_field;
  corpus.command = "tasks --corpus";
  std::vector<std::string> skipped;
  std::vector<std::string> docs;
  for_each_corpus_document(list_corpus_files(corpus, skipped), corpus, &skipped, nullptr,
                           [&](std::string_view doc) { docs.emplace_back(doc); });
  TokenizeOptions split;
  split.val_fraction = options.val_fraction;
  split.seed = options.split_seed;
  const std::vector<bool> is_val = validation_documents(split, docs.size());

  // Training words: common words (6+ lowercase letters, 20+ occurrences) and the running words.
  std::map<std::string, int> counts;
  std::vector<std::string> running;  // every lowercase word of 3+ letters, in order (a frequency-weighted pool)
  std::vector<std::vector<Word>> doc_words(docs.size());
  for (std::size_t i = 0; i < docs.size(); ++i) {
    doc_words[i] = words_of(docs[i]);
    if (is_val[i]) continue;
    for (const Word& w : doc_words[i])
      if (lower_word(w.text) && w.text.size() >= 3) {
        running.push_back(w.text);
        ++counts[w.text];
      }
  }
  std::vector<std::string> common;
  for (const auto& [w, c] : counts)
    if (w.size() >= 6 && c >= 20) common.push_back(w);
  KILN_CHECK(common.size() >= 16, corpus_name, ": ", common.size(), " common words (6 or more lowercase letters, 20 or "
             "more occurrences in the training documents); word_end needs 16 or more: use a larger corpus");
  shuffle(common, Rng(options.seed, 1));
  const std::vector<std::string> scored(common.begin(), common.begin() + common.size() / 2);
  const std::vector<std::string> exemplars(common.begin() + common.size() / 2, common.end());

  // next_word's fragments: four words joined by single spaces or newlines (no punctuation between
  // them), then one space or newline, then a lowercase word of 3+ letters.
  struct Fragment {
    std::string context, next;
  };
  std::vector<Fragment> fragments[2];  // [0] training documents, [1] validation documents
  auto plain_gap = [](const std::string& g) { return g == " " || g == "\n"; };
  for (std::size_t i = 0; i < docs.size(); ++i) {
    const std::vector<Word>& ws = doc_words[i];
    for (std::size_t j = 4; j < ws.size(); ++j) {
      if (!lower_word(ws[j].text) || ws[j].text.size() < 3) continue;
      bool clean = true;
      for (std::size_t t = j - 4; t < j && clean; ++t) clean = plain_gap(ws[t].gap_after);
      if (!clean) continue;
      std::string context = ws[j - 4].text;
      for (std::size_t t = j - 3; t < j; ++t) context += " " + ws[t].text;
      fragments[is_val[i] ? 1 : 0].push_back({context, ws[j].text});
    }
  }
  KILN_CHECK(fragments[0].size() >= static_cast<std::size_t>(options.train) &&
                 fragments[1].size() >= static_cast<std::size_t>(options.test),
             corpus_name, ": next_word found ", fragments[0].size(), " fragments in the training documents and ",
             fragments[1].size(), " in the validation documents; it needs ", options.train, " and ", options.test,
             ": use a larger corpus or fewer records (--train, --test)");

  GeneratedFiles out(dir);

  const char* splits[2] = {"train", "test"};
  const int sizes[2] = {options.train, options.test};
  // word_end: a word cut after 3 or more letters, its ending 3 or more letters long, at a cut
  // where the common words have 3 other endings of that length (at every cut, in a large corpus).
  std::map<std::size_t, std::set<std::string>> endings;  // by length, from words 3 letters longer
  for (const std::string& w : common)
    for (std::size_t length = 3; length + 3 <= w.size(); ++length) endings[length].insert(w.substr(w.size() - length));
  for (int s = 0; s < 2; ++s) {
    const std::vector<std::string>& pool = s == 0 ? exemplars : scored;
    std::string lines;
    for (int i = 0; i < sizes[s]; ++i) {
      Draw d{Rng(options.seed, 100 + s * 1000003ull + i)};
      auto feasible = [&](const std::string& w, std::size_t cut) { return endings[w.size() - cut].size() > kDistractors; };
      std::string w;
      std::size_t cut = 0;
      for (int tries = 0; cut == 0 && tries < kMaxTries; ++tries) {
        w = pool[d.u(pool.size())];
        cut = 3 + d.u(w.size() - 5);  // uniform over the cuts; another cut of this word only when it has no 3 others
        if (feasible(w, cut)) break;
        std::vector<std::size_t> cuts;
        for (std::size_t c = 3; c + 3 <= w.size(); ++c)
          if (feasible(w, c)) cuts.push_back(c);
        cut = cuts.empty() ? 0 : cuts[d.u(cuts.size())];
      }
      KILN_CHECK(cut > 0, corpus_name, ": word_end found no word with 3 other endings of its ending's length "
                 "among the common words; use a larger corpus");
      const std::string stem = w.substr(0, cut), ending = w.substr(cut);
      std::set<std::string> taken{ending};
      std::vector<std::string> others;
      for (int tries = 0; static_cast<int>(others.size()) < kDistractors && tries < kMaxTries; ++tries) {
        const std::string& v = common[d.u(common.size())];
        if (v.size() < ending.size() + 3) continue;
        const std::string e = v.substr(v.size() - ending.size());
        if (taken.insert(e).second) others.push_back(e);
      }
      KILN_CHECK(static_cast<int>(others.size()) == kDistractors, corpus_name, ": word_end found no 3 other endings of ",
                 ending.size(), " letters; use a larger corpus");
      lines += record(stem, ending, others, d).dump() + "\n";
    }
    out.write(std::string("word_end_") + splits[s] + ".jsonl", lines);
  }
  // next_word: fragments drawn without replacement; distractors from the running words, of a
  // length within one letter of the gold's.
  std::map<std::size_t, std::size_t> types;  // distinct running words by length
  for (const auto& [w, c] : counts) types[w.size()] += c > 0;
  auto other_words = [&](const std::string& w) {
    return types[w.size() - 1] + types[w.size()] + types[w.size() + 1] - 1;
  };
  for (int s = 0; s < 2; ++s) {
    std::vector<Fragment> pool = fragments[s];
    shuffle(pool, Rng(options.seed, 200 + s));
    std::string lines;
    std::size_t next = 0;  // fragments whose word has too few others of its length are passed over
    for (int i = 0; i < sizes[s]; ++i) {
      Draw d{Rng(options.seed, 300 + s * 1000003ull + i)};
      while (next < pool.size() && other_words(pool[next].next) < static_cast<std::size_t>(kDistractors)) ++next;
      KILN_CHECK(next < pool.size(), corpus_name, ": next_word found ", i, " fragments whose next word has 3 others of "
                 "about its length in the ", s == 0 ? "training" : "validation", " documents; it needs ", sizes[s],
                 ": use a larger corpus or fewer records (--train, --test)");
      const Fragment& f = pool[next++];
      std::set<std::string> taken{f.next};
      std::vector<std::string> others;
      for (int tries = 0; static_cast<int>(others.size()) < kDistractors && tries < kMaxTries; ++tries) {
        const std::string& v = running[d.u(running.size())];
        const long diff = static_cast<long>(v.size()) - static_cast<long>(f.next.size());
        if (diff >= -1 && diff <= 1 && taken.insert(v).second) others.push_back(v);
      }
      KILN_CHECK(static_cast<int>(others.size()) == kDistractors, corpus_name, ": next_word found no 3 other words "
                 "near the length of '", f.next, "'; use a larger corpus");
      lines += record(f.context, f.next, others, d).dump() + "\n";
    }
    out.write(std::string("next_word_") + splits[s] + ".jsonl", lines);
  }
  // The task files: 4 templates each, every k of num_fewshot.
  std::string shots;
  for (int k : options.num_fewshot) shots += (shots.empty() ? "" : ", ") + std::to_string(k);
  const std::vector<std::pair<std::string, std::string>> templates = {
      {"plain", "{x}"}, {"quote", "\"{x}"}, {"dash", "-- {x}"}, {"angle", "> {x}"}};
  for (const auto& [task, delimiter] : std::vector<std::pair<std::string, std::string>>{{"word_end", ""}, {"next_word", " "}}) {
    std::string text = "# Written by kiln tasks --corpus from " + corpus_name + " (seed " + std::to_string(options.seed) +
                       "): docs/scaling.md\ntask: " + task + "\ncluster: corpus\noutput_type: multiple_choice\n" +
                       "dataset: " + task + "_test.jsonl\nfewshot_dataset: " + task + "_train.jsonl\nnum_fewshot: [" +
                       shots + "]\ntarget_delimiter: " + yaml_quoted(delimiter) +
                       "\nfewshot_delimiter: \"\\n\"\ndoc_to_choice: options\ndoc_to_target: label\ntemplates:\n";
    for (const auto& [name, pattern] : templates)
      text += "  - {name: " + name + ", doc_to_text: " + yaml_quoted(pattern) + "}\n";
    out.write(task + ".eval.yaml", text);
  }
  return out.written();
}

}  // namespace kiln
