// Text <-> token ids. Everything that turns text into training data goes through this
// interface, so the byte-level tokenizer and GPT-2's BPE (core/data/gpt2_bpe.h) are
// interchangeable: shards record only ids and a vocab size, never the tokenizer's internals.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;
  virtual int vocab_size() const = 0;      // every id is < vocab_size
  virtual std::uint32_t eot() const = 0;   // the end-of-text id that closes each document
  virtual std::vector<std::uint32_t> encode(std::string_view text) const = 0;
  // encode() as the model's token ids (int32).
  std::vector<std::int32_t> encode_ids(std::string_view text) const {
    const std::vector<std::uint32_t> ids = encode(text);
    return std::vector<std::int32_t>(ids.begin(), ids.end());
  }
  // The eot id decodes to "<|endoftext|>"; an id >= vocab_size is an Error naming the id.
  virtual std::string decode(const std::vector<std::uint32_t>& ids) const = 0;
};

// One token per byte: ids 0..255 are the bytes themselves, 256 is <|endoftext|>.
// Lossless for any input (UTF-8 or not) and needs no vocabulary file.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr std::uint32_t kEot = 256;
  static constexpr int kVocabSize = 257;

  std::string name() const override { return "byte"; }
  int vocab_size() const override { return kVocabSize; }
  std::uint32_t eot() const override { return kEot; }
  std::vector<std::uint32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<std::uint32_t>& ids) const override;
};

// The text written for the end-of-text token by decode().
inline constexpr std::string_view kEotText = "<|endoftext|>";

// Builds a tokenizer by name ("byte" or "gpt2"); an unknown name is an Error listing the valid
// names. files_dir is the folder of a tokenizer's vocabulary files (gpt2: encoder.json and
// vocab.bpe; "" = the environment variable KILN_GPT2_BPE_DIR); "byte" ignores it.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name,
                                          const std::string& files_dir = "");

}  // namespace kiln
