// Block-sparse attention forward + backward against dense, by sequence length: time, density
// and memory, printed as a markdown table. Usage: sparse_attention [max_T] (default 16384).
// Each (T, pattern) runs in a child process, whose peak resident memory above its start (VmHWM
// minus VmRSS at start: inputs, outputs, the layout, kernel scratch) is measured. kiln's
// kernels keep O(T) activations and O(T x head size) scratch per thread whatever the pattern;
// for comparison the table also gives the scores a kernel that materialises them would hold
// (active blocks x block^2 floats per head): O(n^2) dense, O(n sqrt n) strided.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/model/attention_layout.h"
#include "core/rng.h"
#include "kernels/attention.h"

namespace {

// A field of /proc/self/status in KiB (VmRSS, VmHWM).
long status_kib(const char* field) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  char line[256];
  long value = -1;
  while (f && std::fgets(line, sizeof line, f))
    if (std::strncmp(line, field, std::strlen(field)) == 0) value = std::atol(line + std::strlen(field) + 1);
  if (f) std::fclose(f);
  return value;
}

double seconds_of(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Result {
  double ms;
  double peak_mib;
};

// One measurement in a fresh child process, so its peak memory is its own.
Result measure(const kiln::AttentionPattern& p, std::int64_t t) {
  int fds[2];
  if (pipe(fds) != 0) return {-1, -1};
  const pid_t child = fork();
  if (child == 0) {
    const long start = status_kib("VmRSS:");
    const std::int64_t b = 1, nh = 4, c = 256;
    std::vector<float> qkv(b * t * 3 * c), out(b * t * c), lse(b * nh * t), dout(b * t * c), dqkv(qkv.size());
    kiln::Rng rng(1, 0);
    for (std::size_t i = 0; i < qkv.size(); ++i) qkv[i] = rng.normal(i);
    for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = rng.normal(i + qkv.size());
    const kiln::BlockLayout layout = kiln::build_layout(p, t, static_cast<int>(nh));
    const auto view = layout.view();
    kiln::cpu::attention_forward(out.data(), lse.data(), qkv.data(), b, t, c, nh, view);  // warm-up
    double best = 1e30;
    for (int r = 0; r < (t <= 4096 ? 3 : 1); ++r)
      best = std::min(best, seconds_of([&] {
               kiln::cpu::attention_forward(out.data(), lse.data(), qkv.data(), b, t, c, nh, view);
               kiln::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), b, t, c, nh, view);
             }));
    const Result r{best * 1e3, (status_kib("VmHWM:") - start) / 1024.0};
    if (write(fds[1], &r, sizeof r) != sizeof r) _exit(1);
    _exit(0);
  }
  Result r{-1, -1};
  if (read(fds[0], &r, sizeof r) != sizeof r) r = {-1, -1};
  waitpid(child, nullptr, 0);
  close(fds[0]);
  close(fds[1]);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t max_t = argc > 1 ? std::atoll(argv[1]) : 16384;
  const std::int64_t nh = 4, block = 64;  // batch 1, 4 heads of 64
  std::printf("| T | pattern | density | fwd+bwd ms | speed-up vs dense | peak memory MiB (measured) | scores a materialising kernel holds, MiB |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (std::int64_t t = 1024; t <= max_t; t *= 2) {
    const int blocks = static_cast<int>(t / block), root = std::max(1, static_cast<int>(std::lround(std::sqrt(blocks))));
    std::vector<kiln::AttentionPattern> patterns(4);
    patterns[0].kind = "dense";
    patterns[1].kind = "local";
    patterns[1].window = std::max(1, blocks / 16);  // density about 1/8
    patterns[2].kind = "strided";
    patterns[2].window = patterns[2].stride = root;
    patterns[3].kind = "fixed";
    patterns[3].stride = root;
    double dense_ms = 0;
    for (auto& p : patterns) {
      p.block = static_cast<int>(block);
      const kiln::BlockLayout layout = kiln::build_layout(p, t, static_cast<int>(nh));
      const Result r = measure(p, t);
      if (p.kind == "dense") dense_ms = r.ms;
      const double scores_mib = static_cast<double>(layout.cols.size()) * block * block * 4 * nh / (1 << 20);
      std::printf("| %lld | %s | %.3f | %.1f | %.1fx | %.1f | %.1f |\n", static_cast<long long>(t),
                  p.describe().c_str(), layout.density(), r.ms, dense_ms / r.ms, r.peak_mib, scores_mib);
      std::fflush(stdout);
    }
  }
  return 0;
}
