// libFuzzer target: arbitrary bytes as a safetensors file must load or give a kiln::Error.
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "core/checkpoint/safetensors.h"
#include "kernels/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = "/tmp/kiln_fuzz_st_" + std::to_string(getpid()) + ".safetensors";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    kiln::SafetensorsFile file(path);
    for (const std::string& name : file.names())
      if (kiln::shape_numel(file.shape(name)) < (1 << 20)) file.load(name);
  } catch (const kiln::Error&) {
  }
  return 0;
}
