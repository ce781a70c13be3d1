// The files a generator writes into one folder (core/eval/generated_files.h).
#include "core/eval/generated_files.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/checkpoint/atomic_file.h"
#include "kernels/error.h"

namespace kiln {

GeneratedFiles::GeneratedFiles(std::string dir) : dir_(std::move(dir)) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  KILN_CHECK(!ec, "cannot create ", dir_, ": ", ec.message());
}

void GeneratedFiles::write(const std::string& name, const std::string& text) {
  const std::string path = (std::filesystem::path(dir_) / name).string();
  write_file_atomic(path, text);
  written_.push_back(path);
}

std::string yaml_quoted(const std::string& s) { return nlohmann::json(s).dump(); }

}  // namespace kiln
