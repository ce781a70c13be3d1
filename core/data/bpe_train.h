// Learning a byte-level BPE vocabulary the way GPT-2's was built, for `kiln tokenizer train`.
// Text is cut into pieces by GPT-2's pre-tokenisation regex (the same code the encoder runs,
// Gpt2Pretokenizer); the pieces are counted; starting from the 256 byte tokens, the most
// frequent adjacent pair of tokens inside a piece is merged into a new token, again and again,
// never across a piece boundary, until vocab_size - 1 tokens exist; "<|endoftext|>" is the last
// id. Ties between equally frequent pairs go to the pair (left bytes, right bytes) that is
// lexicographically smallest (bytes compared as unsigned values), so the result depends only on
// the text. The output is GPT-2's two files, which Gpt2Bpe (core/data/gpt2_bpe.h) loads.
// docs/tokenizer.md, "Training a tokenizer", has the details.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/data/corpus.h"

namespace kiln {

struct BpeTrainOptions {
  // Stop early when the most frequent pair occurs fewer times than this (the vocabulary is then
  // smaller than asked; BpeVocabulary says why it stopped). 2 never learns a merge that only one
  // piece occurrence in the whole corpus supports.
  std::uint64_t min_frequency = 2;
  int threads = 0;  // pre-tokenisation threads (OpenMP); <= 0: OpenMP's default
};

// The learner's input: every distinct piece of the text with the number of times it occurs.
// add() may be called once or many times (a batch of documents at a time); the counts, and so
// the vocabulary learned from them, do not depend on the batching or the thread count.
class BpePieceCounts {
 public:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Map = std::unordered_map<std::string, std::uint64_t, Hash, std::equal_to<>>;

  void add(const std::vector<std::string_view>& documents, int threads = 0);
  void add_piece(std::string_view piece, std::uint64_t count);  // for tests and other sources

  const Map& pieces() const { return pieces_; }
  std::uint64_t documents() const { return documents_; }
  std::uint64_t bytes() const { return bytes_; }

 private:
  Map pieces_;
  std::uint64_t documents_ = 0;
  std::uint64_t bytes_ = 0;
};

// A learned vocabulary. Token ids: 0..255 are the single bytes in GPT-2's order
// (gpt2_byte_order()), 256 + i is the token made by merges[i], and eot() = tokens.size() is
// "<|endoftext|>".
struct BpeVocabulary {
  enum class Stop { kVocabSize, kMinFrequency, kNoPairs };

  std::vector<std::string> tokens;                               // id -> bytes (below eot)
  std::vector<std::pair<std::uint32_t, std::uint32_t>> merges;   // (left id, right id)
  Stop stop = Stop::kVocabSize;  // why learning ended

  int vocab_size() const { return static_cast<int>(tokens.size()) + 1; }
  std::uint32_t eot() const { return static_cast<std::uint32_t>(tokens.size()); }
};

// The smallest vocab_size train_bpe accepts: 256 bytes, one merge and "<|endoftext|>".
inline constexpr int kMinBpeVocabSize = 258;

// An Error saying the minimum when vocab_size < kMinBpeVocabSize.
void check_bpe_vocab_size(int vocab_size);

// Learns merges until vocab_size tokens exist (including "<|endoftext|>"), or fewer when
// options.min_frequency stops it or no pair is left. vocab_size < kMinBpeVocabSize is an Error.
BpeVocabulary train_bpe(const BpePieceCounts& counts, int vocab_size,
                        const BpeTrainOptions& options = {});
// The same from documents (counted with options.threads).
BpeVocabulary train_bpe(const std::vector<std::string_view>& documents, int vocab_size,
                        const BpeTrainOptions& options = {});

struct BpeCorpusCounts {
  BpePieceCounts counts;
  std::vector<CorpusFile> files;      // as list_corpus_files found them
  std::vector<std::string> skipped;   // links and binary folder members, sorted
  std::uint64_t skipped_records = 0;  // bad JSONL records (corpus.skip_bad_records only)
};

// Counts the pieces of every document of a corpus (core/data/corpus.h), a batch of documents at
// a time, so that about 64 MB of text is held besides the counts. A corpus without a non-blank
// document is an Error naming the inputs.
BpeCorpusCounts count_corpus_pieces(const CorpusOptions& corpus, int threads = 0);

// Writes dir/encoder.json (token strings -> ids, in id order, in OpenAI's format: one line,
// non-ASCII as \uXXXX) and dir/vocab.bpe ("#version: 0.2", then one "left right" merge per line
// in merge order), each atomically (temp file + rename). dir is created if missing. Returns the
// two paths.
std::vector<std::string> write_bpe_files(const BpeVocabulary& vocab, const std::string& dir);

}  // namespace kiln
