// A text corpus read as documents, shared by `kiln tokenize` (core/data/tokenize.h) and
// `kiln tokenizer train` (core/data/bpe_train.h) so both see exactly the same documents.
// Inputs are text files, folders or glob patterns; text is cut into documents (one per file, or
// split on separator lines such as fortune's "%"); *.jsonl files give one document per record.
// Blank documents are left out.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

struct CorpusOptions {
  // Text files, folders or glob patterns ("corpus/*.txt"). A folder contributes every regular
  // file directly inside it, sorted by name; symlinks and files containing NUL bytes (binary,
  // e.g. fortune's *.dat indexes) are skipped. A file named directly must be text. Files ending
  // in .jsonl are JSON Lines: each record's jsonl_field is one document.
  std::vector<std::string> inputs;
  std::string jsonl_field = "text";
  bool skip_bad_records = false;  // JSONL: count and skip malformed records instead of failing
  // "" = each file is one document; otherwise a line equal to this string (a trailing '\r' is
  // ignored) separates documents.
  std::string separator;
  std::string command = "tokenize";  // the command named in error messages
};

struct CorpusFile {
  std::string path;
  bool from_folder = false;  // folder members that are not text are skipped, not errors
};

// The inputs expanded to files: files as given, globs to their sorted matches, folders to their
// sorted regular files. Folder members that are links or not regular files are appended to
// skipped. A missing path or a glob without matches is an Error naming it.
std::vector<CorpusFile> list_corpus_files(const CorpusOptions& options,
                                          std::vector<std::string>& skipped);

// Calls fn(document) for every non-blank document of the files, in order: text files cut by the
// separator, JSONL files one record's field at a time. Folder members holding NUL bytes are left
// out and appended to *skipped (when not null); a file named directly that holds NUL bytes is an
// Error. Bad JSONL records skipped (skip_bad_records) are added to *skipped_records.
// Each file is read whole; the views passed to fn live until fn returns.
void for_each_corpus_document(const std::vector<CorpusFile>& files, const CorpusOptions& options,
                              std::vector<std::string>* skipped, std::uint64_t* skipped_records,
                              const std::function<void(std::string_view)>& fn);

}  // namespace kiln
