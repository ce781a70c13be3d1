// `kiln tokenize`: turns text files into token shards plus a manifest.
// Text is cut into documents (one per file, or split on separator lines such as fortune's "%"),
// each document is encoded and closed with the end-of-text token, and whole documents are
// assigned to train or validation by a seeded draw, so the split never leaks text across it and
// the output is byte-identical for the same inputs and options. Format: docs/data-format.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

struct TokenizeOptions {
  // Text files, folders or glob patterns ("corpus/*.txt"). A folder contributes every regular
  // file directly inside it, sorted by name; symlinks and files containing NUL bytes (binary,
  // e.g. fortune's *.dat indexes) are skipped and listed in the manifest. A file named directly
  // must be text. Files ending in .jsonl are JSON Lines: each record's jsonl_field is one
  // document.
  std::vector<std::string> inputs;
  std::string jsonl_field = "text";
  bool skip_bad_records = false;  // JSONL: count and skip malformed records instead of failing
  // Receives train_000.bin, val_000.bin (more when shard_tokens is exceeded) and manifest.json;
  // created if missing. Older train_NNN.bin / val_NNN.bin not rewritten by this run are removed.
  std::string out_dir;
  std::string tokenizer = "byte";
  std::string tokenizer_dir;  // gpt2: folder of encoder.json and vocab.bpe ("" = $KILN_GPT2_BPE_DIR)
  // "" = each file is one document; otherwise a line equal to this string (a trailing '\r' is
  // ignored) separates documents.
  std::string separator;
  // A document goes to validation when Rng(seed, kTokenizeSplitStream).uniform(doc_index) <
  // val_fraction (doc_index counts non-empty documents in input order). Must be in [0, 1).
  double val_fraction = 0.05;
  std::uint64_t seed = 1;
  std::uint64_t shard_tokens = 100'000'000;  // most tokens per shard file
};

struct TokenizeReport {
  std::uint64_t documents = 0;     // non-empty documents found
  std::uint64_t skipped_records = 0;  // bad JSONL records skipped (skip_bad_records only)
  std::uint64_t train_tokens = 0;  // including one eot per document
  std::uint64_t val_tokens = 0;
  std::vector<std::string> shards;  // paths written: train shards first, then val shards
};

// The Rng stream of the train/validation draw.
inline constexpr std::uint64_t kTokenizeSplitStream = 0x6B696C6E73706C74ull;  // "kilnsplt"

TokenizeReport tokenize_corpus(const TokenizeOptions& options);

// Which of `documents` documents go to validation under options.val_fraction and options.seed,
// exactly as tokenize_corpus splits them (the fix-ups that keep both splits non-empty included).
// A single document is split by tokens, not whole, so it is an Error here.
std::vector<bool> validation_documents(const TokenizeOptions& options, std::uint64_t documents);

}  // namespace kiln
