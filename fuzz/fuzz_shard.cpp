// libFuzzer target: arbitrary bytes as a token shard file must give a Shard or a kiln::Error.
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "core/data/shard.h"
#include "kernels/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = "/tmp/kiln_fuzz_shard_" + std::to_string(getpid()) + ".bin";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    kiln::Shard shard(path);
    std::int32_t out[64];
    const std::uint64_t n = shard.size() < 64 ? shard.size() : 64;
    shard.read(0, n, out);
    if (shard.size() > 0) (void)shard[shard.size() - 1];
  } catch (const kiln::Error&) {
  }
  return 0;
}
