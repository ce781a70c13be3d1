// GPT-2's byte-level BPE, token for token the same as OpenAI's GPT-2 encoder and tiktoken's
// "gpt2" encoding. It reads OpenAI's two files (encoder.json, vocab.bpe) from a folder,
// pre-tokenises with GPT-2's regex (PCRE2, UTF + UCP, JIT when available), merges each piece by
// rank (tiktoken's rule: the adjacent pair whose concatenation has the lowest rank first,
// leftmost on ties) and caches pieces per thread. docs/tokenizer.md has the details.
//
// Special tokens: encode() treats a literal "<|endoftext|>" in the text as ordinary text (like
// tiktoken's encode_ordinary), so a corpus cannot inject document boundaries; kiln tokenize
// adds the end-of-text id itself. encode_with_special() turns each "<|endoftext|>" into 50256.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/data/tokenizer.h"

namespace kiln {

class Gpt2Bpe final : public Tokenizer {
 public:
  static constexpr std::uint32_t kEot = 50256;
  static constexpr int kVocabSize = 50257;

  // Loads dir/encoder.json and dir/vocab.bpe; a missing or garbled file is an Error naming it.
  explicit Gpt2Bpe(const std::string& dir);
  ~Gpt2Bpe() override;
  Gpt2Bpe(const Gpt2Bpe&) = delete;
  Gpt2Bpe& operator=(const Gpt2Bpe&) = delete;

  std::string name() const override { return "gpt2"; }
  int vocab_size() const override { return kVocabSize; }
  std::uint32_t eot() const override { return kEot; }
  // Ordinary text: "<|endoftext|>" in the text is encoded as the characters it is made of.
  // Any bytes are accepted; bytes that are not valid UTF-8 become pieces of their own.
  std::vector<std::uint32_t> encode(std::string_view text) const override;
  // As encode(), but each literal "<|endoftext|>" becomes the single id 50256.
  std::vector<std::uint32_t> encode_with_special(std::string_view text) const;
  // encode() of every document, spread over OpenMP threads (threads <= 0: OpenMP's default,
  // i.e. OMP_NUM_THREADS). The result equals encoding each document in turn.
  std::vector<std::vector<std::uint32_t>> encode_batch(const std::vector<std::string_view>& docs,
                                                       int threads = 0) const;
  std::string decode(const std::vector<std::uint32_t>& ids) const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The folder holding encoder.json and vocab.bpe: `dir` when not empty, else the environment
// variable KILN_GPT2_BPE_DIR, else an Error saying to set data.tokenizer_dir.
std::string gpt2_bpe_dir(const std::string& dir);

}  // namespace kiln
