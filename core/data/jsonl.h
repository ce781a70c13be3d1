// JSON Lines input: one JSON object per line, read record by record. Every record carries its
// "file:line" so that errors in later stages (a missing field, an unknown template variable)
// can name the line to fix. A malformed line is an Error, unless skip_bad_records is set: then
// it is counted (and the count returned, for the caller to print), never skipped silently.
// Blank lines are not records and are passed over.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln {

struct JsonlOptions {
  bool skip_bad_records = false;  // count and skip bad records instead of failing
};

struct JsonlStats {
  std::int64_t records = 0;      // records handed to the visitor without an error
  std::int64_t skipped = 0;      // bad records skipped (only with skip_bad_records)
  std::string first_skipped;     // the message of the first skipped record, for the log
};

// Calls visit(record, where) for each line of `path` holding a JSON object; where is
// "path:line". An Error thrown by visit (say, a missing field) counts as a bad record: it is
// rethrown, or with skip_bad_records counted and skipped. A line that is not valid JSON, or not
// an object, is an Error naming path:line.
JsonlStats read_jsonl(const std::string& path, const JsonlOptions& options,
                      const std::function<void(const nlohmann::json& record, const std::string& where)>& visit);

// Field access with errors that name the record and the field.
// The string field `field`; an Error when absent or not a string.
std::string required_string(const nlohmann::json& record, std::string_view field, const std::string& where);
// The string field `field`, or "" when absent; an Error when present but not a string.
std::string optional_string(const nlohmann::json& record, std::string_view field, const std::string& where);
// A list of strings, or empty when absent; an Error when present but not a list of strings.
std::vector<std::string> optional_string_list(const nlohmann::json& record, std::string_view field,
                                              const std::string& where);

}  // namespace kiln
