// GPT-2's byte-level BPE, token for token the same as OpenAI's GPT-2 encoder and tiktoken's
// "gpt2" encoding. It reads a vocabulary in OpenAI's two-file format (encoder.json, vocab.bpe)
// from a folder: GPT-2's own (50257 tokens) or one learned by `kiln tokenizer train`
// (core/data/bpe_train.h); the vocab size and end-of-text id come from encoder.json. It
// pre-tokenises with GPT-2's regex (PCRE2, UTF + UCP, JIT when available), merges each piece by
// rank (tiktoken's rule: the adjacent pair whose concatenation has the lowest rank first,
// leftmost on ties) and caches pieces per thread. docs/tokenizer.md has the details.
//
// Special tokens: encode() treats a literal "<|endoftext|>" in the text as ordinary text (like
// tiktoken's encode_ordinary), so a corpus cannot inject document boundaries; kiln tokenize
// adds the end-of-text id itself. encode_with_special() turns each "<|endoftext|>" into eot().
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/data/tokenizer.h"

namespace kiln {

class Gpt2Bpe final : public Tokenizer {
 public:
  // Loads dir/encoder.json and dir/vocab.bpe; a missing or garbled file is an Error naming it.
  // encoder.json must map N >= 257 strings to the ids 0..N-1 (each once), one of them
  // "<|endoftext|>"; merge i of vocab.bpe must make the token with id 256 + i (tiktoken's rule).
  explicit Gpt2Bpe(const std::string& dir);
  ~Gpt2Bpe() override;
  Gpt2Bpe(const Gpt2Bpe&) = delete;
  Gpt2Bpe& operator=(const Gpt2Bpe&) = delete;

  std::string name() const override { return "gpt2"; }
  int vocab_size() const override { return vocab_size_; }        // GPT-2: 50257
  std::uint32_t eot() const override { return eot_; }             // GPT-2: 50256
  // Ordinary text: "<|endoftext|>" in the text is encoded as the characters it is made of.
  // Any bytes are accepted; bytes that are not valid UTF-8 become pieces of their own.
  std::vector<std::uint32_t> encode(std::string_view text) const override;
  // As encode(), but each literal "<|endoftext|>" becomes the single id eot().
  std::vector<std::uint32_t> encode_with_special(std::string_view text) const;
  // encode() of every document, spread over OpenMP threads (threads <= 0: OpenMP's default,
  // i.e. OMP_NUM_THREADS). The result equals encoding each document in turn.
  std::vector<std::vector<std::uint32_t>> encode_batch(const std::vector<std::string_view>& docs,
                                                       int threads = 0) const;
  std::string decode(const std::vector<std::uint32_t>& ids) const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int vocab_size_ = 0;
  std::uint32_t eot_ = 0;
};

// GPT-2's pre-tokenisation on its own: the regex pieces that BPE merges within, plus runs of
// bytes the regex cannot match (invalid UTF-8). The BPE trainer (core/data/bpe_train.h) uses it
// so that learning and encoding cut text identically. Thread-safe.
class Gpt2Pretokenizer {
 public:
  Gpt2Pretokenizer();
  ~Gpt2Pretokenizer();
  Gpt2Pretokenizer(const Gpt2Pretokenizer&) = delete;
  Gpt2Pretokenizer& operator=(const Gpt2Pretokenizer&) = delete;

  // Calls piece(p) for each piece of text, in order; the pieces concatenate to text.
  void split(std::string_view text, const std::function<void(std::string_view)>& piece) const;

 private:
  struct Regex;
  std::unique_ptr<Regex> regex_;
};

// GPT-2's bytes_to_unicode() as used in its files. gpt2_byte_order()[i] is the byte whose token
// has id i (printable bytes '!'..'~', 0xA1..0xAC, 0xAE..0xFF first, then the other 68 in byte
// order), which is how OpenAI's encoder.json numbers the 256 byte tokens.
std::array<std::uint8_t, 256> gpt2_byte_order();
// Token bytes as written in encoder.json and vocab.bpe: each byte as its bytes_to_unicode
// character, UTF-8 encoded (a space becomes U+0120 'Ġ').
std::string gpt2_token_text(std::string_view bytes);

// The folder holding encoder.json and vocab.bpe: `dir` when not empty, else the environment
// variable KILN_GPT2_BPE_DIR, else an Error saying to set data.tokenizer_dir.
std::string gpt2_bpe_dir(const std::string& dir);

}  // namespace kiln
