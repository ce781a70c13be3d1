// libFuzzer target: GPT-2 BPE on arbitrary bytes must decode back to the same bytes. Needs the
// vocabulary folder in KILN_GPT2_BPE_DIR.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/data/tokenizer.h"
#include "kernels/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::unique_ptr<kiln::Tokenizer> tokenizer = kiln::make_tokenizer("gpt2");
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (tokenizer->decode(tokenizer->encode(text)) != text) std::abort();
  return 0;
}
