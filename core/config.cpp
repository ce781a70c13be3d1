// Experiment configuration: the schema table, YAML parsing, command-line overrides, validation,
// the resolved-config writer and the key reference.
// Every key is declared once, in the *_keys() functions below: a dotted name bound to a member of
// ExperimentConfig, with its allowed values and help text; its default is whatever the struct in
// config.h says. parse_config, apply_overrides, to_yaml and config_reference all walk that one
// table, so a key added there is parsed, checked, saved and documented with no other edit.
#include "core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <variant>

#include "core/config_schema.h"
#include "core/model/attention_layout.h"
#include "core/yaml_document.h"
#include "kernels/error.h"

namespace kiln {
namespace {

using namespace config_schema;  // Schema, Key, Limits, schema()

const ExperimentConfig& defaults() {
  static const ExperimentConfig config;
  return config;
}

// Read-only access through the same binding (the slot is only read, never written).
Slot read_slot(const Key& key, const ExperimentConfig& config) {
  return key.slot(const_cast<ExperimentConfig&>(config));
}

std::string type_name(const Key& key) {
  if (!key.limits.choices.empty()) return "enum";
  return kTypeNames[read_slot(key, defaults()).index()];
}

const Key* find_key(const std::string& dotted) {
  for (const Key& key : schema().keys)
    if (key.dotted == dotted) return &key;
  return nullptr;
}

// ---- Text helpers ----

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? separator : "") + parts[i];
  return out;
}

std::vector<std::string> section_names() {
  std::vector<std::string> names;
  for (const Section& section : schema().sections) names.push_back(section.name);
  return names;
}

std::size_t levenshtein(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above_cell = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above_cell;
    }
  }
  return row[b.size()];
}

std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (const std::string& candidate : candidates) {
    std::size_t distance = levenshtein(word, candidate);
    if (distance < best_distance) best = candidate, best_distance = distance;
  }
  return best;
}

// The first letters of a snake_case name: "learning_rate" -> "lr".
std::string initials(const std::string& name) {
  std::string out;
  for (std::size_t i = 0; i < name.size(); ++i)
    if (name[i] != '_' && (i == 0 || name[i - 1] == '_')) out += name[i];
  return out;
}

// The valid key a mistyped dotted key most likely meant, or "" when none is close: a key that other
// tools call by that name (optim.learning_rate -> optim.lr), the same name in another section
// (model.lr -> optim.lr), a key named by the typed name's initials (train.max_steps for max_s),
// else the nearest by edit distance if it is within a third of the name, the typed section first.
std::string suggest_key(const std::string& dotted) {
  const std::size_t dot = dotted.find('.');
  const std::string section = dot == std::string::npos ? "" : dotted.substr(0, dot);
  const std::string leaf = dotted.substr(dot + 1);
  for (const Key& key : schema().keys)
    if (std::ranges::count(key.aliases, leaf) > 0) return key.dotted;
  for (const Key& key : schema().keys)
    if (key.name == leaf) return key.dotted;
  if (leaf.find('_') != std::string::npos) {
    const std::string short_name = initials(leaf);
    for (const Key& key : schema().keys)
      if (key.name == short_name) return key.dotted;
  }
  const std::size_t close = std::max<std::size_t>(2, leaf.size() / 3);
  std::vector<std::string> in_section, all;
  for (const Key& key : schema().keys) {
    if (key.section == section) in_section.push_back(key.name);
    all.push_back(key.dotted);
  }
  if (!in_section.empty()) {
    const std::string best = nearest(leaf, in_section);
    if (levenshtein(leaf, best) <= close) return section + "." + best;
  }
  const std::string best = nearest(dotted, all);
  return levenshtein(dotted, best) <= close ? best : "";
}

std::string unknown_key_message(const std::string& dotted) {
  const std::string suggestion = suggest_key(dotted);
  if (!suggestion.empty()) return "unknown key '" + dotted + "'; did you mean '" + suggestion + "'?";
  const std::string section = dotted.substr(0, dotted.find('.'));
  std::vector<std::string> names;
  for (const Key& key : schema().keys)
    if (key.section == section) names.push_back(key.name);
  return "unknown key '" + dotted + "'; " +
         (names.empty() ? "sections: " + join(section_names(), ", ")
                        : "the keys of '" + section + "' are " + join(names, ", ")) +
         " (`kiln config` describes every key)";
}

std::string unknown_section_message(const std::string& name) {
  for (const Key& key : schema().keys)
    if (key.name == name)
      return "unknown section '" + name + "'; '" + name + "' is a key of section '" + key.section +
             "': write it under '" + key.section + ":' (" + key.dotted + ")";
  return "unknown section '" + name + "'; did you mean '" + nearest(name, section_names()) +
         "'? (sections: " + join(section_names(), ", ") + ")";
}

template <class Number>
std::string shortest(Number value) {
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

// A YAML double-quoted string that reads back as exactly `text`.
std::string quote(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (byte < 0x20 || byte == 0x7f) {
      char escape[8];
      std::snprintf(escape, sizeof(escape), "\\x%02x", byte);
      out += escape;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string format_value(int value) { return std::to_string(value); }
std::string format_value(std::uint64_t value) { return std::to_string(value); }
std::string format_value(float value) { return shortest(value); }
std::string format_value(double value) { return shortest(value); }
std::string format_value(const std::string& value) { return quote(value); }

std::string format_slot(const Slot& slot) {
  return std::visit([](auto* value) { return format_value(*value); }, slot);
}

// "x.yaml:7" for a node of the file, "x.yaml" when yaml-cpp has no position.
std::string at(const std::string& name, const YAML::Mark& mark) {
  return mark.line >= 0 ? name + ":" + std::to_string(mark.line + 1) : name;
}

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw Error(where + ": " + what);
}

// ---- Allowed values ----

std::string number_text(double value) { return shortest(value); }

// "[1, 1024]", "> 0", "pre|post": the allowed values, for the reference table.
std::string describe_allowed(const Key& key) {
  const Limits& l = key.limits;
  if (!l.choices.empty()) return join(l.choices, "|");
  if (l.min && l.max)
    return std::string(l.min_open ? "(" : "[") + number_text(*l.min) + ", " + number_text(*l.max) +
           (l.max_open ? ")" : "]");
  if (l.min) return std::string(l.min_open ? "> " : ">= ") + number_text(*l.min);
  if (l.max) return std::string(l.max_open ? "< " : "<= ") + number_text(*l.max);
  return l.non_empty ? "non-empty" : "any";
}

// Throws unless value lies in the key's bounds and in [type_min, type_max] (the C++ type's).
void check_number(const Key& key, double value, const std::string& text, const std::string& where,
                  double type_min = -HUGE_VAL, double type_max = HUGE_VAL) {
  const Limits& l = key.limits;
  bool ok = !(l.min && (l.min_open ? value <= *l.min : value < *l.min)) &&
            !(l.max && (l.max_open ? value >= *l.max : value > *l.max)) && value >= type_min &&
            value <= type_max;
  if (ok) return;
  std::vector<std::string> rules;
  double low = l.min ? std::max(*l.min, type_min) : type_min;
  double high = l.max ? std::min(*l.max, type_max) : type_max;
  if (std::isfinite(low) && (l.min || value < low))
    rules.push_back(std::string(l.min_open && low == *l.min ? "> " : ">= ") + number_text(low));
  if (std::isfinite(high) && (l.max || value > high))
    rules.push_back(std::string(l.max_open && high == *l.max ? "< " : "<= ") + number_text(high));
  fail(where, key.dotted + ": " + text + " is out of range; it must be " + join(rules, " and "));
}

void check_string(const Key& key, const std::string& value, const std::string& where) {
  const Limits& l = key.limits;
  if (!l.choices.empty() &&
      std::find(l.choices.begin(), l.choices.end(), value) == l.choices.end()) {
    std::string hint = l.choices.size() > 1 && levenshtein(value, nearest(value, l.choices)) <= 2
                           ? "; did you mean '" + nearest(value, l.choices) + "'?"
                           : "";
    fail(where, key.dotted + ": '" + value + "' is not a valid choice; use one of " +
                    join(l.choices, ", ") + hint);
  }
  if (l.non_empty && value.empty())
    fail(where, key.dotted + ": must not be empty; give it a value, e.g. " + key.dotted + "=" +
                    format_slot(read_slot(key, defaults())));
}

// ---- Reading one value (from a YAML node or a command-line override) ----

struct RawValue {
  enum class Kind { kPlain, kQuoted, kNull, kMap, kList };
  Kind kind;
  std::string text;
};

RawValue raw_from_node(const YAML::Node& node) {
  if (node.IsNull()) return {RawValue::Kind::kNull, ""};
  if (node.IsMap()) return {RawValue::Kind::kMap, ""};
  if (node.IsSequence()) return {RawValue::Kind::kList, ""};
  // yaml-cpp tags quoted scalars "!" and plain ones "?".
  return {node.Tag() == "!" ? RawValue::Kind::kQuoted : RawValue::Kind::kPlain, node.Scalar()};
}

std::string describe(const RawValue& raw) {
  using Kind = RawValue::Kind;
  if (raw.kind == Kind::kNull) return "nothing";
  if (raw.kind == Kind::kMap) return "a map";
  if (raw.kind == Kind::kList) return "a list";
  return raw.kind == Kind::kQuoted ? "the string \"" + raw.text + "\"" : "'" + raw.text + "'";
}

// What a number key says about a value it cannot read: "'four'", "the string "4" (numbers ...)".
std::string describe_as_number(const RawValue& raw) {
  return describe(raw) +
         (raw.kind == RawValue::Kind::kQuoted ? "; write numbers without quotes" : "");
}

std::string without_plus(const std::string& text) {
  return text.size() > 1 && text[0] == '+' ? text.substr(1) : text;
}

// Parses all of `text` as a Number; std::errc::result_out_of_range when it does not fit.
template <class Number>
std::errc parse_all(const std::string& text, Number& out) {
  const std::string t = without_plus(text);
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
  if (ec == std::errc() && end != t.data() + t.size()) return std::errc::invalid_argument;
  return t.empty() ? std::errc::invalid_argument : ec;
}

// The message for text that is not an integer; points out 1e3 and 3.0, which YAML reads as floats.
std::string not_an_integer(const Key& key, const RawValue& raw, const char* what) {
  double value = 0;
  std::string message = key.dotted + ": expected " + what + ", got " + describe_as_number(raw);
  bool float_form = raw.text.find_first_of(".eE") != std::string::npos;
  if (raw.kind == RawValue::Kind::kPlain && float_form &&
      parse_all(raw.text, value) == std::errc() && std::isfinite(value) &&
      value == std::floor(value) && std::fabs(value) < 1e18)
    message += "; integer keys take no decimal point or exponent: write " +
               std::to_string(static_cast<long long>(value));
  return message;
}

void parse_into(int& out, const Key& key, const RawValue& raw, const std::string& where) {
  long long value = 0;
  std::errc ec =
      raw.kind == RawValue::Kind::kPlain ? parse_all(raw.text, value) : std::errc::invalid_argument;
  if (ec == std::errc::invalid_argument) fail(where, not_an_integer(key, raw, "an integer"));
  double as_double =
      ec == std::errc() ? static_cast<double>(value) : (raw.text[0] == '-' ? -HUGE_VAL : HUGE_VAL);
  check_number(key, as_double, raw.text, where, std::numeric_limits<int>::min(),
               std::numeric_limits<int>::max());
  out = static_cast<int>(value);
}

void parse_into(std::uint64_t& out, const Key& key, const RawValue& raw, const std::string& where) {
  std::uint64_t value = 0;
  std::errc ec = raw.kind == RawValue::Kind::kPlain && !raw.text.starts_with("-")
                     ? parse_all(raw.text, value)
                     : std::errc::invalid_argument;
  if (ec == std::errc::invalid_argument)
    fail(where, not_an_integer(key, raw, "a non-negative integer"));
  if (ec != std::errc())
    fail(where, key.dotted + ": " + raw.text + " is out of range; it must be <= " +
                    std::to_string(std::numeric_limits<std::uint64_t>::max()));
  check_number(key, static_cast<double>(value), raw.text, where);
  out = value;
}

template <std::floating_point Real>
void parse_into(Real& out, const Key& key, const RawValue& raw, const std::string& where) {
  Real value = 0;
  std::errc ec =
      raw.kind == RawValue::Kind::kPlain ? parse_all(raw.text, value) : std::errc::invalid_argument;
  if (ec == std::errc::invalid_argument)
    fail(where, key.dotted + ": expected a number, got " + describe_as_number(raw));
  if (ec != std::errc())
    fail(where, key.dotted + ": " + raw.text + " is too large or too small for a " +
                    (sizeof(Real) == 4 ? "32-bit float (about 1e-38 to 3e38)"
                                       : "64-bit float (about 1e-308 to 1e308)"));
  if (!std::isfinite(value))
    fail(where, key.dotted + ": expected a finite number, got '" + raw.text + "'");
  check_number(key, static_cast<double>(value), raw.text, where);
  out = value;
}

void parse_into(std::string& out, const Key& key, const RawValue& raw, const std::string& where) {
  if (raw.kind == RawValue::Kind::kMap || raw.kind == RawValue::Kind::kList)
    fail(where, key.dotted + ": expected a string, got " + describe(raw));
  check_string(key, raw.text, where);  // a null value reads as ""
  out = raw.text;
}

void assign(const Key& key, ExperimentConfig& config, const RawValue& raw,
            const std::string& where) {
  std::visit([&](auto* target) { parse_into(*target, key, raw, where); }, key.slot(config));
}

// ---- Where each key's value came from, for cross-field messages ----

// dotted key -> "x.yaml:7" or "command line: 'k=v'"; keys not in the map have the fallback origin.
struct Origins {
  std::string fallback;  // "default", or the saved config's path when resuming
  std::map<std::string, std::string> by_key;

  std::string of(const std::string& dotted) const {
    auto it = by_key.find(dotted);
    return it == by_key.end() ? fallback : it->second;
  }
};

// ---- The YAML file ----

void read_section(const YAML::Node& name_node, const YAML::Node& body, const std::string& name,
                  ExperimentConfig& config, Origins& origins) {
  const std::string section = name_node.Scalar();
  if (body.IsNull()) return;  // "model:" with nothing under it
  if (!body.IsMap())
    fail(at(name, body.Mark()), "section '" + section + "' must be a map of keys ('" + section +
                                    ":' then indented 'key: value' lines), got " +
                                    describe(raw_from_node(body)));
  std::map<std::string, int> first_line;
  for (const auto& entry : body) {
    const YAML::Node& key_node = entry.first;
    const YAML::Node& value = entry.second;
    const std::string here = at(name, key_node.Mark());
    if (!key_node.IsScalar())
      fail(here, "expected a key name in section '" + section + "', got " +
                     describe(raw_from_node(key_node)));
    const std::string dotted = section + "." + key_node.Scalar();
    const Key* key = find_key(dotted);
    if (key == nullptr) fail(here, unknown_key_message(dotted));
    auto [seen, inserted] = first_line.emplace(dotted, key_node.Mark().line + 1);
    if (!inserted)
      fail(here, dotted + " is given twice (first at line " + std::to_string(seen->second) +
                     "); keep one");
    // A null value's mark points past it, so errors about it name the key's line.
    const std::string where = value.IsNull() ? here : at(name, value.Mark());
    assign(*key, config, raw_from_node(value), where);
    origins.by_key[dotted] = where;
  }
}

// Line `line` (0-based) of text, without its newline.
std::string line_of(const std::string& text, int line) {
  std::size_t begin = 0;
  for (int i = 0; i < line && begin != std::string::npos; ++i) {
    begin = text.find('\n', begin);
    if (begin != std::string::npos) ++begin;
  }
  if (begin == std::string::npos || begin > text.size()) return "";
  return text.substr(begin, text.find('\n', begin) - begin);
}

// A config must be UTF-8 text: a binary file (a checkpoint, a token shard) passed by mistake is
// named as such, not reported as whatever YAML syntax its bytes happen to break.
void check_text(const std::string& text, const std::string& name) {
  const std::string fix = "pass an experiment YAML file such as configs/quickstart.yaml";
  int line = 1;
  for (std::size_t i = 0; i < text.size();) {
    const auto byte = static_cast<unsigned char>(text[i]);
    const std::size_t length = byte < 0x80               ? 1
                               : (byte & 0xE0) == 0xC0 ? 2
                               : (byte & 0xF0) == 0xE0 ? 3
                               : (byte & 0xF8) == 0xF0 ? 4
                                                       : 0;
    bool utf8 = length > 0 && i + length <= text.size();
    for (std::size_t k = 1; utf8 && k < length; ++k)
      utf8 = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
    const std::string where = name + ":" + std::to_string(line);
    if (byte == 0)
      fail(where, "this is a binary file, not a YAML config (a NUL byte at offset " +
                      std::to_string(i) + "); " + fix);
    if (!utf8) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02x", byte);
      fail(where, std::string("byte ") + hex + " at offset " + std::to_string(i) +
                      " is not UTF-8 text; a config is a YAML text file in UTF-8: re-save it as UTF-8, or " + fix);
    }
    line += byte == '\n';
    i += length;
  }
}

void read_yaml(const std::string& text, const std::string& name, ExperimentConfig& config,
               Origins& origins) {
  check_text(text, name);
  YAML::Node root;
  try {
    root = load_one_yaml_document(text, name);
  } catch (const YAML::Exception& e) {
    const bool tab = line_of(text, e.mark.line).find('\t') != std::string::npos;
    fail(at(name, e.mark), "YAML syntax error: " + e.msg +
                               (tab ? " (this line has a tab: YAML indents with spaces only)"
                                    : " (write 'section:' lines, and under each, indented "
                                      "'key: value' lines)"));
  }
  if (root.IsNull()) return;  // an empty file: all defaults
  if (!root.IsMap())
    fail(at(name, root.Mark()), "expected a map of sections (" + join(section_names(), ", ") +
                                    "), got " + describe(raw_from_node(root)));
  std::map<std::string, int> first_line;
  for (const auto& entry : root) {
    const std::string here = at(name, entry.first.Mark());
    if (!entry.first.IsScalar())
      fail(here, "expected a section name (" + join(section_names(), ", ") + "), got " +
                     describe(raw_from_node(entry.first)));
    const std::string section = entry.first.Scalar();
    if (std::ranges::count(section_names(), section) == 0)
      fail(here, unknown_section_message(section));
    auto [seen, inserted] = first_line.emplace(section, entry.first.Mark().line + 1);
    if (!inserted)
      fail(here, "section '" + section + "' is given twice (first at line " +
                     std::to_string(seen->second) + "); merge the two");
    read_section(entry.first, entry.second, name, config, origins);
  }
}

// ---- Command-line overrides ----

// The value of `key=value`. String keys take the text as written unless it is quoted (so that
// globs like *.bin need no quoting); other keys read it as a YAML scalar.
RawValue raw_from_override(const Key& key, const std::string& value, const std::string& where) {
  if (value.empty()) return {RawValue::Kind::kNull, ""};
  bool is_string = std::holds_alternative<std::string*>(read_slot(key, defaults()));
  bool quoted = value.front() == '"' || value.front() == '\'';
  if (is_string && !quoted) return {RawValue::Kind::kPlain, value};
  try {
    return raw_from_node(YAML::Load(value));  // a quoted number is reported as a string
  } catch (const YAML::Exception& e) {
    fail(where, key.dotted + ": cannot read '" + value + "' as a YAML value: " + e.msg);
  }
}

void apply_override(ExperimentConfig& config, const std::string& text, Origins& origins) {
  const std::string where = "command line: '" + text + "'";
  const std::string form = "expected the form section.key=value, e.g. optim.lr=3e-4";
  std::size_t equals = text.find('=');
  if (equals == std::string::npos) fail(where, form);
  const std::string dotted = trim(text.substr(0, equals));
  if (dotted.empty()) fail(where, form);
  const Key* key = find_key(dotted);
  if (key == nullptr && dotted.find('.') == std::string::npos) {
    const std::string suggestion = suggest_key("." + dotted);
    fail(where, "'" + dotted + "' names no section; " + form +
                    (suggestion.empty() ? "" : "; did you mean '" + suggestion + "'?"));
  }
  if (key == nullptr) fail(where, unknown_key_message(dotted));
  const std::string value = trim(text.substr(equals + 1));
  assign(*key, config, raw_from_override(*key, value, where), where);
  origins.by_key[dotted] = where;
}

// ---- Validation of the whole config ----

// Every key against its own limits again: catches bad values set in code before apply_overrides.
void validate_keys(const ExperimentConfig& config, const Origins& origins) {
  for (const Key& key : schema().keys) {
    const std::string where = origins.of(key.dotted);
    std::visit(
        [&](auto* value) {
          using T = std::remove_cvref_t<decltype(*value)>;
          if constexpr (std::is_same_v<T, std::string>) {
            check_string(key, *value, where);
          } else {
            if constexpr (std::is_floating_point_v<T>)
              if (!std::isfinite(*value))
                fail(where, key.dotted + ": " + format_value(*value) + " is not a finite number");
            check_number(key, static_cast<double>(*value), format_value(*value), where);
          }
        },
        read_slot(key, config));
  }
}

// The key bound to one field of `config` (found by address, so rules below never spell a key).
const Key& key_at(const ExperimentConfig& config, const void* field) {
  for (const Key& key : schema().keys)
    if (std::visit([&](auto* value) { return static_cast<const void*>(value) == field; },
                   read_slot(key, config)))
      return key;
  KILN_ASSERT(!"every field of ExperimentConfig is in the schema");
  throw Error("unreachable");
}

// Rules across keys. Each message shows both keys with their values and where each was set, and
// starts with where the first of them was set in the file or on the command line.
void validate_cross(const ExperimentConfig& c, const Origins& origins, const std::string& name) {
  auto key = [&](const int& field) { return key_at(c, &field).dotted; };
  auto show = [&](const int& field) {
    return key(field) + "=" + std::to_string(field) + " (" + origins.of(key(field)) + ")";
  };
  // Where a key was set (file:line or the command line), else the config's name.
  auto set_at = [&](const std::string& dotted) { return origins.by_key.count(dotted) ? origins.of(dotted) : name; };
  auto where = [&](const int& a, const int& b) {
    for (const std::string& dotted : {key(a), key(b)})
      if (origins.by_key.count(dotted)) return origins.of(dotted);
    return name;
  };
  const int &width = c.model.n_embd, &heads = c.model.n_head;
  if (width % heads != 0) {
    int lower = width / heads * heads;
    fail(where(width, heads),
         message(show(width), " is not divisible by ", show(heads),
                 "; the heads split the width equally: set ", key(width), " to a multiple of ",
                 heads, " (e.g. ", lower > 0 ? std::to_string(lower) + " or " : "", lower + heads,
                 ") or ", key(heads), " to a divisor of ", width));
  }
  if (!c.data.corpus.empty() && (!c.data.train.empty() || !c.data.val.empty())) {
    const char* other = c.data.train.empty() ? "data.val" : "data.train";
    fail(set_at("data.corpus"),
         message("both data.corpus (text kiln tokenizes) and ", other,
                 " (token shards) are set; keep one: data.corpus=\"\" to train on the shards, or ",
                 other, "=\"\" to train on the corpus"));
  }
  if (!c.train.eval_tasks.empty() && c.parallel.tp > 1)
    fail(set_at("train.eval_tasks"), message("train.eval_tasks decodes on one model replica, which parallel.tp=",
                                             c.parallel.tp, " splits; set train.eval_tasks=\"\" and score the checkpoints "
                                             "with kiln eval"));
  const std::string& stage = c.train.stage;
  const bool preference_stage = stage == "reward" || stage == "dpo" || stage == "ppo";
  if (stage == "sft" || preference_stage) {
    if (stage == "sft" && c.data.mixture.empty())
      fail(set_at("train.stage"), message("train.stage=sft tunes on the responses of a task mixture: set "
                                          "data.mixture to its YAML file (docs/instruction-data.md)"));
    for (const char* pretraining : {"data.train", "data.val", "data.corpus"}) {
      const std::string& value = std::string(pretraining) == "data.train" ? c.data.train
                                 : std::string(pretraining) == "data.val" ? c.data.val
                                                                          : c.data.corpus;
      if (!value.empty())
        fail(set_at(pretraining), message(pretraining, " is pretraining data, which train.stage=", stage,
                                          " does not read; set ", pretraining, "=\"\""));
    }
  }
  const bool ptx = stage == "ppo" && c.ppo.ptx_coef > 0;
  if (stage != "sft" && !ptx && (!c.data.mixture.empty() || !c.data.val_mixture.empty())) {
    const char* which = c.data.mixture.empty() ? "data.val_mixture" : "data.mixture";
    fail(set_at(which), message(which, " is read by train.stage=sft (and by ppo with ppo.ptx_coef > 0); this run's "
                                "train.stage is ", stage, ": set train.stage=sft, or ", which, "=\"\""));
  }
  if (ptx && c.data.mixture.empty())
    fail(set_at("ppo.ptx_coef"), "ppo.ptx_coef > 0 mixes in the SFT loss of data.mixture: set data.mixture to "
                                 "the SFT task mixture, or ppo.ptx_coef=0");
  if ((stage == "reward" || stage == "dpo") && c.data.preferences.empty())
    fail(set_at("train.stage"), message("train.stage=", stage, " trains on preference pairs: set data.preferences to "
                                        "a JSONL file of {prompt, chosen, rejected} records (docs/rlhf.md)"));
  if (stage != "reward" && stage != "dpo" && (!c.data.preferences.empty() || !c.data.val_preferences.empty())) {
    const char* which = c.data.preferences.empty() ? "data.val_preferences" : "data.preferences";
    fail(set_at(which), message(which, " is read by train.stage=reward and dpo; this run's train.stage is ", stage,
                                ": set ", which, "=\"\""));
  }
  if (stage == "ppo" && c.data.prompts.empty())
    fail(set_at("train.stage"), "train.stage=ppo rolls out from prompts: set data.prompts to a JSONL file of "
                                "{prompt} records (docs/rlhf.md)");
  if (stage != "ppo" && !c.data.prompts.empty())
    fail(set_at("data.prompts"), message("data.prompts is read by train.stage=ppo; this run's train.stage is ", stage,
                                         ": set data.prompts=\"\""));
  if (!preference_stage && !c.data.val_prompts.empty())
    fail(set_at("data.val_prompts"), message("data.val_prompts is read by train.stage=ppo, dpo and reward; this run's "
                                             "train.stage is ", stage, ": set data.val_prompts=\"\""));
  if ((stage == "dpo" || stage == "ppo") && c.roles.reference.empty() && c.train.init_from.empty())
    fail(set_at("train.stage"), message("train.stage=", stage, " tunes a policy against a reference model: set "
                                        "train.init_from (the SFT checkpoint; also the reference) or roles.reference"));
  if (stage == "reward" && !c.data.val_prompts.empty() && c.roles.reference.empty() && c.train.init_from.empty())
    fail(set_at("data.val_prompts"), "train.stage=reward with data.val_prompts normalises its scores by a reference "
                                     "policy's responses to them: set roles.reference (or train.init_from) to the SFT "
                                     "policy, or data.val_prompts=\"\"");
  if (stage == "reward" && !c.roles.reference.empty() && c.data.val_prompts.empty())
    fail(set_at("roles.reference"), "train.stage=reward reads roles.reference only to sample the responses to "
                                    "data.val_prompts that normalise its scores: set data.val_prompts, or "
                                    "roles.reference=\"\"");
  if (stage == "ppo" && c.roles.reward.empty())
    fail(set_at("train.stage"), "train.stage=ppo needs a reward model: set roles.reward to a run or checkpoint "
                                "folder of train.stage=reward");
  if (stage != "ppo" && (!c.roles.reward.empty() || !c.roles.value.empty()))
    fail(set_at(c.roles.reward.empty() ? "roles.value" : "roles.reward"),
         message("roles.reward and roles.value are read by train.stage=ppo; this run's train.stage is ", stage));
  if (!preference_stage && !c.roles.reference.empty())
    fail(set_at("roles.reference"), message("roles.reference is read by train.stage=dpo, ppo and reward; this run's "
                                            "train.stage is ", stage));
  if ((stage == "reward" || stage == "ppo") && c.model.dtype == "bf16")
    fail(set_at("model.dtype"), message("train.stage=", stage, " reads a scalar head on the trunk's hidden states, which "
                                        "are fp32 activations in this version; set model.dtype=f32 (model.matmul=bf16 "
                                        "keeps bf16 products)"));
  if (stage == "ppo" && c.ppo.max_new_tokens >= c.train.seq_len)
    fail(set_at("ppo.max_new_tokens"), message("ppo.max_new_tokens=", c.ppo.max_new_tokens, " leaves no room for a "
                                               "prompt in train.seq_len=", c.train.seq_len, "; lower it or raise "
                                               "train.seq_len"));
  if (c.model.dtype == "bf16" && (c.train.device != "cuda" || c.model.norm != "pre")) {
    fail(set_at("model.dtype"),
         message("model.dtype=bf16 (bf16 activations) runs on the GPU with a pre-LN model; ",
                 c.train.device != "cuda" ? "set train.device=cuda, or model.matmul=bf16 for bf16 "
                                            "products with fp32 activations on the cpu"
                                          : "set model.norm=pre or model.dtype=f32"));
  }
  // Architecture values whose kernels do not exist yet (the LLaMA family comes next).
  auto not_yet = [&](const std::string& dotted, const std::string& value, const std::string& use) {
    fail(set_at(dotted),
         message(dotted, "=", value, " is not implemented in this version of kiln; use ", use));
  };
  const ModelConfig& m = c.model;
  const bool layernorm = m.norm_kind == "layernorm";
  if (layernorm && m.norm_eps != 1e-5f)
    not_yet("model.norm_eps", format_value(m.norm_eps) + " with model.norm_kind=layernorm",
            "model.norm_eps=1e-5 (GPT-2's), or model.norm_kind=rmsnorm");
  if (layernorm && m.bias != 1)
    not_yet("model.bias", "0 with model.norm_kind=layernorm (a LayerNorm without bias)",
            "model.bias=1, or model.norm_kind=rmsnorm");
  if (m.position == "rope" && (m.n_embd / std::max(m.n_head, 1)) % 2 != 0)
    fail(set_at("model.position"), message("model.position=rope rotates pairs of dimensions, but the head size ",
                                           m.n_embd / std::max(m.n_head, 1), " (model.n_embd / model.n_head) is odd"));

  if (m.n_kv_head != 0 && m.n_head % m.n_kv_head != 0)
    fail(set_at("model.n_kv_head"), message("model.n_kv_head=", m.n_kv_head, " does not divide model.n_head=", m.n_head,
                                             ": each key/value head serves an equal group of query heads"));
  if (m.n_kv_head != 0 && c.parallel.tp > 1 && m.n_kv_head % c.parallel.tp != 0 && c.parallel.tp % m.n_kv_head != 0)
    fail(set_at("model.n_kv_head"),
         message("model.n_kv_head=", m.n_kv_head, " with parallel.tp=", c.parallel.tp, ": the ranks split the key/value "
                 "heads when tp divides them and replicate them when they divide tp; choose one of the two"));
  const int& block = c.model.attention_block;
  if (block != 16 && block != 32 && block != 64 && block != 128)
    fail(set_at(key(block)),
         message(show(block), " is not a tile size the attention kernels have; use 16, 32, 64 or 128"));
  try {
    attention_kinds(c.model.attention, c.model.n_layer);
    if (c.model.attention != "dense") {
      // Build each layer's layout once for the training length: every size error shows here,
      // before any run directory is touched.
      AttentionPattern p;
      p.block = block;
      p.window = c.model.attention_window;
      p.stride = c.model.attention_stride;
      p.summary = c.model.attention_summary;
      p.global = c.model.attention_global;
      p.per_head = c.model.attention_per_head != 0;
      for (const std::string& kind : attention_kinds(c.model.attention, c.model.n_layer)) {
        p.kind = kind;
        build_layout(p, c.train.seq_len, c.model.n_head);
      }
    }
  } catch (const Error& e) {
    fail(set_at("model.attention"), e.what());
  }
  const int &seq_len = c.train.seq_len, &context = c.model.context;
  if (seq_len > context)
    fail(where(seq_len, context), message(show(seq_len), " is longer than ", show(context),
                                          ", the number of learned positions: set ", key(seq_len),
                                          " <= ", context, " or ", key(context), " >= ", seq_len));
}

// model.arch, where this parse sets it, fills the architecture keys this parse does not set.
void apply_arch_preset(ExperimentConfig& config, Origins& origins) {
  if (!origins.by_key.count("model.arch")) return;
  const std::string from = "model.arch=" + config.model.arch + " (" + origins.of("model.arch") + ")";
  const auto set_here = [&](const std::string& dotted) { return origins.by_key.count(dotted) > 0; };
  for (const std::string& dotted : set_arch(config.model, config.model.arch, set_here)) origins.by_key[dotted] = from;
}

void validate(const ExperimentConfig& config, const Origins& origins, const std::string& name) {
  validate_keys(config, origins);
  validate_cross(config, origins, name);
}

// ---- Paths ----

// value made absolute against base: each comma-separated item for a list key (a blend's
// PATTERN@WEIGHT included), the whole string otherwise; absolute paths and "" are kept.
std::string absolute_path(const std::string& value, const std::filesystem::path& base, bool list) {
  const std::vector<std::string> items = list ? split_list(value) : std::vector<std::string>{value};
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += items[i].empty() || items[i].front() == '/' ? items[i] : (base / items[i]).lexically_normal().string();
  }
  return out;
}

// Every path key relative to `which` (working_dir: every path key) made absolute against base.
void resolve_paths(ExperimentConfig& config, PathBase which, const std::filesystem::path& base) {
  for (const Key& key : schema().keys) {
    if (key.path == PathBase::none || (which != PathBase::working_dir && key.path != which)) continue;
    std::string& value = *std::get<std::string*>(key.slot(config));
    value = absolute_path(value, base, key.path_list);
  }
}

// YAML text, then overrides, then validation. With a base folder (the config file's), the
// file's relative input paths are resolved against it before the command line is applied.
ExperimentConfig parse(const std::string& yaml_text, const std::string& name,
                       const std::vector<std::string>& overrides, const std::filesystem::path& base) {
  ExperimentConfig config;
  Origins origins{"default", {}};
  read_yaml(yaml_text, name, config, origins);
  if (!base.empty()) resolve_paths(config, PathBase::config_file, base);
  for (const std::string& text : overrides) apply_override(config, text, origins);
  apply_arch_preset(config, origins);
  validate(config, origins, name);
  return config;
}

}  // namespace

// ---- Public interface ----

std::string trim(const std::string& text) {
  const char* space = " \t\r\n";
  std::size_t begin = text.find_first_not_of(space);
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

std::vector<std::string> split_list(const std::string& value) {
  std::vector<std::string> items;
  for (std::size_t begin = 0; begin <= value.size();) {
    const std::size_t end = std::min(value.find(',', begin), value.size());
    items.push_back(value.substr(begin, end - begin));
    begin = end + 1;
  }
  return items;
}

std::vector<std::string> set_arch(ModelConfig& m, const std::string& arch,
                                  const std::function<bool(const std::string&)>& keep) {
  KILN_CHECK(arch == "gpt2" || arch == "llama", "model.arch '", arch, "' is not a preset; use gpt2 or llama");
  m.arch = arch;
  const bool llama = arch == "llama";
  std::vector<std::string> set;
  auto preset = [&](const std::string& dotted, auto& slot, auto value) {
    if (keep && keep(dotted)) return;
    slot = value;
    set.push_back(dotted);
  };
  preset("model.norm_kind", m.norm_kind, std::string(llama ? "rmsnorm" : "layernorm"));
  preset("model.position", m.position, std::string(llama ? "rope" : "learned"));
  preset("model.mlp", m.mlp, std::string(llama ? "swiglu" : "gelu"));
  preset("model.bias", m.bias, llama ? 0 : 1);
  preset("model.tie_embeddings", m.tie_embeddings, llama ? 0 : 1);
  return set;
}

ExperimentConfig parse_config(const std::string& yaml_text, const std::string& name,
                              const std::vector<std::string>& overrides) {
  return parse(yaml_text, name, overrides, "");
}

void apply_overrides(ExperimentConfig& config, const std::vector<std::string>& overrides) {
  const std::string name = config.source.empty() ? "config" : config.source;
  Origins origins{name, {}};
  ExperimentConfig updated = config;  // all or nothing: config is untouched on error
  for (const std::string& text : overrides) apply_override(updated, text, origins);
  apply_arch_preset(updated, origins);
  validate(updated, origins, name);
  config = updated;
}

ExperimentConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code error;
  KILN_CHECK(std::filesystem::exists(path, error), "config file '", path,
             "' does not exist; check the path (the shipped configs are in configs/, e.g. ",
             "configs/quickstart.yaml)");
  KILN_CHECK(std::filesystem::is_regular_file(path, error), "config path '", path,
             "' is not a file; pass a YAML file such as configs/quickstart.yaml");
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), "cannot open config file '", path, "': ", std::strerror(errno),
             "; check its permissions");
  std::ostringstream text;
  text << in.rdbuf();
  const std::filesystem::path cwd = std::filesystem::current_path();
  ExperimentConfig config = parse(text.str(), path, overrides, (cwd / path).parent_path());
  resolve_paths(config, PathBase::working_dir, cwd);  // and the rest: command line, defaults
  config.source = path;
  return config;
}

std::string to_yaml(const ExperimentConfig& config) {
  std::string source = config.source;
  std::replace(source.begin(), source.end(), '\n', ' ');
  std::string out =
      "# kiln resolved config: defaults < YAML file < command line. Every key is listed;\n"
      "# `kiln config` describes them.\n";
  if (!source.empty()) out += "# source: " + source + "\n";
  for (const Section& section : schema().sections) {
    std::vector<std::pair<std::string, const Key*>> lines;
    std::size_t width = 0;
    for (const Key& key : schema().keys) {
      if (key.section != section.name) continue;
      lines.emplace_back("  " + key.name + ": " + format_slot(read_slot(key, config)), &key);
      width = std::max(width, lines.back().first.size());
    }
    out += "\n" + section.name + ":  # " + section.help + "\n";
    for (const auto& [line, key] : lines)
      out += line + std::string(width - line.size() + 2, ' ') + "# " + key->help + "\n";
  }
  return out;
}

std::string config_reference() {
  const std::vector<std::string> header = {"key", "type", "default", "allowed", "help"};
  std::vector<std::vector<std::string>> rows = {header};
  for (const Key& key : schema().keys)
    rows.push_back({key.dotted, type_name(key), format_slot(read_slot(key, defaults())),
                    describe_allowed(key), key.help});
  std::vector<std::size_t> width(header.size());
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  std::string out =
      "Config keys (precedence: default < YAML file < command line "
      "section.key=value)\n\n";
  std::string section;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    if (r > 0 && schema().keys[r - 1].section != section) {  // a blank line before each section
      section = schema().keys[r - 1].section;
      out += "\n";
    }
    for (std::size_t i = 0; i + 1 < rows[r].size(); ++i)
      out += rows[r][i] + std::string(width[i] - rows[r][i].size() + 2, ' ');
    out += rows[r].back() + "\n";
  }
  return out;
}

}  // namespace kiln
