// The built-in synthetic task suite (`kiln tasks DIR`): 12 tasks in 4 clusters, made from a seed
// without downloads, for instruction tuning and evaluation experiments in miniature
// (docs/evaluation.md):
//   strings     reverse, uppercase, sort_letters            (generation)
//   arithmetic  add, subtract, multiply                     (generation)
//   rules       parity, vowel_start, long_word              (multiple choice)
//   extraction  first_word, last_word, find_number          (generation)
// Each task has 3 cues (instructions naming it) set into 4 frames: 12 templates, 11 of them tuned
// on (the SFT template set) and one cue-frame pair held out ("unseen_cC_fF", only in the
// evaluation file: seen tasks with unseen templates), plus a fifth frame no task is tuned on
// ("novel_cC"). A multiple-choice task's tuning templates list its options in two frames.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

struct SuiteSizes {
  int train = 400;
  int val = 50;
  int test = 100;
};

// Writes into dir, for each task T: T_train.jsonl, T_val.jsonl, T_test.jsonl (records with the
// task's fields, `output`, and for multiple choice `options` and `label`), T.templates.yaml (the
// seen templates, for mixtures) and T.eval.yaml (every template, k-shot exemplars from the train
// split); and mixtures: mixture_train.yaml and mixture_val.yaml (every task), and for each
// cluster C, mixture_train_without_C.yaml (C held out). Returns the files written.
std::vector<std::string> write_task_suite(const std::string& dir, std::uint64_t seed, const SuiteSizes& sizes = {});

// The suite's clusters, in order.
std::vector<std::string> suite_clusters();

// One input of a suite task as the suite draws it, for other generators built on the suite (the
// preference world, core/eval/preference_world.h): the input, the answer (multiple choice: the
// option's text), and a prompt through one of the task's seen cue-frame templates (zero-shot, no
// options listed). Item `index` of stream `stream` under `seed` is a pure function of the three.
struct SuiteItem {
  std::string task, cluster, x, answer, prompt;
};
// The names of the tasks answered by generation (not multiple choice), in suite order.
std::vector<std::string> suite_generation_tasks();
SuiteItem suite_item(const std::string& task, std::uint64_t seed, std::uint64_t stream, std::uint64_t index);

}  // namespace kiln
