// JSON Lines reading with file:line errors and counted (never silent) skipping.
#include "core/data/jsonl.h"

#include <fstream>

#include "kernels/error.h"

namespace kiln {

JsonlStats read_jsonl(const std::string& path, const JsonlOptions& options,
                      const std::function<void(const nlohmann::json&, const std::string&)>& visit) {
  std::ifstream in(path);
  KILN_CHECK(in, "cannot open JSONL file '", path, "'; check the path (relative paths are taken "
             "from the file that names it)");
  JsonlStats stats;
  std::string line;
  std::int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;  // blank: not a record
    const std::string where = message(path, ":", number);
    try {
      nlohmann::json record;
      try {
        record = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {  // parse errors and out-of-range numbers
        throw Error(message(where, ": not valid JSON (", e.what(), "); each line must hold one JSON object"));
      }
      KILN_CHECK(record.is_object(), where, ": expected a JSON object, found ", record.type_name());
      try {
        visit(record, where);
      } catch (const nlohmann::json::exception& e) {  // a field of an unexpected JSON type
        throw Error(message(where, ": ", e.what()));
      }
      ++stats.records;
    } catch (const Error& e) {
      if (!options.skip_bad_records) throw;
      if (stats.skipped == 0) stats.first_skipped = e.what();
      ++stats.skipped;
    }
  }
  return stats;
}

std::string required_string(const nlohmann::json& record, std::string_view field, const std::string& where) {
  auto it = record.find(field);
  KILN_CHECK(it != record.end(), where, ": missing field '", field, "'");
  KILN_CHECK(it->is_string(), where, ": field '", field, "' must be a string, found ", it->type_name());
  return it->get<std::string>();
}

std::string optional_string(const nlohmann::json& record, std::string_view field, const std::string& where) {
  auto it = record.find(field);
  if (it == record.end() || it->is_null()) return "";
  KILN_CHECK(it->is_string(), where, ": field '", field, "' must be a string, found ", it->type_name());
  return it->get<std::string>();
}

std::vector<std::string> optional_string_list(const nlohmann::json& record, std::string_view field,
                                              const std::string& where) {
  std::vector<std::string> out;
  auto it = record.find(field);
  if (it == record.end() || it->is_null()) return out;
  KILN_CHECK(it->is_array(), where, ": field '", field, "' must be a list of strings, found ", it->type_name());
  for (const auto& v : *it) {
    KILN_CHECK(v.is_string(), where, ": field '", field, "' must be a list of strings; an element is ",
               v.type_name());
    out.push_back(v.get<std::string>());
  }
  return out;
}

}  // namespace kiln
