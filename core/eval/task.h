// Evaluation tasks, read from a small YAML format modelled on lm-evaluation-harness's
// (docs/evaluation.md). A file holds one task, or `tasks:` with a list of them:
//
//   task: reverse                     # name
//   cluster: strings                  # optional: the task cluster (held-out protocol)
//   output_type: multiple_choice      # multiple_choice | generate_until | loglikelihood_rolling
//   dataset: reverse_test.jsonl       # the documents scored (relative to this file)
//   fewshot_dataset: reverse_train.jsonl   # exemplars for k > 0 (never the scored documents)
//   num_fewshot: [0, 1, 4]            # k values, each scored separately (default [0])
//   fewshot_seed: 1234                # exemplars drawn per document from this seed
//   target_delimiter: " "             # between a prompt and its answer
//   fewshot_delimiter: "\n\n"         # between exemplars and the question
//   doc_to_choice: options            # multiple_choice: the field holding the list of options
//   doc_to_target: label              # multiple_choice: the field holding the gold option (its
//                                     # index, a list of indices, or its text); generate_until: a
//                                     # {field} pattern giving the gold answer
//   templates:                        # each scored separately (prompt sensitivity)
//     - {name: plain, doc_to_text: "Reverse {word}:"}
//     - {name: qa, doc_to_text: "Q: what is {word} backwards?\nA:", doc_to_target: "{answer}"}
//   generation: {until: ["\n"], max_gen_toks: 32}
//
// doc_to_text (and doc_to_target, doc_to_choice) may also sit at the top level: one template
// named "default". A template's keys override the task's. {field} takes a record field (strings
// as they are, numbers in JSON form).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln {

struct EvalTemplate {
  std::string name;
  std::string doc_to_text;    // pattern
  std::string doc_to_target;  // multiple_choice: a field name; generate_until: a pattern
  std::string doc_to_choice;  // multiple_choice: a field name
};

struct EvalDoc {
  std::string where;  // file:line
  nlohmann::json record;
};

struct EvalTask {
  std::string name;
  std::string cluster;
  std::string source;       // the task file
  std::string output_type;  // multiple_choice | generate_until
  std::vector<EvalDoc> docs;
  std::vector<EvalDoc> fewshot;
  std::vector<int> num_fewshot = {0};
  std::uint64_t fewshot_seed = 1234;
  std::string target_delimiter = " ";
  std::string fewshot_delimiter = "\n\n";
  std::vector<std::string> until;  // generate_until: stop strings (end-of-text always stops)
  int max_gen_toks = 32;
  std::vector<EvalTemplate> templates;

  bool multiple_choice() const { return output_type == "multiple_choice"; }
  bool rolling() const { return output_type == "loglikelihood_rolling"; }  // doc_to_text is the text scored
  // A template applied to a document: the prompt text, the options (multiple choice), the gold
  // option indices (multiple choice) or the gold answer text (generation). Errors name the
  // document and the field.
  std::string text(const EvalTemplate& t, const EvalDoc& doc) const;
  std::vector<std::string> choices(const EvalTemplate& t, const EvalDoc& doc) const;
  std::vector<int> gold(const EvalTemplate& t, const EvalDoc& doc) const;
  std::string target_text(const EvalTemplate& t, const EvalDoc& doc) const;  // an exemplar's answer
};

// The tasks of a task file (one, or its `tasks:` list). Unknown keys, a template naming a field
// the first document lacks, options missing from a multiple-choice record, k larger than the
// exemplar pool: Errors naming the file (and line) and the key.
std::vector<EvalTask> load_eval_tasks(const std::string& path);

}  // namespace kiln
