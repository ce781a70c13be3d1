// TokenLoader: random training windows and sequential validation windows over token shards.
// A window of seq_len+1 tokens at `start` gives inputs = tokens[start, start+seq_len) and
// targets = tokens[start+1, start+seq_len+1). Shard s has n_s - seq_len valid random starts
// and (n_s - 1) / seq_len non-overlapping sequential windows; counts are kept as prefix sums
// so a global window number maps to (shard, offset) by binary search.
#include "core/data/loader.h"

#include <glob.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "kernels/error.h"
#include "core/rng.h"

namespace kiln {

namespace {

// Maps a uniform 64-bit value to [0, n) without modulo bias worth mentioning (Lemire 2019).
std::uint64_t scale_to(std::uint64_t random, std::uint64_t n) {
  return static_cast<std::uint64_t>((static_cast<unsigned __int128>(random) * n) >> 64);
}

// The shard holding global window `w` and the window's number inside it.
std::pair<std::size_t, std::uint64_t> locate(const std::vector<std::uint64_t>& ends,
                                             std::uint64_t w) {
  auto it = std::upper_bound(ends.begin(), ends.end(), w);
  KILN_ASSERT(it != ends.end());
  std::size_t shard = static_cast<std::size_t>(it - ends.begin());
  std::uint64_t before = shard == 0 ? 0 : ends[shard - 1];
  return {shard, w - before};
}

std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t found{};
  int rc = ::glob(pattern.c_str(), 0, nullptr, &found);
  std::vector<std::string> paths;
  if (rc == 0) {
    for (std::size_t i = 0; i < found.gl_pathc; ++i) paths.emplace_back(found.gl_pathv[i]);
  }
  ::globfree(&found);
  KILN_CHECK(rc == 0 || rc == GLOB_NOMATCH, "cannot expand shard pattern '", pattern,
             "' (glob error ", rc, "); check that its folders are readable");
  return paths;
}

}  // namespace

std::vector<std::string> expand_shard_pattern(const std::string& pattern) {
  KILN_CHECK(!pattern.empty(), "no token shards given (empty path); set data.train to a shard ",
             "file, folder or glob made by `kiln tokenize`");
  std::error_code ec;
  std::vector<std::string> paths;
  if (std::filesystem::is_directory(pattern, ec)) {
    paths = glob_files((std::filesystem::path(pattern) / "*.bin").string());
  } else {
    paths = glob_files(pattern);
  }
  std::erase_if(paths, [](const std::string& p) {
    std::error_code e;
    return !std::filesystem::is_regular_file(p, e);
  });
  std::sort(paths.begin(), paths.end());
  KILN_CHECK(!paths.empty(), "no token shards match '", pattern, "'; make them with ",
             "`kiln tokenize --input TEXT... --out DIR` and point at DIR/train_*.bin");
  return paths;
}

std::vector<std::pair<std::string, double>> parse_blend(const std::string& spec) {
  std::vector<std::pair<std::string, double>> parts;
  std::size_t begin = 0;
  while (begin <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', begin), spec.size());
    const std::string item = spec.substr(begin, comma - begin);
    const std::size_t at = item.rfind('@');
    double weight = 1.0;
    if (at != std::string::npos) {
      char* end = nullptr;
      weight = std::strtod(item.c_str() + at + 1, &end);
      KILN_CHECK(end != item.c_str() + at + 1 && *end == '\0' && weight > 0 && std::isfinite(weight),
                 "data blend '", spec, "': '", item.substr(at + 1), "' is not a positive weight; write ",
                 "PATTERN@WEIGHT, e.g. data/books/train_*.bin@0.7,data/web/train_*.bin@0.3");
    }
    parts.emplace_back(item.substr(0, at), weight);
    begin = comma + 1;
  }
  return parts;
}

TokenLoader::TokenLoader(const std::string& pattern, int batch, int seq_len,
                         std::uint64_t seed)
    : batch_(batch), seq_len_(seq_len), seed_(seed) {
  KILN_CHECK(batch > 0, "TokenLoader: batch is ", batch, " but must be at least 1");
  KILN_CHECK(seq_len > 0, "TokenLoader: seq_len is ", seq_len, " but must be at least 1");
  const auto window = static_cast<std::uint64_t>(seq_len) + 1;
  std::uint64_t largest = 0;
  const auto blend = parse_blend(pattern);
  double weight_sum = 0.0;
  for (const auto& part : blend) weight_sum += part.second;
  double cumulative = 0.0;
  for (const auto& [source_pattern, weight] : blend) {
    const std::uint64_t first_window = total_starts_;
    for (const std::string& path : expand_shard_pattern(source_pattern)) {
      Shard shard(path);
      if (shards_.empty()) {
        vocab_size_ = shard.vocab_size();
      } else {
        KILN_CHECK(shard.vocab_size() == vocab_size_, "token shards disagree on vocab_size: ",
                   shards_.front().path(), " has ", vocab_size_, " but ", path, " has ",
                   shard.vocab_size(), "; they were made by different tokenizers, re-tokenize ",
                   "them together or select one set");
      }
      const std::uint64_t n = shard.size();
      num_tokens_ += n;
      largest = std::max(largest, n);
      total_starts_ += n >= window ? n - seq_len : 0;
      total_sequential_ += n >= window ? (n - 1) / seq_len : 0;
      starts_end_.push_back(total_starts_);
      sequential_end_.push_back(total_sequential_);
      shards_.push_back(std::move(shard));
    }
    cumulative += weight / weight_sum;
    sources_.push_back({first_window, total_starts_ - first_window, cumulative});
    KILN_CHECK(blend.size() == 1 || sources_.back().windows > 0, "data blend: the shards of '",
               source_pattern, "' hold no window of ", window, " tokens; lower train.seq_len or drop it");
  }
  KILN_CHECK(total_starts_ > 0, "token shards '", pattern, "' are too short for seq_len ",
             seq_len, ": a window needs ", window, " tokens but the largest of the ",
             shards_.size(), " shard(s) holds ", largest, " (", num_tokens_,
             " in total); lower train.seq_len or tokenize more text");
}

void TokenLoader::fill_row(std::size_t shard, std::uint64_t start, int b, std::int32_t* inputs,
                           std::int32_t* targets) const {
  const std::size_t row = static_cast<std::size_t>(b) * static_cast<std::size_t>(seq_len_);
  shards_[shard].read(start, static_cast<std::uint64_t>(seq_len_), inputs + row);
  shards_[shard].read(start + 1, static_cast<std::uint64_t>(seq_len_), targets + row);
}

void TokenLoader::next_batch(std::int32_t* inputs, std::int32_t* targets) {
  const Rng rng(seed_, kDataSampleStream);
  for (int b = 0; b < batch_; ++b) {
    // Row b of this rank is row part_*batch + b of a global batch of batch*parts rows.
    const std::uint64_t rows = static_cast<std::uint64_t>(batch_) * parts_;
    const std::uint64_t draw = position_ * rows + static_cast<std::uint64_t>(part_) * batch_ + b;
    std::uint64_t w;
    if (sources_.size() == 1) {
      w = scale_to(rng.u64(draw), total_starts_);
    } else {  // a blend: pick the source by weight (its own stream), then a window inside it
      const float u = Rng(seed_, kDataBlendStream).uniform(draw);
      std::size_t k = 0;
      while (k + 1 < sources_.size() && u >= sources_[k].cumulative) ++k;
      w = sources_[k].first_window + scale_to(rng.u64(draw), sources_[k].windows);
    }
    auto [shard, start] = locate(starts_end_, w);
    fill_row(shard, start, b, inputs, targets);
  }
  ++position_;
}

void TokenLoader::set_partition(int part, int parts) {
  KILN_CHECK(parts >= 1 && part >= 0 && part < parts, "data partition ", part, " of ", parts,
             " is invalid");
  part_ = part;
  parts_ = parts;
}

void TokenLoader::batch_at(std::uint64_t index, std::int32_t* inputs,
                           std::int32_t* targets) const {
  for (int b = 0; b < batch_; ++b) {
    // (index*batch + b) mod total, computed without overflowing for huge indices.
    const unsigned __int128 global =
        static_cast<unsigned __int128>(index) * static_cast<std::uint64_t>(batch_) + b;
    const auto w = static_cast<std::uint64_t>(global % total_sequential_);
    auto [shard, k] = locate(sequential_end_, w);
    fill_row(shard, k * static_cast<std::uint64_t>(seq_len_), b, inputs, targets);
  }
}

}  // namespace kiln
