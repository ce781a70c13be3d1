// GPT-2 BPE encode throughput, kiln's half of bench/bpe_vs_tiktoken.py. Encodes a text file
// or a folder's text files concatenated (default: /usr/share/games/fortunes, 2.5 MB) as one string, and as documents split on "\n%\n" with
// encode_batch on 1 and 2 threads. "cold" builds a fresh tokenizer (empty piece caches) for
// each timing; "warm" is the best of --repeat passes over the same tokenizer.
//
//   bpe_bench --bpe-dir ../shared/data/gpt2-bpe [--input FILE_OR_FOLDER] [--repeat 5] [--json]
//
// Prints MB/s (10^6 bytes of input per second); --json prints one JSON object instead;
// --ids OUT also writes the ids of the whole text (uint32, native order) for an exact comparison.
//
//   bpe_bench --train-merges 8000 [--input FILE_OR_FOLDER] [--repeat 3]
//
// times `kiln tokenizer train` instead (no vocabulary needed): counting the pieces of the same
// documents on 1 and 2 threads, then learning that many merges (core/data/bpe_train.h).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/data/bpe_train.h"
#include "core/data/gpt2_bpe.h"
#include "kernels/error.h"

namespace {

double seconds_of(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::vector<std::string_view> split_documents(std::string_view text) {
  std::vector<std::string_view> docs;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find("\n%\n", at);
    if (end == std::string_view::npos) end = text.size();
    docs.push_back(text.substr(at, end - at));
    at = end + 3;
  }
  return docs;
}

// A file, or every regular file of a folder (sorted; links and files with NUL bytes skipped).
std::string read_input(const std::string& path) {
  std::vector<std::filesystem::path> files;
  if (std::filesystem::is_directory(path)) {
    for (const auto& entry : std::filesystem::directory_iterator(path))
      if (entry.is_regular_file() && !entry.is_symlink()) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::string text;
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    KILN_CHECK(in, "cannot read ", file.string());
    std::ostringstream buffer;
    buffer << in.rdbuf();
    const std::string body = buffer.str();
    if (body.find('\0') == std::string::npos) text += body;
  }
  return text;
}

// Learning `merges` merges: the piece counting (1 and 2 threads) and the merge loop, each the
// best of `repeat` runs.
void bench_training(const std::string& input, const std::string& text,
                    const std::vector<std::string_view>& docs, int merges, int repeat) {
  const double mb = static_cast<double>(text.size()) / 1e6;
  double count_s[3] = {0, 1e30, 1e30};
  kiln::BpePieceCounts counts;
  for (int threads : {1, 2})
    for (int r = 0; r < repeat; ++r)
      count_s[threads] = std::min(count_s[threads], seconds_of([&] {
                                    counts = kiln::BpePieceCounts();
                                    counts.add(docs, threads);
                                  }));
  double learn_s = 1e30;
  kiln::BpeVocabulary vocab;
  for (int r = 0; r < repeat; ++r)
    learn_s = std::min(learn_s, seconds_of([&] { vocab = kiln::train_bpe(counts, 256 + merges + 1); }));
  const std::string learn = "learn " + std::to_string(vocab.merges.size()) + " merges";
  std::printf("kiln BPE training on %s: %zu bytes, %zu documents, %zu distinct pieces\n",
              input.c_str(), text.size(), docs.size(), counts.pieces().size());
  std::printf("%-28s %10s %10s   (best of %d)\n", "", "seconds", "MB/s", repeat);
  std::printf("%-28s %10.3f %10.2f\n", "count pieces, 1 thread", count_s[1], mb / count_s[1]);
  std::printf("%-28s %10.3f %10.2f\n", "count pieces, 2 threads", count_s[2], mb / count_s[2]);
  std::printf("%-28s %10.3f %10.2f\n", learn.c_str(), learn_s, mb / learn_s);
  std::printf("%-28s %10.3f %10.2f\n", "total, 1 thread", count_s[1] + learn_s,
              mb / (count_s[1] + learn_s));
  if (static_cast<int>(vocab.merges.size()) < merges)
    std::printf("(stopped at %zu merges: no pair occurs twice)\n", vocab.merges.size());
}

}  // namespace

int main(int argc, char** argv) {
  std::string bpe_dir = "../shared/data/gpt2-bpe", input = "/usr/share/games/fortunes";
  int repeat = 5, train_merges = 0;
  bool json = false;
  std::string ids_out;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--bpe-dir" && i + 1 < argc) bpe_dir = argv[++i];
    else if (arg == "--input" && i + 1 < argc) input = argv[++i];
    else if (arg == "--repeat" && i + 1 < argc) repeat = std::stoi(argv[++i]);
    else if (arg == "--json") json = true;
    else if (arg == "--ids" && i + 1 < argc) ids_out = argv[++i];
    else if (arg == "--train-merges" && i + 1 < argc) train_merges = std::stoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: bpe_bench --bpe-dir DIR [--input FILE_OR_FOLDER] [--repeat N] [--json]\n"
                           "       bpe_bench --train-merges N [--input FILE_OR_FOLDER] [--repeat N]\n");
      return 2;
    }
  }
  try {
    const std::string text = read_input(input);
    const std::vector<std::string_view> docs = split_documents(text);
    const double mb = static_cast<double>(text.size()) / 1e6;
    if (train_merges > 0) {
      bench_training(input, text, docs, train_merges, repeat);
      return 0;
    }

    std::size_t tokens = 0;
    // One whole string, one thread.
    double cold_single = 0, warm_single = 1e30;
    {
      kiln::Gpt2Bpe tok(bpe_dir);
      std::vector<std::uint32_t> ids;
      cold_single = seconds_of([&] { ids = tok.encode(text); });
      tokens = ids.size();
      if (!ids_out.empty()) {
        std::ofstream out(ids_out, std::ios::binary);
        out.write(reinterpret_cast<const char*>(ids.data()),
                  static_cast<std::streamsize>(ids.size() * sizeof(std::uint32_t)));
        KILN_CHECK(out, "cannot write ", ids_out);
      }
      for (int r = 0; r < repeat; ++r)
        warm_single = std::min(warm_single, seconds_of([&] { tok.encode(text); }));
    }
    // Documents with encode_batch on 1 and 2 threads.
    double cold_batch[3] = {0, 0, 0}, warm_batch[3] = {0, 1e30, 1e30};
    for (int threads : {1, 2}) {
      kiln::Gpt2Bpe tok(bpe_dir);
      cold_batch[threads] = seconds_of([&] { tok.encode_batch(docs, threads); });
      for (int r = 0; r < repeat; ++r)
        warm_batch[threads] =
            std::min(warm_batch[threads], seconds_of([&] { tok.encode_batch(docs, threads); }));
    }
    if (json) {
      std::printf("{\"bytes\": %zu, \"documents\": %zu, \"tokens\": %zu, "
                  "\"single_cold\": %.3f, \"single_warm\": %.3f, "
                  "\"batch1_cold\": %.3f, \"batch1_warm\": %.3f, "
                  "\"batch2_cold\": %.3f, \"batch2_warm\": %.3f}\n",
                  text.size(), docs.size(), tokens, mb / cold_single, mb / warm_single,
                  mb / cold_batch[1], mb / warm_batch[1], mb / cold_batch[2], mb / warm_batch[2]);
    } else {
      std::printf("kiln gpt2 BPE on %s: %zu bytes, %zu documents, %zu tokens\n", input.c_str(),
                  text.size(), docs.size(), tokens);
      std::printf("%-28s %10s %10s\n", "MB/s", "cold", "warm");
      std::printf("%-28s %10.2f %10.2f\n", "encode (one string)", mb / cold_single, mb / warm_single);
      std::printf("%-28s %10.2f %10.2f\n", "encode_batch, 1 thread", mb / cold_batch[1], mb / warm_batch[1]);
      std::printf("%-28s %10.2f %10.2f\n", "encode_batch, 2 threads", mb / cold_batch[2], mb / warm_batch[2]);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bpe_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
