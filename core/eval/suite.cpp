// The built-in synthetic task suite (core/eval/suite.h).
#include "core/eval/suite.h"

#include <algorithm>
#include <filesystem>
#include <functional>

#include <nlohmann/json.hpp>

#include "core/checkpoint/atomic_file.h"
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
  // 5 prompt patterns over the record's field `x`: 4 seen, then 1 unseen.
  std::vector<std::string> prompts;
  // The record's input text and its answer (multiple choice: the option's index).
  std::function<std::pair<std::string, std::string>(Draw&)> make;
};

bool vowel(char c) { return std::string("aeiou").find(c) != std::string::npos; }

std::vector<SuiteTask> suite() {
  auto sentence = [](Draw& d, int words) {
    std::string s;
    for (int i = 0; i < words; ++i) s += (i ? " " : "") + d.word();
    return s;
  };
  std::vector<SuiteTask> t;
  t.push_back({"reverse", "strings", false, {},
               {"Reverse the word {x}.\n", "Write {x} backwards.\n", "{x} reversed is: ", "Spell {x} from the end.\n",
                "What is the word {x} read right to left?\n"},
               [](Draw& d) { std::string w = d.word(); return std::pair{w, std::string(w.rbegin(), w.rend())}; }});
  t.push_back({"uppercase", "strings", false, {},
               {"Uppercase the word {x}.\n", "Write {x} in capital letters.\n", "{x} in upper case is: ",
                "Shout the word {x}.\n", "Convert {x} to all caps.\n"},
               [](Draw& d) {
                 std::string w = d.word(), u = w;
                 for (char& c : u) c = static_cast<char>(c - 'a' + 'A');
                 return std::pair{w, u};
               }});
  t.push_back({"sort_letters", "strings", false, {},
               {"Sort the letters of {x}.\n", "Put the letters of {x} in alphabetical order.\n",
                "{x} with its letters sorted is: ", "Arrange {x} from a to z.\n", "Order the characters of {x}.\n"},
               [](Draw& d) { std::string w = d.word(), s = w; std::sort(s.begin(), s.end()); return std::pair{w, s}; }});
  auto arithmetic = [&](const std::string& name, char op, std::vector<std::string> prompts) {
    t.push_back({name, "arithmetic", false, {}, std::move(prompts), [op](Draw& d) {
                   const int a = static_cast<int>(d.u(op == '*' ? 10 : 50)), b = static_cast<int>(d.u(op == '*' ? 10 : 50));
                   const int hi = std::max(a, b), lo = std::min(a, b);
                   const int r = op == '+' ? a + b : op == '-' ? hi - lo : a * b;
                   const int x = op == '-' ? hi : a, y = op == '-' ? lo : b;
                   return std::pair{std::to_string(x) + " " + op + " " + std::to_string(y), std::to_string(r)};
                 }});
  };
  arithmetic("add", '+', {"Compute {x}.\n", "What is {x}?\n", "{x} = ", "Add: {x}\n", "Work out the sum {x}.\n"});
  arithmetic("subtract", '-',
             {"Compute {x}.\n", "What is {x}?\n", "{x} = ", "Subtract: {x}\n", "Work out the difference {x}.\n"});
  arithmetic("multiply", '*',
             {"Compute {x}.\n", "What is {x}?\n", "{x} = ", "Multiply: {x}\n", "Work out the product {x}.\n"});
  t.push_back({"parity", "rules", true, {"even", "odd"},
               {"Is {x} even or odd?\n", "{x}: even or odd?\n{options}\n", "The parity of {x} is: ",
                "Tell whether {x} is even or odd.\n{options}\n", "Would {x} split into two equal whole halves?\n"},
               [](Draw& d) { const auto n = d.u(100); return std::pair{std::to_string(n), std::string(n % 2 ? "1" : "0")}; }});
  t.push_back({"vowel_start", "rules", true, {"yes", "no"},
               {"Does {x} start with a vowel?\n", "{x}: first letter a vowel?\n{options}\n",
                "Starts with a vowel ({x}): ", "Answer whether the word {x} begins with a vowel.\n{options}\n",
                "Is the first letter of {x} one of a, e, i, o, u?\n"},
               [](Draw& d) { std::string w = d.word(); return std::pair{w, std::string(vowel(w[0]) ? "0" : "1")}; }});
  t.push_back({"long_word", "rules", true, {"yes", "no"},
               {"Does {x} have more than four letters?\n", "{x}: longer than four letters?\n{options}\n",
                "More than four letters ({x}): ", "Answer whether {x} is longer than four letters.\n{options}\n",
                "Would {x} need five or more letter tiles?\n"},
               [](Draw& d) { std::string w = d.word(); return std::pair{w, std::string(w.size() > 4 ? "0" : "1")}; }});
  t.push_back({"first_word", "extraction", false, {},
               {"First word of: {x}\n", "What is the first word of \"{x}\"?\n", "{x} -- its first word is: ",
                "Copy the first word of this sentence: {x}\n", "Which word opens the phrase \"{x}\"?\n"},
               [sentence](Draw& d) {
                 const std::string s = sentence(d, 3 + static_cast<int>(d.u(3)));
                 return std::pair{s, s.substr(0, s.find(' '))};
               }});
  t.push_back({"last_word", "extraction", false, {},
               {"Last word of: {x}\n", "What is the last word of \"{x}\"?\n", "{x} -- its last word is: ",
                "Copy the last word of this sentence: {x}\n", "Which word closes the phrase \"{x}\"?\n"},
               [sentence](Draw& d) {
                 const std::string s = sentence(d, 3 + static_cast<int>(d.u(3)));
                 return std::pair{s, s.substr(s.rfind(' ') + 1)};
               }});
  t.push_back({"find_number", "extraction", false, {},
               {"Find the number in: {x}\n", "Which number appears in \"{x}\"?\n", "{x} -- the number is: ",
                "Copy the number from this sentence: {x}\n", "What figure is mentioned in \"{x}\"?\n"},
               [sentence](Draw& d) {
                 const std::string n = std::to_string(d.u(1000));
                 std::string a = sentence(d, 1 + static_cast<int>(d.u(2))), b = sentence(d, 1 + static_cast<int>(d.u(2)));
                 return std::pair{a + " " + n + " " + b, n};
               }});
  return t;
}

std::string yaml_quoted(const std::string& s) { return nlohmann::json(s).dump(); }  // JSON strings are YAML

}  // namespace

std::vector<std::string> suite_clusters() { return {"strings", "arithmetic", "rules", "extraction"}; }

std::vector<std::string> write_task_suite(const std::string& dir, std::uint64_t seed, const SuiteSizes& sizes) {
  KILN_CHECK(sizes.train >= 8 && sizes.val >= 1 && sizes.test >= 1, "the task suite needs at least 8 training, 1 "
             "validation and 1 test record per task");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  KILN_CHECK(!ec, "cannot create ", dir, ": ", ec.message());
  const std::filesystem::path base(dir);
  std::vector<std::string> written;
  auto write = [&](const std::string& name, const std::string& text) {
    write_file_atomic((base / name).string(), text);
    written.push_back((base / name).string());
  };
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
                                             : "doc_to_target: \"{output}\"\ngeneration: {until: [\"\\n\"], max_gen_toks: 16}\n") +
                       "templates:\n";
    for (std::size_t p = 0; p < task.prompts.size(); ++p) {
      const bool seen = p + 1 < task.prompts.size();
      const std::string name = (seen ? "seen_" : "unseen_") + std::to_string(p + 1);
      if (seen) templates += "  - {name: " + name + ", prompt: " + yaml_quoted(task.prompts[p]) + ", response: \"{output}\"}\n";
      // Evaluation prompts list no options: rank classification scores each option itself.
      std::string prompt = task.prompts[p];
      for (std::size_t at; (at = prompt.find("{options}\n")) != std::string::npos;) prompt.erase(at, 10);
      eval += "  - {name: " + name + ", doc_to_text: " + yaml_quoted(prompt) + "}\n";
    }
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
  return written;
}

}  // namespace kiln
