// Instruction records, FLAN-style templates, k-shot rendering, preference pairs and mixtures.
// Rendering builds a list of text pieces (prompt text, response text followed by end-of-text)
// and tokenizes each piece separately, so a response never merges with its prompt into one
// token and the loss mask falls exactly on the response.
#include "core/data/instruct.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "kernels/error.h"
#include "core/data/yaml_fields.h"
#include "core/rng.h"
#include "core/yaml_document.h"
#include "core/checkpoint/atomic_file.h"

namespace kiln {
namespace {

const std::set<std::string> kBuiltinVariables = {"instruction", "input", "output", "prompt",
                                                 "completion", "options"};
const std::set<std::string> kChatRoles = {"system", "user", "assistant"};
constexpr std::uint64_t kMaxExemplarAttempts = 4096;

}  // namespace

// Calls on_text for literal text and on_variable for each {name}; "{{" and "}}" are literal
// braces. An unclosed brace is an Error naming `context`.
void scan_pattern(const std::string& pattern, const std::string& context,
                  const std::function<void(const std::string&)>& on_text,
                  const std::function<void(const std::string&)>& on_variable) {
  std::size_t i = 0;
  while (i < pattern.size()) {
    const char c = pattern[i];
    if ((c == '{' || c == '}') && i + 1 < pattern.size() && pattern[i + 1] == c) {
      on_text(std::string(1, c));
      i += 2;
    } else if (c == '{') {
      const std::size_t end = pattern.find('}', i);
      KILN_CHECK(end != std::string::npos, context, ": unclosed '{' at offset ", i,
                 "; write '{{' for a literal brace");
      on_variable(pattern.substr(i + 1, end - i - 1));
      i = end + 1;
    } else if (c == '}') {
      throw Error(message(context, ": stray '}' at offset ", i, "; write '}}' for a literal brace"));
    } else {
      on_text(std::string(1, c));
      ++i;
    }
  }
}

std::set<std::string> pattern_variables(const std::string& pattern, const std::string& context) {
  std::set<std::string> vars;
  scan_pattern(pattern, context, [](const std::string&) {}, [&](const std::string& v) { vars.insert(v); });
  return vars;
}

std::string fill_pattern(const std::string& pattern, const std::string& context,
                         const std::function<std::string(const std::string&)>& value_of) {
  std::string out;
  scan_pattern(pattern, context, [&](const std::string& text) { out += text; },
               [&](const std::string& v) { out += value_of(v); });
  return out;
}

namespace {

std::string options_block(const std::vector<std::string>& options) {
  if (options.empty()) return "";
  std::string out = "OPTIONS:";
  for (const auto& o : options) out += "\n- " + o;
  return out;
}

std::string substitute(const std::string& pattern, const InstructRecord& record, const std::string& context) {
  return fill_pattern(pattern, context, [&](const std::string& v) {
    if (v == "options") return options_block(record.options);
    auto it = record.fields.find(v);
    KILN_CHECK(it != record.fields.end(), record.where, ": ", context, " uses {", v,
               "} but the record has no field '", v, "'");
    return it->second;
  });
}

// A 64-bit key from several values (splitmix64 finaliser), to seed independent Rng streams.
std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  std::uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string yaml_string(const YAML::Node& node, const std::string& key, const std::string& context) {
  const YAML::Node v = node[key];
  KILN_CHECK(v && v.IsScalar(), context, ": missing string '", key, "'");
  return v.as<std::string>();
}

}  // namespace

// ---- records ---------------------------------------------------------------------------------

InstructRecord parse_instruct_record(const nlohmann::json& json, const std::string& where) {
  InstructRecord record;
  record.where = where;
  if (json.contains("messages")) {
    const auto& messages = json["messages"];
    KILN_CHECK(messages.is_array() && !messages.empty(), where, ": field 'messages' must be a non-empty list");
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const std::string ctx = message(where, " messages[", i, "]");
      KILN_CHECK(messages[i].is_object(), ctx, ": expected an object with 'role' and 'content'");
      ChatTurn turn{required_string(messages[i], "role", ctx), required_string(messages[i], "content", ctx)};
      KILN_CHECK(kChatRoles.count(turn.role), ctx, ": role '", turn.role,
                 "' is not one of system, user, assistant");
      record.messages.push_back(std::move(turn));
    }
    KILN_CHECK(record.messages.back().role == "assistant", where,
               ": a chat must end with an assistant turn (the last is '", record.messages.back().role, "')");
    return record;
  }
  if (json.contains("instruction")) {
    required_string(json, "instruction", where);
    required_string(json, "output", where);
  } else if (json.contains("prompt")) {
    required_string(json, "prompt", where);
    required_string(json, "completion", where);
  } else {
    // A task-specific record (FLAN style): any string fields the templates declare, plus output.
    KILN_CHECK(json.contains("output"), where, ": missing field 'output' (a record needs 'instruction' + "
               "'output', 'prompt' + 'completion', 'messages', or task fields + 'output')");
    required_string(json, "output", where);
  }
  for (const auto& [key, value] : json.items())
    if (value.is_string()) record.fields[key] = value.get<std::string>();
  if (record.fields.count("input") && record.fields["input"].empty()) record.fields.erase("input");
  record.options = optional_string_list(json, "options", where);
  return record;
}

PreferenceRecord parse_preference_record(const nlohmann::json& json, const std::string& where) {
  PreferenceRecord out;
  out.chosen = required_string(json, "chosen", where);
  out.rejected = required_string(json, "rejected", where);
  out.prompt.where = where;
  KILN_CHECK(json.contains("prompt") || json.contains("instruction"), where,
             ": missing field 'prompt' (or 'instruction') of a preference record");
  for (const auto& [key, value] : json.items())
    if (value.is_string() && key != "chosen" && key != "rejected") out.prompt.fields[key] = value.get<std::string>();
  if (out.prompt.fields.count("input") && out.prompt.fields["input"].empty()) out.prompt.fields.erase("input");
  out.prompt.options = optional_string_list(json, "options", where);
  return out;
}

std::vector<InstructRecord> read_instruct_file(const std::string& path, const JsonlOptions& options,
                                               JsonlStats* stats) {
  std::vector<InstructRecord> records;
  JsonlStats s = read_jsonl(path, options, [&](const nlohmann::json& json, const std::string& where) {
    records.push_back(parse_instruct_record(json, where));
  });
  if (stats) *stats = s;
  return records;
}

std::vector<PreferenceRecord> read_preference_file(const std::string& path, const JsonlOptions& options,
                                                   JsonlStats* stats) {
  std::vector<PreferenceRecord> records;
  JsonlStats s = read_jsonl(path, options, [&](const nlohmann::json& json, const std::string& where) {
    records.push_back(parse_preference_record(json, where));
  });
  if (stats) *stats = s;
  return records;
}

// ---- templates -------------------------------------------------------------------------------

TemplateSet TemplateSet::load(const std::string& path) {
  std::ifstream in(path);
  KILN_CHECK(in, "cannot open template file '", path, "'");
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str(), path);
}

TemplateSet TemplateSet::parse(const std::string& yaml_text, const std::string& source) {
  TemplateSet set;
  set.source_ = source;
  YAML::Node root;
  try {
    root = load_one_yaml_document(yaml_text, source);
  } catch (const YAML::Exception& e) {
    throw Error(message(source, ": not valid YAML (", e.what(), ")"));
  }
  KILN_CHECK(root.IsMap(), source, ": a template set is a map with 'templates' (and optionally 'fields', "
             "'exemplar_separator', 'chat')");
  check_fields(root, {"fields", "exemplar_separator", "templates", "chat"}, source, "a template set");
  if (root["fields"]) set.fields_ = root["fields"].as<std::vector<std::string>>();
  if (root["exemplar_separator"]) set.exemplar_separator_ = root["exemplar_separator"].as<std::string>();
  if (root["templates"]) {
    KILN_CHECK(root["templates"].IsSequence(), source, ": 'templates' must be a list");
    for (const auto& node : root["templates"]) {
      const std::string ctx = message(source, " template ", set.templates_.size());
      KILN_CHECK(node.IsMap(), ctx, ": expected a map with name, prompt, response");
      check_fields(node, {"name", "prompt", "response"}, source, message("template ", set.templates_.size()));
      set.templates_.push_back(
          {yaml_string(node, "name", ctx), yaml_string(node, "prompt", ctx), yaml_string(node, "response", ctx)});
    }
  }
  set.chat_ = {{"system", "{content}\n\n"}, {"user", "User: {content}\n\nAssistant: "}, {"assistant", "{content}"}};
  if (root["chat"]) {
    check_fields(root["chat"], {"system", "user", "assistant"}, source, "chat");
    for (const auto& kv : root["chat"]) set.chat_[kv.first.as<std::string>()] = kv.second.as<std::string>();
  }
  KILN_CHECK(!set.templates_.empty() || root["chat"], source, ": no templates (add a 'templates' list)");
  set.check_variables();
  return set;
}

void TemplateSet::check_variables() const {
  std::set<std::string> known = kBuiltinVariables;
  known.insert(fields_.begin(), fields_.end());
  for (const auto& t : templates_)
    for (const auto* part : {&t.prompt, &t.response}) {
      const std::string ctx = message(source_, ": template '", t.name, "'");
      for (const auto& v : pattern_variables(*part, ctx))
        KILN_CHECK(known.count(v), ctx, " uses unknown variable {", v,
                   "}; known: instruction, input, output, prompt, completion, options, or declare it under 'fields'");
    }
  for (const auto& [role, pattern] : chat_) {
    const std::string ctx = message(source_, ": chat template '", role, "'");
    for (const auto& v : pattern_variables(pattern, ctx))
      KILN_CHECK(v == "content", ctx, " uses unknown variable {", v, "}; chat patterns know only {content}");
  }
}

TemplateSet TemplateSet::builtin() {
  return parse(R"(
templates:
  - name: instruction_with_input
    prompt: "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    response: "{output}"
  - name: instruction
    prompt: "### Instruction:\n{instruction}\n\n### Response:\n"
    response: "{output}"
  - name: prompt_completion
    prompt: "{prompt}"
    response: "{completion}"
)",
               "<builtin templates>");
}

// ---- rendering -------------------------------------------------------------------------------

InstructRenderer::InstructRenderer(const Tokenizer& tokenizer, TemplateSet templates, RenderOptions options)
    : tokenizer_(tokenizer), templates_(std::move(templates)), options_(options) {
  KILN_CHECK(options_.k_shot >= 0, "k_shot=", options_.k_shot, " must be >= 0");
}

bool InstructRenderer::eligible(const InstructTemplate& t, const InstructRecord& record) const {
  if (record.is_chat()) return false;
  const std::string ctx = message(templates_.source(), ": template '", t.name, "'");
  std::set<std::string> vars = pattern_variables(t.prompt, ctx);
  for (const auto& v : pattern_variables(t.response, ctx)) vars.insert(v);
  for (const auto& v : vars)
    if (v != "options" && !record.fields.count(v)) return false;
  return !record.fields.count("input") || vars.count("input");
}

const InstructTemplate& InstructRenderer::pick_template(const InstructRecord& record, std::size_t index,
                                                        std::uint64_t draw) const {
  std::vector<const InstructTemplate*> fits;
  for (const auto& t : templates_.templates())
    if (eligible(t, record)) fits.push_back(&t);
  if (fits.empty()) {
    std::string have;
    for (const auto& [k, v] : record.fields) have += (have.empty() ? "" : ", ") + k;
    throw Error(message(record.where, ": no template in ", templates_.source(),
                        " fits this record (fields: ", have, "); add a template that uses exactly these"));
  }
  const Rng rng(mix(options_.seed, mix(options_.stream, draw)), 0);
  return *fits[rng.u64(index) % fits.size()];
}

std::vector<std::size_t> InstructRenderer::draw_exemplars(const std::vector<InstructRecord>& records,
                                                          std::size_t index, std::uint64_t draw,
                                                          const InstructTemplate& t) const {
  std::vector<std::size_t> chosen;
  const std::size_t k = static_cast<std::size_t>(options_.k_shot);
  if (k == 0) return chosen;
  KILN_CHECK(records.size() > k, records[index].where, ": k_shot=", k, " needs at least ", k + 1,
             " records in the task, found ", records.size());
  const Rng rng(mix(options_.seed, mix(options_.stream, draw)), 1);
  for (std::uint64_t attempt = 0; attempt < kMaxExemplarAttempts && chosen.size() < k; ++attempt) {
    const std::size_t j = rng.u64(index * kMaxExemplarAttempts + attempt) % records.size();
    if (j == index || std::find(chosen.begin(), chosen.end(), j) != chosen.end()) continue;
    if (!eligible(t, records[j])) continue;
    chosen.push_back(j);
  }
  KILN_CHECK(chosen.size() == k, records[index].where, ": found only ", chosen.size(), " of k_shot=", k,
             " exemplars that fit template '", t.name, "' (", templates_.source(), "); lower k_shot");
  return chosen;
}

std::vector<std::size_t> InstructRenderer::exemplars(const std::vector<InstructRecord>& records,
                                                     std::size_t index, std::uint64_t draw) const {
  KILN_CHECK(index < records.size(), "record index ", index, " out of range (", records.size(), " records)");
  if (records[index].is_chat()) return {};
  return draw_exemplars(records, index, draw, pick_template(records[index], index, draw));
}

void InstructRenderer::append_record(std::vector<Piece>& pieces, const InstructTemplate& t,
                                     const InstructRecord& record, bool as_target) const {
  const std::string ctx = message(templates_.source(), ": template '", t.name, "'");
  std::string prompt = substitute(t.prompt, record, ctx);
  if (!record.options.empty() && !pattern_variables(t.prompt, ctx).count("options"))
    prompt += "\n\n" + options_block(record.options);  // the options suffix
  const std::string response = substitute(t.response, record, ctx);
  if (as_target) {
    pieces.push_back({prompt, false, false});
    pieces.push_back({response, true, true});
  } else {
    pieces.push_back({prompt + response + templates_.exemplar_separator(), false, false});
  }
}

void InstructRenderer::append_chat(std::vector<Piece>& pieces, const InstructRecord& record) const {
  for (const auto& turn : record.messages) {
    InstructRecord vars;
    vars.where = record.where;
    vars.fields["content"] = turn.content;
    const std::string text = substitute(templates_.chat().at(turn.role), vars,
                                        message(templates_.source(), ": chat template '", turn.role, "'"));
    const bool response = turn.role == "assistant";
    pieces.push_back({text, response, response});
  }
}

Example InstructRenderer::tokenize(const std::vector<Piece>& pieces) const {
  Example ex;
  for (const auto& piece : pieces) {
    const auto ids = tokenizer_.encode(piece.text);
    ex.ids.insert(ex.ids.end(), ids.begin(), ids.end());
    ex.mask.insert(ex.mask.end(), ids.size(), piece.response ? 1 : 0);
    if (piece.eot) {
      ex.ids.push_back(tokenizer_.eot());
      ex.mask.push_back(1);
    }
  }
  return ex;
}

Example InstructRenderer::render(const std::vector<InstructRecord>& records, std::size_t index,
                                 std::uint64_t draw) const {
  KILN_CHECK(index < records.size(), "record index ", index, " out of range (", records.size(), " records)");
  const InstructRecord& record = records[index];
  std::vector<Piece> pieces;
  if (record.is_chat()) {
    KILN_CHECK(options_.k_shot == 0, record.where, ": k_shot=", options_.k_shot,
               " is not defined for chat records; set k_shot: 0 for this task");
    append_chat(pieces, record);
    return tokenize(pieces);
  }
  const InstructTemplate& t = pick_template(record, index, draw);
  for (std::size_t j : draw_exemplars(records, index, draw, t)) append_record(pieces, t, records[j], false);
  append_record(pieces, t, record, true);
  return tokenize(pieces);
}

PreferencePair InstructRenderer::render_preference(const std::vector<PreferenceRecord>& records,
                                                   std::size_t index, std::uint64_t draw) const {
  KILN_CHECK(index < records.size(), "record index ", index, " out of range (", records.size(), " records)");
  InstructRecord chosen = records[index].prompt, rejected = chosen;
  chosen.fields["output"] = chosen.fields["completion"] = records[index].chosen;
  rejected.fields["output"] = rejected.fields["completion"] = records[index].rejected;
  const InstructTemplate& t = pick_template(chosen, index, draw);
  std::vector<Piece> a, b;
  append_record(a, t, chosen, true);
  append_record(b, t, rejected, true);
  PreferencePair pair{tokenize(a), tokenize(b), tokenizer_.encode(a[0].text).size()};
  return pair;
}

// ---- mixtures --------------------------------------------------------------------------------

MixtureConfig MixtureConfig::load(const std::string& path) {
  YAML::Node root;
  try {
    root = load_one_yaml_document(read_file(path), path);
  } catch (const YAML::Exception& e) {
    throw Error(message(path, ": cannot read the mixture (", e.what(), ")"));
  }
  KILN_CHECK(root.IsMap() && root["tasks"] && root["tasks"].IsSequence(), path, ": a mixture needs a 'tasks' list");
  check_fields(root, {"seed", "skip_bad_records", "tasks", "holdout_clusters", "related_clusters"}, path, "a mixture");
  MixtureConfig config;
  if (root["seed"]) config.seed = root["seed"].as<std::uint64_t>();
  if (root["skip_bad_records"]) config.skip_bad_records = root["skip_bad_records"].as<bool>();
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  auto resolve = [&](const std::string& p) { return std::filesystem::path(p).is_absolute() ? p : (dir / p).string(); };
  std::set<std::string> names;
  for (const auto& node : root["tasks"]) {
    const std::string ctx = message(path, " task ", config.tasks.size());
    check_fields(node, {"name", "cluster", "file", "templates", "weight", "cap", "k_shot"}, path, message("task ", config.tasks.size()));
    MixtureTask task;
    task.name = yaml_string(node, "name", ctx);
    if (node["cluster"]) task.cluster = yaml_string(node, "cluster", ctx);
    task.file = resolve(yaml_string(node, "file", ctx));
    if (node["templates"]) task.templates = resolve(node["templates"].as<std::string>());
    if (node["weight"]) task.weight = node["weight"].as<double>();
    if (node["cap"]) task.cap = node["cap"].as<std::int64_t>();
    if (node["k_shot"]) task.k_shot = node["k_shot"].as<int>();
    KILN_CHECK(names.insert(task.name).second, ctx, ": task name '", task.name, "' appears twice");
    KILN_CHECK(task.weight >= 0, ctx, " (", task.name, "): weight=", task.weight, " must be >= 0");
    KILN_CHECK(task.cap >= 0, ctx, " (", task.name, "): cap=", task.cap, " must be >= 0 (0: no cap)");
    KILN_CHECK(task.k_shot >= 0, ctx, " (", task.name, "): k_shot=", task.k_shot, " must be >= 0");
    config.tasks.push_back(task);
  }
  // The held-out protocol: the clusters held out (with their related groups), their tasks, and
  // the training tasks that would leak them.
  std::set<std::string> clusters, held;
  for (const MixtureTask& t : config.tasks) clusters.insert(t.cluster);
  if (const YAML::Node h = root["holdout_clusters"]) {
    KILN_CHECK(h.IsSequence(), path, ":", h.Mark().line + 1, ": holdout_clusters must be a list of cluster names");
    for (const auto& c : h) {
      const std::string name = c.as<std::string>();
      if (!clusters.count(name) || name.empty()) {
        std::string known;
        for (const auto& k : clusters)
          if (!k.empty()) known += (known.empty() ? "" : ", ") + k;
        throw Error(message(path, ":", c.Mark().line + 1, ": holdout_clusters names '", name,
                            "', which no task has as its cluster (the clusters are: ", known.empty() ? "none" : known, ")"));
      }
      held.insert(name);
    }
  }
  if (const YAML::Node groups = root["related_clusters"]) {
    KILN_CHECK(groups.IsSequence(), path, ":", groups.Mark().line + 1, ": related_clusters must be a list of lists of clusters");
    for (std::size_t before = 0; before != held.size();) {  // until no group adds a cluster
      before = held.size();
      for (const auto& g : groups) {
        KILN_CHECK(g.IsSequence(), path, ":", g.Mark().line + 1, ": each related_clusters entry is a list of clusters");
        bool any = false;
        for (const auto& c : g) any = any || held.count(c.as<std::string>());
        if (any)
          for (const auto& c : g) held.insert(c.as<std::string>());
      }
    }
  }
  config.holdout_clusters.assign(held.begin(), held.end());
  if (!held.empty()) {
    std::vector<MixtureTask> trained;
    for (const MixtureTask& t : config.tasks) (held.count(t.cluster) ? config.held_out : trained).push_back(t);
    config.tasks.clear();
    for (const MixtureTask& t : trained) {
      std::string why;  // (task names are unique in a mixture, so a shared data file is the leak)
      for (const MixtureTask& h : config.held_out)
        if (t.file == h.file) why = message("its data file ", t.file, " is also held-out task ", h.name, "'s");
      if (why.empty())
        config.tasks.push_back(t);
      else
        config.dropped.push_back({t.name, why});
    }
    KILN_CHECK(!config.tasks.empty(), path, ": holding out ", config.holdout_clusters.size(),
               " cluster(s) leaves no task to train on");
  }
  return config;
}

nlohmann::json MixtureConfig::split_record() const {
  nlohmann::json j = {{"holdout_clusters", holdout_clusters}, {"trained", nlohmann::json::array()},
                      {"held_out", nlohmann::json::array()}, {"dropped", nlohmann::json::array()}};
  for (const MixtureTask& t : tasks) j["trained"].push_back({{"task", t.name}, {"cluster", t.cluster}, {"file", t.file}});
  for (const MixtureTask& t : held_out) j["held_out"].push_back({{"task", t.name}, {"cluster", t.cluster}, {"file", t.file}});
  for (const auto& [task, why] : dropped) j["dropped"].push_back({{"task", task}, {"why", why}});
  return j;
}

InstructMixture::InstructMixture(const MixtureConfig& config, const Tokenizer& tokenizer) {
  for (std::size_t t = 0; t < config.tasks.size(); ++t) {
    const MixtureTask& task = config.tasks[t];
    JsonlStats stats;
    records_.push_back(read_instruct_file(task.file, {config.skip_bad_records}, &stats));
    skipped_[task.name] = stats.skipped;
    KILN_CHECK(!records_.back().empty(), "task '", task.name, "': no usable records in ", task.file);
    names_.push_back(task.name);
    renderers_.emplace_back(tokenizer, task.templates.empty() ? TemplateSet::builtin() : TemplateSet::load(task.templates),
                            RenderOptions{config.seed, t, task.k_shot});
    // Keep a seeded subset of at most `cap` records, then take weight * kept examples.
    std::vector<std::uint64_t> kept(records_.back().size());
    for (std::size_t i = 0; i < kept.size(); ++i) kept[i] = i;
    shuffle(kept, Rng(mix(config.seed, t), 2));
    if (task.cap > 0 && kept.size() > static_cast<std::size_t>(task.cap)) kept.resize(task.cap);
    const auto count = static_cast<std::uint64_t>(std::llround(task.weight * static_cast<double>(kept.size())));
    for (std::uint64_t c = 0; c < count; ++c)
      order_.push_back({static_cast<std::uint32_t>(t), kept[c % kept.size()], c / kept.size()});
  }
  std::vector<std::uint64_t> perm(order_.size());
  for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = i;
  shuffle(perm, Rng(mix(config.seed, 0xA11), 3));
  std::vector<Slot> shuffled;
  shuffled.reserve(order_.size());
  for (auto i : perm) shuffled.push_back(order_[i]);
  order_ = std::move(shuffled);
}

Example InstructMixture::example(std::size_t i) const {
  KILN_CHECK(i < order_.size(), "mixture example ", i, " out of range (", order_.size(), " per pass)");
  const Slot& s = order_[i];
  return renderers_[s.task].render(records_[s.task], s.record, s.draw);
}

const std::string& InstructMixture::task_of(std::size_t i) const {
  KILN_CHECK(i < order_.size(), "mixture example ", i, " out of range (", order_.size(), " per pass)");
  return names_[order_[i].task];
}

}  // namespace kiln
