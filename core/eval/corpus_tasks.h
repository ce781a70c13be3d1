// In-context learning probes made from a training corpus (`kiln tasks DIR --corpus CONFIG`), for
// evaluating pretrained models of a scaling sweep at k = 0, 1, 2, 4, 8 shots (docs/scaling.md,
// "In-context learning across sizes"). Two multiple-choice tasks, scored by rank classification:
//   word_end   the first letters of a common word of the corpus; which of 4 endings completes it
//              (the distractors are endings of other common words, of the same length). The words
//              scored and the words of the exemplars are disjoint halves of the common words.
//   next_word  four words of a held-out document; which of 4 words comes next (the distractors are
//              drawn from the training documents' running words, so each is as frequent as a word
//              picked at random: a unigram guess scores chance). The scored fragments come from
//              the documents the config's training holds out for validation, the exemplars from
//              its training documents.
// Each task has 4 templates (the fragment plain, after an opening quote, after "-- ", after "> "),
// so the spread over templates measures prompt sensitivity.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/data/tokenize.h"

namespace kiln {

struct CorpusTaskOptions {
  std::vector<std::string> inputs;   // the corpus (files, folders or globs), as data.corpus
  std::string separator;             // as data.separator
  std::string jsonl_field = "text";  // as data.jsonl_field
  double val_fraction = TokenizeOptions{}.val_fraction;  // the training split's draw, as kiln train's
  std::uint64_t split_seed = TokenizeOptions{}.seed;
  std::uint64_t seed = 1234;         // the records' draws
  int train = 400;                   // exemplar records per task
  int test = 200;                    // scored records per task
  std::vector<int> num_fewshot = {0, 1, 2, 4, 8};
};

// Writes T_train.jsonl, T_test.jsonl and T.eval.yaml for T in word_end and next_word into dir;
// returns the files written. Errors name the corpus when it has too few words or fragments.
std::vector<std::string> write_corpus_tasks(const std::string& dir, const CorpusTaskOptions& options);

}  // namespace kiln
