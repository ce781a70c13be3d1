// The byte tokenizer and the factory that maps a tokenizer name (as written in configs, in
// `kiln tokenize --tokenizer` and in shard manifests) to an implementation.
#include "core/data/tokenizer.h"

#include "core/data/gpt2_bpe.h"
#include "kernels/error.h"

namespace kiln {

std::vector<std::uint32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<std::uint32_t> ids;
  ids.reserve(text.size());
  for (char c : text) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<std::uint32_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    std::uint32_t id = ids[i];
    if (id < 256) {
      text.push_back(static_cast<char>(id));
    } else if (id == kEot) {
      text.append(kEotText);
    } else {
      throw Error(message("byte tokenizer: token id ", id, " at position ", i,
                          " is out of range (vocab_size ", kVocabSize,
                          "); the ids were probably made by a different tokenizer"));
    }
  }
  return text;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, const std::string& files_dir) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  if (name == "gpt2") return std::make_unique<Gpt2Bpe>(gpt2_bpe_dir(files_dir));
  throw Error(message("unknown tokenizer '", name, "'; valid names: byte, gpt2"));
}

}  // namespace kiln
