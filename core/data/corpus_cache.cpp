// data.corpus -> cached token shards (see corpus_cache.h).
#include "core/data/corpus_cache.h"

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <system_error>
#include <unistd.h>

#include "core/checkpoint/atomic_file.h"
#include "core/data/gpt2_bpe.h"
#include "core/data/tokenize.h"
#include "kernels/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

// FNV-1a, 64 bits: a stable name for a folder, not a security boundary.
struct Fnv {
  std::uint64_t h = 0xcbf29ce484222325ull;
  void add(std::string_view s) {
    for (unsigned char ch : s) {
      h ^= ch;
      h *= 0x100000001b3ull;
    }
    h ^= 0xff;  // field separator
    h *= 0x100000001b3ull;
  }
};

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in, "cannot read ", path, "; check data.tokenizer_dir");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// What each corpus file looked like when it was tokenized.
nlohmann::json file_stamps(const nlohmann::json& files) {
  nlohmann::json stamps = nlohmann::json::array();
  for (const auto& f : files) {
    const std::string path = f.get<std::string>();
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    const auto mtime = fs::last_write_time(path, ec);
    stamps.push_back({{"file", path},
                      {"size", ec ? -1 : static_cast<std::int64_t>(size)},
                      {"mtime", ec ? 0 : static_cast<std::int64_t>(mtime.time_since_epoch().count())}});
  }
  return stamps;
}

bool cache_is_current(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir + "/manifest.json", ec) || !fs::exists(dir + "/sources.json", ec)) return false;
  try {
    const auto manifest = nlohmann::json::parse(read_whole(dir + "/manifest.json"));
    const auto sources = nlohmann::json::parse(read_whole(dir + "/sources.json"));
    return file_stamps(manifest.at("files")) == sources;
  } catch (const std::exception&) {
    return false;  // damaged: tokenize again
  }
}

}  // namespace

CorpusShards corpus_shards(const DataConfig& data) {
  KILN_CHECK(!data.corpus.empty(), "data.corpus is empty");
  Fnv key;
  for (std::string_view part : {std::string_view(data.corpus), std::string_view(data.separator),
                                std::string_view(data.jsonl_field), std::string_view(data.tokenizer)})
    key.add(part);
  if (data.tokenizer == "gpt2") {
    // The vocabulary itself, not its folder's name: a retrained tokenizer gets a new cache.
    const std::string dir = gpt2_bpe_dir(data.tokenizer_dir);
    key.add(read_whole(dir + "/encoder.json"));
    key.add(read_whole(dir + "/vocab.bpe"));
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(key.h));
  CorpusShards out;
  out.dir = (fs::path(data.cache_dir) / (data.tokenizer + "-" + hex)).string();
  out.train = out.dir + "/train_*.bin";
  out.val = out.dir + "/val_*.bin";
  return out;
}

bool prepare_corpus_shards(const DataConfig& data, const CorpusShards& where) {
  if (cache_is_current(where.dir)) return false;
  std::error_code ec;
  fs::create_directories(data.cache_dir, ec);
  KILN_CHECK(!ec, "cannot create data.cache_dir=", data.cache_dir, ": ", ec.message(),
             "; choose a writable folder");
  const std::string tmp = where.dir + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  TokenizeOptions options;
  options.inputs = {data.corpus};
  options.separator = data.separator;
  options.jsonl_field = data.jsonl_field;
  options.tokenizer = data.tokenizer;
  options.tokenizer_dir = data.tokenizer_dir;
  options.out_dir = tmp;
  try {
    tokenize_corpus(options);
    const auto manifest = nlohmann::json::parse(read_whole(tmp + "/manifest.json"));
    write_file_atomic(tmp + "/sources.json", file_stamps(manifest.at("files")).dump(1) + "\n");
  } catch (const Error& e) {
    fs::remove_all(tmp, ec);
    throw Error(message("data.corpus=", data.corpus, ": ", e.what()));
  }
  replace_folder(tmp, where.dir);
  return true;
}

}  // namespace kiln
