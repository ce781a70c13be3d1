// data.corpus: training straight from text. `kiln train` tokenizes the corpus with the configured
// tokenizer into a cache folder and trains on those shards, so switching data.tokenizer (byte ->
// gpt2) is one config key. The folder is <cache_dir>/<tokenizer>-<key>, the key a hash of
// everything that decides the tokens (corpus, separator, JSONL field, tokenizer and its
// vocabulary files); a later run reuses it while every corpus file keeps its size and
// modification time, and re-tokenizes otherwise. Shards are written to a temporary folder and
// renamed into place, so an interrupted run never leaves a half-written cache behind.
#pragma once

#include <string>

#include "core/config.h"

namespace kiln {

struct CorpusShards {
  std::string dir;    // the cache folder
  std::string train;  // dir/train_*.bin
  std::string val;    // dir/val_*.bin
};

// Where data.corpus's shards live; touches nothing.
CorpusShards corpus_shards(const DataConfig& data);

// Makes sure the shards exist and are current; returns true when it tokenized (false: reused).
// Call from one process only (the trainer's rank 0) and let the others wait.
bool prepare_corpus_shards(const DataConfig& data, const CorpusShards& where);

}  // namespace kiln
