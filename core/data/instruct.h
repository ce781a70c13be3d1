// Instruction-tuning data: records read from JSONL, rendered through FLAN-style templates into
// token ids with a loss mask that covers only the response (and the end-of-text that closes
// it). Three record formats are accepted:
//   {"instruction": ..., "input": ... (optional), "output": ...}
//   {"prompt": ..., "completion": ...}
//   {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}   (chat)
// and preference records {"prompt", "chosen", "rejected"} for reward modelling and DPO.
// A mixture config lists tasks (file, template set, weight, cap, k-shot) and yields Examples in
// a seeded, deterministic order. docs/instruction-data.md describes the formats.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/data/jsonl.h"
#include "core/data/tokenizer.h"

namespace kiln {

// One rendered training example. mask[i] is 1 where ids[i] is a response token (one the model
// learns to produce, including each end-of-text that closes a response) and 0 for prompt text.
struct Example {
  std::vector<std::uint32_t> ids;
  std::vector<std::uint8_t> mask;
  std::size_t size() const { return ids.size(); }
};

// A preference pair: the same rendered prompt (ids[0, prompt_tokens) equal in both, mask 0)
// followed by the chosen or the rejected response.
struct PreferencePair {
  Example chosen;
  Example rejected;
  std::size_t prompt_tokens = 0;
};

struct ChatTurn {
  std::string role;     // "system", "user" or "assistant"
  std::string content;
};

// A record as read: string fields by name (instruction, input, output, prompt, completion and
// any extra string fields a template declares), the `options` list, or chat messages.
struct InstructRecord {
  std::string where;  // "file:line" (or a caller's label)
  std::map<std::string, std::string> fields;
  std::vector<std::string> options;
  std::vector<ChatTurn> messages;  // non-empty for chat records
  bool is_chat() const { return !messages.empty(); }
};

// Parses one JSON record in any of the three formats; errors name `where` and the field.
InstructRecord parse_instruct_record(const nlohmann::json& record, const std::string& where);
// Parses {prompt (or instruction/input), chosen, rejected}: the record's prompt fields, with
// chosen and rejected returned separately.
struct PreferenceRecord {
  InstructRecord prompt;  // fields without a response
  std::string chosen;
  std::string rejected;
};
PreferenceRecord parse_preference_record(const nlohmann::json& record, const std::string& where);

// Reads a JSONL file of instruction (or preference) records; bad records are an Error or, with
// skip_bad_records, counted in *stats.
std::vector<InstructRecord> read_instruct_file(const std::string& path, const JsonlOptions& options,
                                               JsonlStats* stats = nullptr);
std::vector<PreferenceRecord> read_preference_file(const std::string& path, const JsonlOptions& options,
                                                   JsonlStats* stats = nullptr);

// {name} patterns, as templates (and evaluation task files) write them: "{{" and "}}" are
// literal braces; an unclosed or stray brace is an Error naming `context`.
void scan_pattern(const std::string& pattern, const std::string& context,
                  const std::function<void(const std::string&)>& on_text,
                  const std::function<void(const std::string&)>& on_variable);
std::set<std::string> pattern_variables(const std::string& pattern, const std::string& context);
// The pattern with each {name} replaced by value_of(name) (which may throw for an unknown name).
std::string fill_pattern(const std::string& pattern, const std::string& context,
                         const std::function<std::string(const std::string&)>& value_of);

// One template: a prompt pattern and a response pattern with {variable} placeholders
// ("{{" and "}}" write literal braces).
struct InstructTemplate {
  std::string name;
  std::string prompt;
  std::string response;
};

// A set of templates for one task, loaded from YAML:
//   fields: [premise, hypothesis]     # extra record fields the templates may use
//   exemplar_separator: "\n\n"        # between k-shot exemplars and the question
//   templates:
//     - {name: t1, prompt: "...{instruction}...", response: "{output}"}
//   chat: {system: "...{content}...", user: "...{content}...", assistant: "{content}"}
// Known variables: instruction, input, output, prompt, completion, options and the declared
// fields; any other variable is an Error naming the file, the template and the variable.
class TemplateSet {
 public:
  static TemplateSet load(const std::string& path);
  // Parses YAML text; `source` names it in errors (the file path).
  static TemplateSet parse(const std::string& yaml_text, const std::string& source);
  // The built-in set used when a task names none: Alpaca-style instruction templates (with and
  // without input) and a plain prompt/completion template.
  static TemplateSet builtin();

  const std::string& source() const { return source_; }
  const std::vector<InstructTemplate>& templates() const { return templates_; }
  const std::string& exemplar_separator() const { return exemplar_separator_; }
  // Chat patterns by role (system, user, assistant), each using {content}.
  const std::map<std::string, std::string>& chat() const { return chat_; }

 private:
  void check_variables() const;
  std::string source_;
  std::vector<std::string> fields_;
  std::vector<InstructTemplate> templates_;
  std::string exemplar_separator_ = "\n\n";
  std::map<std::string, std::string> chat_;
};

// How records render: the seed picks each example's template and its k-shot exemplars.
struct RenderOptions {
  std::uint64_t seed = 0;
  std::uint64_t stream = 0;  // one per task, so tasks draw independently
  int k_shot = 0;            // exemplars from the same task before the question
};

// Renders records of one task. A template is eligible for a record when the record has every
// variable the template uses (an empty `input` counts as absent) and the template uses {input}
// whenever the record has one; the example's template is drawn among the eligible ones.
class InstructRenderer {
 public:
  InstructRenderer(const Tokenizer& tokenizer, TemplateSet templates, RenderOptions options);

  // Example `index` of `records` (draw > 0 gives another template/exemplar draw for the same
  // record, used when a mixture repeats a record). k-shot exemplars come from `records`, never
  // the record itself.
  Example render(const std::vector<InstructRecord>& records, std::size_t index, std::uint64_t draw = 0) const;
  // The exemplar indices render() uses for (index, draw): deterministic from the seed.
  std::vector<std::size_t> exemplars(const std::vector<InstructRecord>& records, std::size_t index,
                                     std::uint64_t draw = 0) const;
  // The preference pair for record `index` (zero-shot; both responses share one template).
  PreferencePair render_preference(const std::vector<PreferenceRecord>& records, std::size_t index,
                                   std::uint64_t draw = 0) const;

  const TemplateSet& templates() const { return templates_; }

 private:
  struct Piece {
    std::string text;
    bool response;  // in the loss mask
    bool eot;       // followed by end-of-text (a response target)
  };
  const InstructTemplate& pick_template(const InstructRecord& record, std::size_t index,
                                        std::uint64_t draw) const;
  std::vector<std::size_t> draw_exemplars(const std::vector<InstructRecord>& records, std::size_t index,
                                          std::uint64_t draw, const InstructTemplate& t) const;
  bool eligible(const InstructTemplate& t, const InstructRecord& record) const;
  void append_record(std::vector<Piece>& pieces, const InstructTemplate& t, const InstructRecord& record,
                     bool as_target) const;
  void append_chat(std::vector<Piece>& pieces, const InstructRecord& record) const;
  Example tokenize(const std::vector<Piece>& pieces) const;

  const Tokenizer& tokenizer_;
  TemplateSet templates_;
  RenderOptions options_;
};

// A mixture of tasks, loaded from YAML:
//   seed: 1234
//   skip_bad_records: false
//   tasks:
//     - {name: nli, file: nli.jsonl, templates: nli.yaml, weight: 2.0, cap: 1000, k_shot: 2}
// Relative paths are taken from the mixture file's folder. A task contributes
// round(weight * min(records, cap)) examples to one pass (cap 0: no cap; weight 2 shows each
// kept record twice, each time with a fresh template draw); the pass is shuffled by the seed.
struct MixtureTask {
  std::string name;
  std::string cluster;    // the task cluster ("": none), for the held-out protocol
  std::string file;
  std::string templates;  // empty: TemplateSet::builtin()
  double weight = 1.0;
  std::int64_t cap = 0;
  int k_shot = 0;
};

// FLAN's held-out protocol, in the mixture file:
//   holdout_clusters: [nli]                       # never trained on (evaluated zero-shot)
//   related_clusters: [[nli, paraphrase]]         # holding out one holds out the group
// tasks then holds the trained tasks only; a task whose data file is also a held-out task's is
// dropped from training (it would leak the held-out data), and listed in `dropped`.
struct MixtureConfig {
  std::uint64_t seed = 0;
  bool skip_bad_records = false;
  std::vector<MixtureTask> tasks;     // trained
  std::vector<std::string> holdout_clusters;  // as given, and the related clusters they pull in
  std::vector<MixtureTask> held_out;  // tasks of held-out clusters
  std::vector<std::pair<std::string, std::string>> dropped;  // (task, why) removed from training
  static MixtureConfig load(const std::string& path);
  // What was trained, held out and dropped, for the run folder.
  nlohmann::json split_record() const;
};

class InstructMixture {
 public:
  InstructMixture(const MixtureConfig& config, const Tokenizer& tokenizer);

  std::size_t size() const { return order_.size(); }  // examples in one pass
  Example example(std::size_t i) const;               // the i-th example of the pass
  // Bad records skipped per task (with skip_bad_records), for the caller to print.
  const std::map<std::string, std::int64_t>& skipped() const { return skipped_; }
  // The task name of example i.
  const std::string& task_of(std::size_t i) const;

 private:
  struct Slot {
    std::uint32_t task;
    std::uint64_t record;
    std::uint64_t draw;
  };
  std::vector<std::vector<InstructRecord>> records_;
  std::vector<InstructRenderer> renderers_;
  std::vector<std::string> names_;
  std::vector<Slot> order_;
  std::map<std::string, std::int64_t> skipped_;
};

}  // namespace kiln
