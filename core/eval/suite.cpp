// The built-in synthetic task suite (core/eval/suite.h).
#include "core/eval/suite.h"

#include <algorithm>
#include <functional>

#include <nlohmann/json.hpp>

#include "core/eval/generated_files.h"
#include "core/rng.h"
#include "kernels/error.h"

namespace kiln {

namespace {

const std::vector<std::string> kWords = {"apple", "stone", "river", "cloud", "tiger", "lemon", "olive", "eagle",
                                         "mango", "ivory", "grape", "ocean", "plum", "kite", "urn", "owl",
                                         "bird", "fig", "sand", "echo", "iron", "moss", "wolf", "amber"};

// A record's draws: u(i) is a uniform integer stream for one record.
struct Draw {
  Rng rng;
  std::uint64_t next = 0;
  std::uint64_t u(std::uint64_t n) { return rng.u64(next++) % n; }
  const std::string& word() { return kWords[u(kWords.size())]; }
};

struct SuiteTask {
  std::string name, cluster;
  bool multiple_choice = false;
  std::vector<std::string> options;  // multiple choice: the fixed options
  // Three instructions naming the task (cues), each set into every frame below.
  std::vector<std::string> cues;
  // The record's input text and its answer (multiple choice: the option's index).
  std::function<std::pair<std::string, std::string>(Draw&)> make;
};

// Frames a cue {c} and the input {x} are set into. A task's template is one cue in one frame:
// 3 cues x 4 frames = 12, of which one pair is held out of tuning (its "unseen" template: a cue
// and a frame each tuned on, never together for that task), plus the fifth frame, never tuned on
// by any task (its "novel" templates). Multiple-choice tasks list their options ({options}) in
// the first and third frames when tuning; evaluation prompts list none (rank classification).
const std::vector<std::string> kFrames = {"{c}: {x}\n", "Q: {c} {x}?\nA: ", "Input: {x}\nTask: {c}\nOutput: ",
                                          "{x}\n({c})\n"};
const std::vector<std::string> kFramesWithOptions = {"{c}: {x}\n{options}\n", "",
                                                     "Input: {x}\n{options}\nTask: {c}\nOutput: ", ""};
const std::string kNovelFrame = "Here is \"{x}\". Now {c}.\n";

std::string with_cue(const std::string& pattern, const std::string& cue) {
  const std::size_t at = pattern.find("{c}");
  return at == std::string::npos ? pattern : pattern.substr(0, at) + cue + pattern.substr(at + 3);
}

bool vowel(char c) { return std::string("aeiou").find(c) != std::string::npos; }

std::vector<SuiteTask> suite() {
  auto sentence = [](Draw& d, int words) {
    std::string s;
    for (int i = 0; i < words; ++i) s += (i ? " " : "") + d.word();
    return s;
  };
  std::vector<SuiteTask> t;
  t.push_back({"reverse", "strings", false, {},
               {"reverse the word", "spell it backwards", "mirror the letters"},
               [](Draw& d) { std::string w = d.word(); return std::pair{w, std::string(w.rbegin(), w.rend())}; }});
  t.push_back({"uppercase", "strings", false, {},
               {"uppercase the word", "capitalize every letter", "convert to all caps"},
               [](Draw& d) {
                 std::string w = d.word(), u = w;
                 for (char& c : u) c = static_cast<char>(c - 'a' + 'A');
                 return std::pair{w, u};
               }});
  t.push_back({"sort_letters", "strings", false, {},
               {"sort the letters", "put the letters in alphabetical order", "arrange from a to z"},
               [](Draw& d) { std::string w = d.word(), s = w; std::sort(s.begin(), s.end()); return std::pair{w, s}; }});
  auto arithmetic = [&](const std::string& name, char op, std::vector<std::string> cues) {
    t.push_back({name, "arithmetic", false, {}, std::move(cues), [op](Draw& d) {
                   const int a = static_cast<int>(d.u(op == '*' ? 10 : 50)), b = static_cast<int>(d.u(op == '*' ? 10 : 50));
                   const int hi = std::max(a, b), lo = std::min(a, b);
                   const int r = op == '+' ? a + b : op == '-' ? hi - lo : a * b;
                   const int x = op == '-' ? hi : a, y = op == '-' ? lo : b;
                   return std::pair{std::to_string(x) + " " + op + " " + std::to_string(y), std::to_string(r)};
                 }});
  };
  arithmetic("add", '+', {"compute the sum", "add the numbers", "work out the total"});
  arithmetic("subtract", '-', {"compute the difference", "subtract the numbers", "work out what is left"});
  arithmetic("multiply", '*', {"compute the product", "multiply the numbers", "work out the times table"});
  t.push_back({"parity", "rules", true, {"even", "odd"},
               {"is the number even or odd", "tell the parity", "say even or odd"},
               [](Draw& d) { const auto n = d.u(100); return std::pair{std::to_string(n), std::string(n % 2 ? "1" : "0")}; }});
  t.push_back({"vowel_start", "rules", true, {"yes", "no"},
               {"does the word start with a vowel", "is the first letter a vowel", "begins with a vowel"},
               [](Draw& d) { std::string w = d.word(); return std::pair{w, std::string(vowel(w[0]) ? "0" : "1")}; }});
  t.push_back({"long_word", "rules", true, {"yes", "no"},
               {"does the word have more than four letters", "is it longer than four letters", "over four letters"},
               [](Draw& d) { std::string w = d.word(); return std::pair{w, std::string(w.size() > 4 ? "0" : "1")}; }});
  t.push_back({"first_word", "extraction", false, {},
               {"give the first word", "copy the first word", "which word opens the sentence"},
               [sentence](Draw& d) {
                 const std::string s = sentence(d, 3 + static_cast<int>(d.u(3)));
                 return std::pair{s, s.substr(0, s.find(' '))};
               }});
  t.push_back({"last_word", "extraction", false, {},
               {"give the last word", "copy the last word", "which word closes the sentence"},
               [sentence](Draw& d) {
                 const std::string s = sentence(d, 3 + static_cast<int>(d.u(3)));
                 return std::pair{s, s.substr(s.rfind(' ') + 1)};
               }});
  t.push_back({"find_number", "extraction", false, {},
               {"find the number", "copy the number", "which number appears"},
               [sentence](Draw& d) {
                 const std::string n = std::to_string(d.u(1000));
                 std::string a = sentence(d, 1 + static_cast<int>(d.u(2))), b = sentence(d, 1 + static_cast<int>(d.u(2)));
                 return std::pair{a + " " + n + " " + b, n};
               }});
  return t;
}

}  // namespace

std::vector<std::string> suite_clusters() { return {"strings", "arithmetic", "rules", "extraction"}; }

std::vector<std::string> suite_generation_tasks() {
  std::vector<std::string> names;
  for (const SuiteTask& t : suite())
    if (!t.multiple_choice) names.push_back(t.name);
  return names;
}

SuiteItem suite_item(const std::string& task, std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  const std::vector<SuiteTask> tasks = suite();
  const auto it = std::find_if(tasks.begin(), tasks.end(), [&](const SuiteTask& t) { return t.name == task; });
  KILN_CHECK(it != tasks.end(), "the task suite has no task '", task, "'");
  const std::size_t ti = static_cast<std::size_t>(it - tasks.begin());
  Draw d{Rng(seed, stream * 1000003ull + index)};
  auto [x, answer] = it->make(d);
  if (it->multiple_choice) answer = it->options[static_cast<std::size_t>(std::stoi(answer))];
  // A seen template: any cue-frame pair but the task's held-out one.
  std::size_t c = 0, f = 0;
  do {
    c = d.u(it->cues.size());
    f = d.u(kFrames.size());
  } while (c == ti % it->cues.size() && f == ti % kFrames.size());
  std::string prompt = with_cue(kFrames[f], it->cues[c]);
  prompt.replace(prompt.find("{x}"), 3, x);
  return {it->name, it->cluster, x, answer, prompt};
}

std::vector<std::string> write_task_suite(const std::string& dir, std::uint64_t seed, const SuiteSizes& sizes) {
  KILN_CHECK(sizes.train >= 8 && sizes.val >= 1 && sizes.test >= 1, "the task suite needs at least 8 training, 1 "
             "validation and 1 test record per task");
  GeneratedFiles out(dir);
  auto write = [&](const std::string& name, const std::string& text) { out.write(name, text); };
  const std::vector<SuiteTask> tasks = suite();
  for (std::size_t ti = 0; ti < tasks.size(); ++ti) {
    const SuiteTask& task = tasks[ti];
    // Splits of distinct inputs where the task has enough of them; each record from its own stream.
    const int counts[3] = {sizes.train, sizes.val, sizes.test};
    const char* splits[3] = {"train", "val", "test"};
    for (int s = 0; s < 3; ++s) {
      std::string lines;
      for (int i = 0; i < counts[s]; ++i) {
        Draw d{Rng(seed, (ti * 3 + s) * 1000003ull + i)};
        const auto [x, answer] = task.make(d);
        nlohmann::json r = {{"x", x}};
        if (task.multiple_choice) {
          const int label = std::stoi(answer);
          r["options"] = task.options;
          r["label"] = label;
          r["output"] = task.options[label];
        } else {
          r["output"] = answer;
        }
        lines += r.dump() + "\n";
      }
      write(task.name + "_" + splits[s] + ".jsonl", lines);
    }
    std::string templates = "fields: [x]\ntemplates:\n";
    std::string eval = "task: " + task.name + "\ncluster: " + task.cluster + "\noutput_type: " +
                       (task.multiple_choice ? "multiple_choice" : "generate_until") + "\ndataset: " + task.name +
                       "_test.jsonl\nfewshot_dataset: " + task.name + "_train.jsonl\nnum_fewshot: [0]\n" +
                       "target_delimiter: \"\"\nfewshot_delimiter: \"\\n\"\n" +
                       (task.multiple_choice ? "doc_to_choice: options\ndoc_to_target: label\n"
                                             : "doc_to_target: \"{output}\"\ngeneration: {until: [\"\\n\"], max_gen_toks: 8}\n") +
                       "templates:\n";
    // Template names: cue and frame ("c2_f3"); the pair held out of tuning is "unseen_c2_f3", the
    // novel frame "novel_c2". Each of the 12 tasks holds out a different pair.
    const std::size_t held_cue = ti % task.cues.size(), held_frame = ti % kFrames.size();  // 12 distinct pairs
    auto eval_template = [&](const std::string& name, std::string prompt) {
      // Evaluation prompts list no options: rank classification scores each option itself.
      eval += "  - {name: " + name + ", doc_to_text: " + yaml_quoted(prompt) + "}\n";
    };
    for (std::size_t c = 0; c < task.cues.size(); ++c) {
      for (std::size_t f = 0; f < kFrames.size(); ++f) {
        std::string name = "c";  // appended, not "c" + ...: GCC 12 warns falsely there (-Wrestrict)
        name += std::to_string(c + 1) + "_f" + std::to_string(f + 1);
        const bool held = c == held_cue && f == held_frame;
        const std::string plain = with_cue(kFrames[f], task.cues[c]);
        if (!held) {
          const bool list_options = task.multiple_choice && !kFramesWithOptions[f].empty();
          const std::string tuned = list_options ? with_cue(kFramesWithOptions[f], task.cues[c]) : plain;
          templates += "  - {name: " + name + ", prompt: " + yaml_quoted(tuned) + ", response: \"{output}\"}\n";
        }
        eval_template(held ? "unseen_" + name : name, plain);
      }
    }
    for (std::size_t c = 0; c < task.cues.size(); ++c)
      eval_template("novel_c" + std::to_string(c + 1), with_cue(kNovelFrame, task.cues[c]));
    write(task.name + ".templates.yaml", templates);
    write(task.name + ".eval.yaml", eval);
  }
  auto mixture = [&](const std::string& split, const std::string& holdout) {
    std::string text = "seed: " + std::to_string(seed) + "\n";
    if (!holdout.empty()) text += "holdout_clusters: [" + holdout + "]\n";
    text += "tasks:\n";
    for (const SuiteTask& t : tasks)
      text += "  - {name: " + t.name + ", cluster: " + t.cluster + ", file: " + t.name + "_" + split +
              ".jsonl, templates: " + t.name + ".templates.yaml}\n";
    return text;
  };
  write("mixture_train.yaml", mixture("train", ""));
  write("mixture_val.yaml", mixture("val", ""));
  for (const std::string& c : suite_clusters()) write("mixture_train_without_" + c + ".yaml", mixture("train", c));
  return out.written();
}

}  // namespace kiln
