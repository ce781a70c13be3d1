// Corpus reading: glob expansion, folder listing, separator splitting and JSONL records.
// Moved out of tokenize.cpp unchanged (error texts name options.command, "tokenize" there).
#include "core/data/corpus.h"

#include <glob.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "core/data/jsonl.h"
#include "kernels/error.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in, "cannot read input ", path, ": ", std::strerror(errno),
             "; check the path and its permissions");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  KILN_CHECK(!in.bad(), "error while reading input ", path);
  return text;
}

// Glob patterns expanded to their sorted matches; other inputs unchanged.
std::vector<std::string> expand_globs(const CorpusOptions& options) {
  std::vector<std::string> out;
  for (const std::string& input : options.inputs) {
    if (input.find_first_of("*?[") == std::string::npos) {
      out.push_back(input);
      continue;
    }
    glob_t matches{};
    const int rc = glob(input.c_str(), 0, nullptr, &matches);
    std::vector<std::string> found(matches.gl_pathv, matches.gl_pathv + (rc == 0 ? matches.gl_pathc : 0));
    globfree(&matches);
    KILN_CHECK(!found.empty(), options.command, ": the pattern '", input, "' matches no file; ",
               "check it (quote it so the shell does not expand it first)");
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

// Calls fn(document) for each document of text: the whole text, or the pieces between lines
// equal to separator (the separator lines themselves are dropped).
void for_each_document(std::string_view text, const std::string& separator,
                       const std::function<void(std::string_view)>& fn) {
  if (separator.empty()) {
    fn(text);
    return;
  }
  std::size_t doc_start = 0, line_start = 0;
  while (line_start < text.size()) {
    std::size_t newline = text.find('\n', line_start);
    std::size_t line_end = newline == std::string_view::npos ? text.size() : newline;
    std::string_view line = text.substr(line_start, line_end - line_start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::size_t next = newline == std::string_view::npos ? text.size() : newline + 1;
    if (line == separator) {
      fn(text.substr(doc_start, line_start - doc_start));
      doc_start = next;
    }
    line_start = next;
  }
  fn(text.substr(doc_start));
}

bool is_blank(std::string_view doc) {
  return std::all_of(doc.begin(), doc.end(),
                     [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; });
}

bool is_jsonl(const std::string& path) {
  return path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
}

}  // namespace

std::vector<CorpusFile> list_corpus_files(const CorpusOptions& options,
                                          std::vector<std::string>& skipped) {
  std::vector<CorpusFile> files;
  for (const std::string& input : expand_globs(options)) {
    std::error_code ec;
    fs::file_status status = fs::status(input, ec);
    KILN_CHECK(fs::exists(status), options.command, ": input path '", input,
               "' does not exist; pass text files or folders of text files to --input");
    if (!fs::is_directory(status)) {
      files.push_back({input, false});
      continue;
    }
    std::vector<std::string> members;
    for (const fs::directory_entry& entry : fs::directory_iterator(input)) {
      if (entry.is_symlink() || !entry.is_regular_file()) {
        skipped.push_back(entry.path().string());
      } else {
        members.push_back(entry.path().string());
      }
    }
    std::sort(members.begin(), members.end());
    for (std::string& m : members) files.push_back({std::move(m), true});
  }
  std::sort(skipped.begin(), skipped.end());
  return files;
}

void for_each_corpus_document(const std::vector<CorpusFile>& files, const CorpusOptions& options,
                              std::vector<std::string>* skipped, std::uint64_t* skipped_records,
                              const std::function<void(std::string_view)>& fn) {
  const std::string& separator = options.separator;
  for (const CorpusFile& file : files) {
    if (is_jsonl(file.path)) {
      const JsonlStats stats = read_jsonl(
          file.path, {options.skip_bad_records}, [&](const nlohmann::json& record, const std::string& where) {
            const std::string doc = required_string(record, options.jsonl_field, where);
            if (!is_blank(doc)) fn(doc);
          });
      if (skipped_records) *skipped_records += static_cast<std::uint64_t>(stats.skipped);
      continue;
    }
    std::string text = read_text_file(file.path);
    if (text.find('\0') != std::string::npos) {
      KILN_CHECK(file.from_folder, options.command, ": input ", file.path, " contains NUL bytes, ",
                 "so it is not a text file; remove it from --input");
      if (skipped != nullptr) skipped->push_back(file.path);
      continue;
    }
    for_each_document(text, separator, [&](std::string_view doc) {
      if (!is_blank(doc)) fn(doc);
    });
  }
}

}  // namespace kiln
