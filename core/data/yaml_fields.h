// The key check shared by the YAML files kiln reads besides experiment configs (mixtures,
// template sets, evaluation tasks): a map may hold only the keys its reader knows.
#pragma once

#include <yaml-cpp/yaml.h>

#include <set>
#include <string>

#include "kernels/error.h"

namespace kiln {

// "file:line" of a node.
inline std::string yaml_where(const std::string& file, const YAML::Node& node) {
  return message(file, ":", node.Mark().line + 1);
}

// An Error at the first key of `node` not in `valid`: "file:line: <what> has no field 'key'; the
// fields are ..." (what: "a task", "a template", ...).
inline void check_fields(const YAML::Node& node, const std::set<std::string>& valid, const std::string& file,
                         const std::string& what) {
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (valid.count(key)) continue;
    std::string list;
    for (const auto& v : valid) list += (list.empty() ? "" : ", ") + v;
    throw Error(message(yaml_where(file, kv.first), ": ", what, " has no field '", key, "'; the fields are ", list));
  }
}

}  // namespace kiln
