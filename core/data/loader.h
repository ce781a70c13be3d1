// Training and validation windows drawn from token shards.
// Training batches are windows at random positions, uniform over every valid window start in
// every shard; each is a pure function of (seed, position) through the counter-based Rng, so
// the whole sampler state is one integer that checkpoints save and resume restores exactly.
// Validation batches come from a fixed sequential pass, so the same index is always the same
// batch and validation losses are comparable across runs. Windows never cross a shard's end.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/data/shard.h"

namespace kiln {

// The Rng stream that training-window sampling draws from (distinct from init and dropout).
inline constexpr std::uint64_t kDataSampleStream = 0x6B696C6E64617461ull;  // "kilndata"
// The stream that picks the source of each window when several datasets are blended.
inline constexpr std::uint64_t kDataBlendStream = 0x6B696C6E626C6E64ull;  // "kilnblnd"

// Shard files named by a pattern: an existing file, a folder (every *.bin inside) or a glob
// such as "data/x/train_*.bin". Sorted by path; no match is an Error suggesting `kiln tokenize`.
std::vector<std::string> expand_shard_pattern(const std::string& pattern);

class TokenLoader {
 public:
  // pattern: shards as for expand_shard_pattern, or a weighted blend of several datasets,
  // "PATTERN@WEIGHT,PATTERN@WEIGHT,...": each training window comes from a source drawn with
  // probability weight / total, then uniformly from that source's windows.
  TokenLoader(const std::string& pattern, int batch, int seq_len, std::uint64_t seed);

  // Next training batch: `batch` windows of seq_len+1 tokens at random starts (uniform over all
  // valid starts across all shards, draw i = Rng(seed, kDataSampleStream).u64(position*batch+b);
  // with a partition, rows part*batch .. of a global batch of batch*parts rows).
  // inputs[b*seq_len + t] = window[t], targets[b*seq_len + t] = window[t+1]; both (batch, seq_len).
  void next_batch(std::int32_t* inputs, std::int32_t* targets);
  // Batch `index` of a fixed sequential pass (non-overlapping windows from the start of the first
  // shard, wrapping around), for validation: the same index gives the same batch, always.
  void batch_at(std::uint64_t index, std::int32_t* inputs, std::int32_t* targets) const;

  // Data parallelism: this loader draws part `part` of `parts` disjoint slices of every global
  // batch, so `parts` loaders of `batch` rows see exactly what one loader of batch*parts rows
  // sees, whatever the split.
  void set_partition(int part, int parts);

  std::uint64_t position() const { return position_; }  // next_batch calls so far
  void set_position(std::uint64_t position) { position_ = position; }
  int vocab_size() const { return vocab_size_; }  // from the shard headers
  std::uint64_t num_tokens() const { return num_tokens_; }
  int batch() const { return batch_; }
  int seq_len() const { return seq_len_; }
  const std::vector<Shard>& shards() const { return shards_; }
  std::uint64_t num_windows() const { return total_starts_; }       // random window starts
  std::uint64_t num_sequential() const { return total_sequential_; }  // batch_at windows

 private:
  // Copies the window of seq_len+1 tokens at `start` in shard `shard` into row b.
  void fill_row(std::size_t shard, std::uint64_t start, int b, std::int32_t* inputs,
                std::int32_t* targets) const;

  std::vector<Shard> shards_;
  int batch_;
  int seq_len_;
  std::uint64_t seed_;
  std::uint64_t position_ = 0;
  struct Source {
    std::uint64_t first_window, windows;  // its random windows in the global numbering
    double cumulative;                    // weights so far, normalised to end at 1
  };
  std::vector<Source> sources_;
  int part_ = 0, parts_ = 1;
  int vocab_size_ = 0;
  std::uint64_t num_tokens_ = 0;
  // Cumulative counts per shard: starts_end_[s] = valid random starts in shards 0..s.
  std::vector<std::uint64_t> starts_end_;
  std::vector<std::uint64_t> sequential_end_;  // the same for sequential windows
  std::uint64_t total_starts_ = 0;
  std::uint64_t total_sequential_ = 0;
};

}  // namespace kiln
