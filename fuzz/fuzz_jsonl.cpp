// libFuzzer target: arbitrary bytes as a JSONL instruction file must parse records or give a
// kiln::Error naming file:line.
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "core/data/instruct.h"
#include "core/data/jsonl.h"
#include "kernels/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = "/tmp/kiln_fuzz_jsonl_" + std::to_string(getpid()) + ".jsonl";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  for (bool skip : {false, true}) {
    try {
      kiln::read_jsonl(path, {skip}, [](const nlohmann::json& record, const std::string& where) {
        kiln::parse_instruct_record(record, where);
      });
    } catch (const kiln::Error&) {
    }
  }
  return 0;
}
