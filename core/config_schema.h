// The config schema: every key of config.h declared once, with its type (the member it binds),
// allowed values and help text. config.cpp parses, checks, writes and documents configs by
// walking this table; config_schema.cpp fills it. Internal to core/.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "core/config.h"

namespace kiln::config_schema {


// Where a key's value lives inside one ExperimentConfig; the alternative held is the key's type.
using Slot = std::variant<int*, std::uint64_t*, float*, double*, std::string*>;
inline const char* const kTypeNames[] = {"int", "uint64", "float", "double", "string"};

// The values a key accepts: numeric bounds (each open or closed), enum choices, non-empty.
// Built by the helpers below: at_least(1) is [1, inf), above(0).up_to(10) is (0, 10].
struct Limits {
  std::optional<double> min, max;
  bool min_open = false, max_open = false;  // open: the bound itself is not allowed
  std::vector<std::string> choices;         // non-empty: the key is a string enum
  bool non_empty = false;                   // a string that must not be ""

  Limits up_to(double hi, bool open = false) const {
    Limits l = *this;
    l.max = hi;
    l.max_open = open;
    return l;
  }
  Limits below(double hi) const { return up_to(hi, true); }
};

inline Limits at_least(double lo, bool open = false) {
  Limits l;
  l.min = lo;
  l.min_open = open;
  return l;
}
inline Limits above(double lo) { return at_least(lo, true); }
inline Limits between(double lo, double hi) { return at_least(lo).up_to(hi); }
inline Limits one_of(const std::vector<std::string>& choices) {
  Limits l;
  l.choices = choices;
  return l;
}
inline Limits not_empty() {
  Limits l;
  l.non_empty = true;
  return l;
}

// What a relative path in a string key is relative to. Inputs a config file names (data, the
// tokenizer) are found beside that file, wherever kiln runs from; outputs (run and cache
// folders), and every path given on the command line, are relative to the working directory.
// load_config stores every path absolute, so a saved config means the same from anywhere.
enum class PathBase { none, config_file, working_dir };

struct Key {
  std::string section;  // "model"
  std::string name;     // "n_layer"
  std::string dotted;   // "model.n_layer"
  Limits limits;
  std::string help;
  std::function<Slot(ExperimentConfig&)> slot;
  PathBase path = PathBase::none;
  bool path_list = false;            // comma-separated paths, each maybe PATH@WEIGHT (blends)
  std::vector<std::string> aliases;  // names other tools use for it (learning_rate: optim.lr)
};

struct Section {
  std::string name;
  std::string help;
};

struct Schema {
  std::vector<Section> sections;
  std::vector<Key> keys;
};

// Declares the keys of one section: binds "section.name" to config.*part.*member.
template <class Part>
class SectionBuilder {
 public:
  SectionBuilder(Schema& schema, const char* name, Part ExperimentConfig::*part, const char* help)
      : schema_(schema), name_(name), part_(part) {
    schema_.sections.push_back({name, help});
  }

  template <class T>
  SectionBuilder& key(const char* name, T Part::*member, Limits limits, const char* help) {
    Part ExperimentConfig::*part = part_;
    Key& key = schema_.keys.emplace_back();
    key.section = name_;
    key.name = name;
    key.dotted = name_ + "." + name;
    key.limits = std::move(limits);
    key.help = help;
    key.slot = [part, member](ExperimentConfig& c) -> Slot { return &((c.*part).*member); };
    return *this;
  }
  // The key just declared holds a path (or, with list, comma-separated paths) relative to base.
  SectionBuilder& path(PathBase base, bool list = false) {
    schema_.keys.back().path = base;
    schema_.keys.back().path_list = list;
    return *this;
  }
  // Names other frameworks use for the key just declared, for "did you mean" suggestions.
  SectionBuilder& aka(std::vector<std::string> names) {
    schema_.keys.back().aliases = std::move(names);
    return *this;
  }

 private:
  Schema& schema_;
  std::string name_;
  Part ExperimentConfig::*part_;
};


const Schema& schema();

}  // namespace kiln::config_schema
