// tokenize_corpus: text files -> documents -> token ids -> train/val shards + manifest.json.
// Two passes over the text: the first finds the files and counts the documents, so the split
// can be fixed up before anything is written (validation must exist when val_fraction > 0, and
// training must not end up empty); the second encodes and writes. Each input file is read
// whole (so a single file must fit in memory) and at most one shard's worth of tokens per split
// is held. Finding the files and cutting documents is core/data/corpus.h, shared with
// `kiln tokenizer train`.
#include "core/data/tokenize.h"

#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <string_view>

#include "core/checkpoint/atomic_file.h"
#include "core/data/corpus.h"
#include "core/data/shard.h"
#include "core/data/tokenizer.h"
#include "kernels/error.h"
#include "core/rng.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kNone = std::numeric_limits<std::uint64_t>::max();

CorpusOptions corpus_options(const TokenizeOptions& options) {
  CorpusOptions corpus;
  corpus.inputs = options.inputs;
  corpus.jsonl_field = options.jsonl_field;
  corpus.skip_bad_records = options.skip_bad_records;
  corpus.separator = options.separator;
  corpus.command = "tokenize";
  return corpus;
}

// Accumulates one split's tokens and writes a shard each time shard_tokens are collected.
class ShardWriter {
 public:
  ShardWriter(std::string out_dir, std::string prefix, std::uint64_t shard_tokens, int vocab)
      : out_dir_(std::move(out_dir)), prefix_(std::move(prefix)),
        shard_tokens_(shard_tokens), vocab_(vocab) {}

  void add(const std::vector<std::uint32_t>& tokens) {
    total_ += tokens.size();
    std::size_t used = 0;
    while (used < tokens.size()) {
      std::size_t take = std::min<std::uint64_t>(tokens.size() - used,
                                                 shard_tokens_ - buffer_.size());
      buffer_.insert(buffer_.end(), tokens.begin() + used, tokens.begin() + used + take);
      used += take;
      if (buffer_.size() == shard_tokens_) flush();
    }
  }
  void finish() {
    if (!buffer_.empty()) flush();
  }
  std::uint64_t total() const { return total_; }
  const std::vector<std::pair<std::string, std::uint64_t>>& written() const { return written_; }

 private:
  void flush() {
    char name[64];
    std::snprintf(name, sizeof(name), "%s_%03zu.bin", prefix_.c_str(), written_.size());
    write_shard((fs::path(out_dir_) / name).string(), buffer_, vocab_);
    written_.emplace_back(name, buffer_.size());
    buffer_.clear();
    // Tests of an interrupted run: KILN_FAULT=tokenize:kill:N ends the process with SIGKILL once
    // N shards of a split are written.
    if (const char* fault = std::getenv("KILN_FAULT")) {
      unsigned long long after = 0;
      if (std::sscanf(fault, "tokenize:kill:%llu", &after) == 1 && written_.size() == after) std::raise(SIGKILL);
    }
  }

  std::string out_dir_, prefix_;
  std::uint64_t shard_tokens_;
  int vocab_;
  std::vector<std::uint32_t> buffer_;
  std::uint64_t total_ = 0;
  std::vector<std::pair<std::string, std::uint64_t>> written_;
};

// Which split each document goes to, after the fix-ups that keep both splits non-empty.
struct SplitPlan {
  Rng rng;
  double val_fraction;
  std::uint64_t documents = 0;
  std::uint64_t forced_val = kNone;    // the last document, when the draw put none in val
  std::uint64_t forced_train = kNone;  // the first document, when the draw put all in val
  bool split_tokens = false;           // a single document: its tail becomes validation

  bool is_val(std::uint64_t doc) const {
    if (doc == forced_val) return true;
    if (doc == forced_train) return false;
    return static_cast<double>(rng.uniform(doc)) < val_fraction;
  }
};

SplitPlan plan_split(const TokenizeOptions& options, std::uint64_t documents) {
  SplitPlan plan{Rng(options.seed, kTokenizeSplitStream), options.val_fraction, documents};
  if (options.val_fraction <= 0.0) return plan;
  if (documents == 1) {
    plan.split_tokens = true;
    return plan;
  }
  std::uint64_t val = 0;
  for (std::uint64_t d = 0; d < documents; ++d) val += plan.is_val(d) ? 1 : 0;
  if (val == 0) plan.forced_val = documents - 1;
  if (val == documents) plan.forced_train = 0;
  return plan;
}

// Deletes train_NNN.bin / val_NNN.bin files left in out_dir by an earlier, larger run, so a
// glob such as out_dir/train_*.bin sees exactly this run's shards.
void remove_stale_shards(const std::string& out_dir, const std::vector<std::string>& keep) {
  static const std::regex kShardName(R"((train|val)_[0-9]+\.bin)");
  for (const fs::directory_entry& entry : fs::directory_iterator(out_dir)) {
    std::string name = entry.path().filename().string();
    if (!std::regex_match(name, kShardName)) continue;
    if (std::find(keep.begin(), keep.end(), name) != keep.end()) continue;
    fs::remove(entry.path());
  }
}

void write_text_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    KILN_CHECK(out, "cannot write ", tmp, ": ", std::strerror(errno),
               "; check that the folder is writable");
    out << text;
    out.flush();
    KILN_CHECK(out, "cannot write ", tmp, "; check free disk space");
  }
  fs::rename(tmp, path);
}

// manifest.json: everything needed to know how the shards were made, with no timestamps or
// absolute output paths, so identical inputs give an identical manifest.
void write_manifest(const TokenizeOptions& options, const Tokenizer& tokenizer,
                    const std::vector<CorpusFile>& files, const std::vector<std::string>& skipped,
                    const SplitPlan& plan, std::uint64_t val_documents,
                    const ShardWriter& train, const ShardWriter& val) {
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (const ShardWriter* writer : {&train, &val}) {
    for (const auto& [name, count] : writer->written()) {
      nlohmann::ordered_json entry;
      entry["file"] = name;
      entry["split"] = writer == &train ? "train" : "val";
      entry["tokens"] = count;
      shards.push_back(entry);
    }
  }
  std::vector<std::string> used;
  for (const CorpusFile& f : files) {
    if (!std::binary_search(skipped.begin(), skipped.end(), f.path)) used.push_back(f.path);
  }
  nlohmann::ordered_json manifest;
  manifest["format"] = "kiln-token-shards";
  manifest["version"] = kShardVersion;
  manifest["tokenizer"] = tokenizer.name();
  manifest["vocab_size"] = tokenizer.vocab_size();
  manifest["eot"] = tokenizer.eot();
  manifest["inputs"] = options.inputs;
  manifest["files"] = used;
  manifest["skipped"] = skipped;
  manifest["separator"] = options.separator;
  manifest["val_fraction"] = options.val_fraction;
  manifest["seed"] = options.seed;
  manifest["shard_tokens"] = options.shard_tokens;
  manifest["split"] = plan.split_tokens ? "tokens" : "documents";
  manifest["documents"] = plan.documents;
  manifest["train_documents"] = plan.split_tokens ? 1 : plan.documents - val_documents;
  manifest["val_documents"] = val_documents;
  manifest["train_tokens"] = train.total();
  manifest["val_tokens"] = val.total();
  manifest["shards"] = shards;
  write_text_atomically((fs::path(options.out_dir) / "manifest.json").string(),
                        manifest.dump(2) + "\n");
}

void check_options(const TokenizeOptions& options) {
  KILN_CHECK(!options.inputs.empty(), "tokenize: no inputs; pass text files or folders with ",
             "--input PATH...");
  KILN_CHECK(!options.out_dir.empty(), "tokenize: no output folder; pass --out DIR");
  KILN_CHECK(options.val_fraction >= 0.0 && options.val_fraction < 1.0,
             "tokenize: val_fraction is ", options.val_fraction,
             " but must be in [0, 1); 0.05 keeps one document in twenty for validation");
  KILN_CHECK(options.shard_tokens > 0, "tokenize: shard_tokens must be positive");
}

// The whole job, once the options are known to be valid; std::filesystem errors propagate.
TokenizeReport tokenize_checked(const TokenizeOptions& options) {
  std::unique_ptr<Tokenizer> tokenizer = make_tokenizer(options.tokenizer, options.tokenizer_dir);
  std::vector<std::string> skipped;
  const CorpusOptions corpus = corpus_options(options);
  const std::vector<CorpusFile> files = list_corpus_files(corpus, skipped);

  std::uint64_t documents = 0, skipped_records = 0;
  for_each_corpus_document(files, corpus, &skipped, &skipped_records,
                           [&](std::string_view) { ++documents; });
  std::sort(skipped.begin(), skipped.end());
  KILN_CHECK(documents > 0, "tokenize: the inputs hold no text (", files.size(),
             " files read, ", skipped.size(), " skipped as links or binary); check --input");
  const SplitPlan plan = plan_split(options, documents);

  fs::create_directories(options.out_dir);
  const int vocab = tokenizer->vocab_size();
  ShardWriter train(options.out_dir, "train", options.shard_tokens, vocab);
  ShardWriter val(options.out_dir, "val", options.shard_tokens, vocab);
  std::uint64_t doc = 0, val_documents = 0;
  for_each_corpus_document(files, corpus, nullptr, nullptr, [&](std::string_view text) {
    std::vector<std::uint32_t> tokens = tokenizer->encode(text);
    if (plan.split_tokens && tokens.size() >= 2) {
      // One document: the last val_fraction of its tokens (at least one) is validation.
      auto n_val = static_cast<std::size_t>(std::llround(tokens.size() * plan.val_fraction));
      n_val = std::clamp<std::size_t>(n_val, 1, tokens.size() - 1);
      std::vector<std::uint32_t> tail(tokens.end() - n_val, tokens.end());
      tokens.resize(tokens.size() - n_val);
      tail.push_back(tokenizer->eot());
      val.add(tail);
      ++val_documents;
    }
    tokens.push_back(tokenizer->eot());
    const bool to_val = !plan.split_tokens && plan.is_val(doc);
    (to_val ? val : train).add(tokens);
    val_documents += to_val ? 1 : 0;
    ++doc;
  });
  KILN_ASSERT(doc == documents);
  train.finish();
  val.finish();

  TokenizeReport report;
  report.documents = documents;
  report.skipped_records = skipped_records;
  report.train_tokens = train.total();
  report.val_tokens = val.total();
  std::vector<std::string> names;
  for (const ShardWriter* writer : {&train, &val}) {
    for (const auto& written : writer->written()) {
      report.shards.push_back((fs::path(options.out_dir) / written.first).string());
      names.push_back(written.first);
    }
  }
  remove_stale_shards(options.out_dir, names);
  write_manifest(options, *tokenizer, files, skipped, plan, val_documents, train, val);
  return report;
}

}  // namespace

TokenizeReport tokenize_corpus(const TokenizeOptions& options) {
  check_options(options);
  fs::path out = fs::path(options.out_dir).lexically_normal();
  if (!out.has_filename()) out = out.parent_path();  // "data/fortunes/"
  // The shards and manifest are written into a folder beside --out and swapped in whole when
  // complete, so an interrupted run leaves the previous output as it was, never new train shards
  // beside an old validation shard and manifest. --out is replaced whole, so it may hold only
  // kiln's files.
  static const std::regex kOurs(R"((train|val)_[0-9]+\.bin|manifest\.json(\.tmp)?|sources\.json)");
  std::error_code ec;
  KILN_CHECK(!fs::exists(out, ec) || fs::is_directory(out, ec), "tokenize: --out ", out.string(),
             " is a file; the output is a folder: choose a new or empty folder for --out");
  if (fs::is_directory(out, ec))
    for (const fs::directory_entry& entry : fs::directory_iterator(out, ec)) {
      const std::string name = entry.path().filename().string();
      KILN_CHECK(std::regex_match(name, kOurs), "tokenize: --out ", out.string(), " holds ", name, ", which kiln "
                 "tokenize did not write; the output folder is replaced whole when tokenizing ends: choose a new "
                 "or empty folder for --out");
    }
  TokenizeOptions aside = options;
  aside.out_dir = out.string() + ".tmp-" + std::to_string(::getpid());
  // What killed runs left beside --out (their process is gone) is removed.
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  const std::string stem = out.filename().string() + ".tmp-";
  for (const fs::directory_entry& entry : fs::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(stem, 0) != 0 || name.find_first_not_of("0123456789", stem.size()) != std::string::npos) continue;
    const long pid = std::strtol(name.c_str() + stem.size(), nullptr, 10);
    if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove_all(entry.path(), ec);
  }
  fs::remove_all(aside.out_dir, ec);
  TokenizeReport report;
  try {
    report = tokenize_checked(aside);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(aside.out_dir, ec);
    throw Error(message("tokenize: ", e.what(), "; check that the inputs are readable and ",
                        "the output folder ", options.out_dir, " is writable"));
  } catch (...) {
    fs::remove_all(aside.out_dir, ec);
    throw;
  }
  replace_folder(aside.out_dir, out.string());
  for (std::string& shard : report.shards) shard = (out / fs::path(shard).filename()).string();
  return report;
}

std::vector<bool> validation_documents(const TokenizeOptions& options, std::uint64_t documents) {
  KILN_CHECK(options.val_fraction >= 0.0 && options.val_fraction < 1.0, "val_fraction is ", options.val_fraction,
             " but must be in [0, 1)");
  KILN_CHECK(documents >= 2, "the corpus has ", documents, " document(s); a split into training and validation "
             "documents needs 2 or more (set data.separator to cut a file into documents)");
  const SplitPlan plan = plan_split(options, documents);
  std::vector<bool> out(documents);
  for (std::uint64_t d = 0; d < documents; ++d) out[d] = plan.is_val(d);
  return out;
}

}  // namespace kiln
