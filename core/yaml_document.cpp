// One YAML document per file (yaml_document.h).
#include "core/yaml_document.h"

#include <sstream>
#include <vector>

#include "kernels/error.h"

namespace kiln {
namespace {

// The 1-based line of the second document-start marker ("---" at the start of a line) that
// follows content, or 0 when there is none: a leading "---" before the first document is
// allowed, as YAML allows it.
int second_document_line(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  int number = 0;
  bool content = false;
  while (std::getline(in, line)) {
    ++number;
    const bool marker = line.rfind("---", 0) == 0 && (line.size() == 3 || line[3] == ' ' || line[3] == '\t' ||
                                                      line[3] == '\r');
    if (marker && content) return number;
    const std::size_t first = line.find_first_not_of(" \t\r");
    if (!marker && first != std::string::npos && line[first] != '#' && line.rfind("%", 0) != 0) content = true;
  }
  return 0;
}

}  // namespace

YAML::Node load_one_yaml_document(const std::string& text, const std::string& source) {
  std::vector<YAML::Node> documents = YAML::LoadAll(text);
  if (documents.empty()) return YAML::Node();
  for (std::size_t d = 1; d < documents.size(); ++d) {
    if (documents[d].IsNull()) continue;  // an empty document (a trailing "---") loses nothing
    int line = second_document_line(text);
    if (line == 0 && documents[d].Mark().line >= 0) line = documents[d].Mark().line + 1;
    throw Error(message(source, ":", line, ": a second YAML document starts here (a '---' line after the first "
                        "document's content); kiln reads one document per file and would ignore this one: delete the "
                        "'---' line to make it part of the first, or move it to a file of its own"));
  }
  return documents.front();
}

}  // namespace kiln
