// Evaluation task files (core/eval/task.h).
#include "core/eval/task.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/data/instruct.h"
#include "core/data/jsonl.h"
#include "core/checkpoint/atomic_file.h"
#include "core/data/yaml_fields.h"
#include "core/yaml_document.h"
#include "kernels/error.h"

namespace kiln {

namespace {

const std::set<std::string> kTaskKeys = {"task",           "cluster",          "output_type",       "dataset",
                                         "fewshot_dataset", "num_fewshot",      "fewshot_seed",      "target_delimiter",
                                         "fewshot_delimiter", "doc_to_text",    "doc_to_target",     "doc_to_choice",
                                         "templates",      "generation"};
const std::set<std::string> kTemplateKeys = {"name", "doc_to_text", "doc_to_target", "doc_to_choice"};
const std::set<std::string> kGenerationKeys = {"until", "max_gen_toks"};

std::string scalar(const YAML::Node& node, const std::string& key, const std::string& file) {
  const YAML::Node v = node[key];
  KILN_CHECK(v.IsScalar(), yaml_where(file, v), ": '", key, "' must be a string");
  return v.as<std::string>();
}

std::vector<EvalDoc> read_docs(const std::string& path, const std::string& key, const std::string& file) {
  std::error_code ec;
  KILN_CHECK(std::filesystem::exists(path, ec), file, ": ", key, " ", path, " does not exist");
  std::vector<EvalDoc> docs;
  read_jsonl(path, JsonlOptions{}, [&](const nlohmann::json& record, const std::string& where) {
    KILN_CHECK(record.is_object(), where, ": a document must be a JSON object");
    docs.push_back({where, record});
  });
  KILN_CHECK(!docs.empty(), file, ": ", key, " ", path, " holds no documents");
  return docs;
}

// The value of {field} in a document: strings as they are, other JSON in its compact form.
std::string field_text(const EvalDoc& doc, const std::string& field, const std::string& context) {
  KILN_CHECK(doc.record.contains(field), doc.where, ": ", context, " uses '", field, "' but the document has no such field");
  const nlohmann::json& v = doc.record[field];
  return v.is_string() ? v.get<std::string>() : v.dump();
}

std::string fill(const std::string& pattern, const EvalDoc& doc, const std::string& context) {
  return fill_pattern(pattern, context, [&](const std::string& field) { return field_text(doc, field, context); });
}

EvalTask parse_task(const YAML::Node& node, const std::string& file) {
  KILN_CHECK(node.IsMap(), yaml_where(file, node), ": a task is a map of fields (task, output_type, dataset, ...)");
  check_fields(node, kTaskKeys, file, "a task");
  EvalTask t;
  t.source = file;
  KILN_CHECK(node["task"], yaml_where(file, node), ": the task has no 'task' (its name)");
  t.name = scalar(node, "task", file);
  if (node["cluster"]) t.cluster = scalar(node, "cluster", file);
  KILN_CHECK(node["output_type"], yaml_where(file, node), ": task ", t.name, " has no output_type (multiple_choice or generate_until)");
  t.output_type = scalar(node, "output_type", file);
  KILN_CHECK(t.output_type == "multiple_choice" || t.output_type == "generate_until" ||
                 t.output_type == "loglikelihood_rolling",
             yaml_where(file, node["output_type"]), ": output_type '", t.output_type,
             "' is not one kiln scores; use multiple_choice, generate_until or loglikelihood_rolling");
  const std::filesystem::path base = std::filesystem::path(file).parent_path();
  auto path_of = [&](const std::string& key) { return (base / scalar(node, key, file)).string(); };
  KILN_CHECK(node["dataset"], yaml_where(file, node), ": task ", t.name, " has no dataset (a JSONL file of documents)");
  t.docs = read_docs(path_of("dataset"), "dataset", yaml_where(file, node["dataset"]));
  if (node["fewshot_dataset"])
    t.fewshot = read_docs(path_of("fewshot_dataset"), "fewshot_dataset", yaml_where(file, node["fewshot_dataset"]));
  if (const YAML::Node k = node["num_fewshot"]) {
    t.num_fewshot.clear();
    if (k.IsSequence())
      for (const auto& v : k) t.num_fewshot.push_back(v.as<int>());
    else
      t.num_fewshot.push_back(k.as<int>());
    for (int v : t.num_fewshot) {
      KILN_CHECK(v >= 0, yaml_where(file, k), ": num_fewshot ", v, " is negative");
      KILN_CHECK(static_cast<std::size_t>(v) <= t.fewshot.size(), yaml_where(file, k), ": num_fewshot ", v, " is larger than the ",
                 t.fewshot.size(), " exemplars of fewshot_dataset", t.fewshot.empty() ? " (none is set)" : "",
                 "; lower it or give more exemplars");
    }
  }
  if (node["fewshot_seed"]) t.fewshot_seed = node["fewshot_seed"].as<std::uint64_t>();
  if (node["target_delimiter"]) t.target_delimiter = scalar(node, "target_delimiter", file);
  if (node["fewshot_delimiter"]) t.fewshot_delimiter = scalar(node, "fewshot_delimiter", file);
  if (const YAML::Node g = node["generation"]) {
    check_fields(g, kGenerationKeys, file, "generation");
    if (g["until"])
      for (const auto& v : g["until"]) t.until.push_back(v.as<std::string>());
    if (g["max_gen_toks"]) t.max_gen_toks = g["max_gen_toks"].as<int>();
    KILN_CHECK(t.max_gen_toks >= 1, yaml_where(file, g), ": max_gen_toks must be at least 1");
  }
  EvalTemplate shared;
  shared.name = "default";
  for (const char* key : {"doc_to_text", "doc_to_target", "doc_to_choice"})
    if (node[key])
      (std::string(key) == "doc_to_text" ? shared.doc_to_text
       : std::string(key) == "doc_to_target" ? shared.doc_to_target
                                              : shared.doc_to_choice) = scalar(node, key, file);
  if (const YAML::Node list = node["templates"]) {
    KILN_CHECK(list.IsSequence() && list.size() > 0, yaml_where(file, list), ": templates must be a non-empty list");
    for (const auto& tn : list) {
      check_fields(tn, kTemplateKeys, file, "a template");
      EvalTemplate tp = shared;
      tp.name = tn["name"] ? scalar(tn, "name", file) : message("t", t.templates.size() + 1);
      if (tn["doc_to_text"]) tp.doc_to_text = scalar(tn, "doc_to_text", file);
      if (tn["doc_to_target"]) tp.doc_to_target = scalar(tn, "doc_to_target", file);
      if (tn["doc_to_choice"]) tp.doc_to_choice = scalar(tn, "doc_to_choice", file);
      t.templates.push_back(tp);
    }
  } else {
    t.templates.push_back(shared);
  }
  // Every template against every document and exemplar now, so a missing field stops the run
  // before any scoring.
  for (const EvalTemplate& tp : t.templates) {
    const std::string context = message(file, ": task ", t.name, ", template ", tp.name);
    KILN_CHECK(!tp.doc_to_text.empty(), context, " has no doc_to_text");
    KILN_CHECK(!tp.doc_to_target.empty() || t.rolling(), context, " has no doc_to_target");
    KILN_CHECK(!t.multiple_choice() || !tp.doc_to_choice.empty(), context,
               " has no doc_to_choice (the field holding each document's options)");
    for (const auto* docs : {&t.docs, &t.fewshot})
      for (const EvalDoc& d : *docs) {
        t.text(tp, d);
        if (!t.rolling()) t.target_text(tp, d);  // multiple choice: checks the options and gold indices too
      }
  }
  return t;
}

}  // namespace

std::string EvalTask::text(const EvalTemplate& t, const EvalDoc& doc) const {
  return fill(t.doc_to_text, doc, message("template ", t.name, "'s doc_to_text"));
}

std::vector<std::string> EvalTask::choices(const EvalTemplate& t, const EvalDoc& doc) const {
  const std::string& field = t.doc_to_choice;
  KILN_CHECK(doc.record.contains(field) && doc.record[field].is_array() && !doc.record[field].empty(), doc.where,
             ": template ", t.name, " takes the options from '", field,
             "', which this document lacks or is not a non-empty list");
  std::vector<std::string> out;
  for (const auto& v : doc.record[field]) out.push_back(v.is_string() ? v.get<std::string>() : v.dump());
  return out;
}

std::vector<int> EvalTask::gold(const EvalTemplate& t, const EvalDoc& doc) const {
  if (!multiple_choice()) return {};
  const std::vector<std::string> options = choices(t, doc);
  const std::string& field = t.doc_to_target;
  KILN_CHECK(doc.record.contains(field), doc.where, ": template ", t.name, " takes the answer from '", field,
             "', which this document lacks");
  const nlohmann::json& v = doc.record[field];
  std::vector<int> out;
  auto index = [&](const nlohmann::json& x) {
    KILN_CHECK(x.is_number_integer() && x.get<int>() >= 0 && x.get<std::size_t>() < options.size(), doc.where, ": '",
               field, "' = ", x.dump(), " is not an option index (0..", options.size() - 1, ")");
    out.push_back(x.get<int>());
  };
  if (v.is_array()) {
    for (const auto& x : v) index(x);
  } else if (v.is_string()) {
    const auto it = std::find(options.begin(), options.end(), v.get<std::string>());
    KILN_CHECK(it != options.end(), doc.where, ": the answer '", v.get<std::string>(), "' is not one of the options");
    out.push_back(static_cast<int>(it - options.begin()));
  } else {
    index(v);
  }
  KILN_CHECK(!out.empty(), doc.where, ": '", field, "' lists no correct option");
  return out;
}

std::string EvalTask::target_text(const EvalTemplate& t, const EvalDoc& doc) const {
  if (multiple_choice()) return choices(t, doc)[gold(t, doc).front()];
  return fill(t.doc_to_target, doc, message("template ", t.name, "'s doc_to_target"));
}

std::vector<EvalTask> load_eval_tasks(const std::string& path) {
  YAML::Node root;
  std::string text;
  try {
    text = read_file(path);
  } catch (const Error&) {
    throw Error(message("task file ", path, " cannot be read"));
  }
  try {
    root = load_one_yaml_document(text, path);
  } catch (const YAML::Exception& e) {
    throw Error(message(path, ":", e.mark.line + 1, ": not valid YAML: ", e.msg));
  }
  std::vector<EvalTask> tasks;
  if (root.IsMap() && root["tasks"]) {
    KILN_CHECK(root.size() == 1, path, ": a file with 'tasks:' holds nothing else");
    for (const auto& node : root["tasks"]) tasks.push_back(parse_task(node, path));
  } else {
    tasks.push_back(parse_task(root, path));
  }
  std::set<std::string> names;
  for (const EvalTask& t : tasks) KILN_CHECK(names.insert(t.name).second, path, ": two tasks are named ", t.name);
  return tasks;
}

}  // namespace kiln
