// The files a generator writes into one folder (kiln tasks, kiln tasks --corpus, kiln prefs): the
// folder created, each file written atomically, the paths kept in the order written.
#pragma once

#include <string>
#include <vector>

namespace kiln {

class GeneratedFiles {
 public:
  explicit GeneratedFiles(std::string dir);  // creates dir; an Error naming it when that fails
  void write(const std::string& name, const std::string& text);
  const std::vector<std::string>& written() const { return written_; }

 private:
  std::string dir_;
  std::vector<std::string> written_;
};

// A string as a YAML scalar: a JSON string, which YAML reads as written.
std::string yaml_quoted(const std::string& s);

}  // namespace kiln
