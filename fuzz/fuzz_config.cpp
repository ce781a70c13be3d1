// libFuzzer target: arbitrary text as an experiment config must parse or give a kiln::Error.
#include <cstdint>
#include <string>

#include "core/config.h"
#include "kernels/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const kiln::ExperimentConfig config = kiln::parse_config(text, "fuzz.yaml");
    kiln::parse_config(kiln::to_yaml(config), "resolved.yaml");  // the round trip must hold too
  } catch (const kiln::Error&) {
  }
  return 0;
}
