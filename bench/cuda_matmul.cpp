// GPU timings of the bf16 training path's products and its cross-entropy at GPT-2 124M shapes,
// B x T = 8 x 1024 rows: each linear layer's forward (without bias, with bias, with bias + GELU;
// cuBLASLt's fused epilogue against the product followed by kiln's bias/GELU kernel) and its
// backward (dinp + dweight (+ dbias), and dweight alone, so dinp's GEMM is the difference), an
// 8192^3 bf16 GEMM as the practical peak, and the bf16 fused softmax cross-entropy (forward +
// gradient) at 8192 x 50304. Reports TFLOP/s beside the H200's ~990 TFLOP/s dense bf16, GB/s
// beside its 4.8 TB/s.
// Run: build/bench/cuda_matmul  (prints "no CUDA device: skipped" without one). Under 30 s.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cross_entropy.h"
#include "kernels/device.h"
#include "kernels/matmul.h"

namespace {

constexpr std::int64_t kRows = 8 * 1024;  // B x T
constexpr int kReps = 10;                 // launches per timed iteration (one synchronize)

// Device buffers kept across benchmarks, one per slot, grown on demand and filled once with a
// tiled pseudo-random N(0, 1)-like pattern (values only matter for realistic power draw).
class Pool {
 public:
  template <class T>
  T* get(int slot, std::int64_t count) {
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(T);
    Buffer& b = buffers_[slot];
    if (b.bytes < bytes) {
      kiln::device::free(b.ptr);
      b.ptr = kiln::device::alloc(bytes);
      b.bytes = bytes;
      fill(b.ptr, bytes, sizeof(T) == 2);
    }
    return static_cast<T*>(b.ptr);
  }

 private:
  struct Buffer {
    void* ptr = nullptr;
    std::size_t bytes = 0;
  };
  static void fill(void* dst, std::size_t bytes, bool bf16) {
    constexpr std::size_t kPattern = std::size_t{1} << 20;  // elements
    std::vector<float> f(kPattern);
    std::uint64_t state = 12345;
    for (auto& x : f) {  // sum of uniforms: roughly N(0, 1), scaled down to keep sums tame
      float s = 0.0f;
      for (int i = 0; i < 4; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        s += static_cast<float>(state >> 40) / static_cast<float>(1u << 24) - 0.5f;
      }
      x = 0.5f * s;
    }
    std::vector<kiln::bf16> h(kPattern);
    for (std::size_t i = 0; i < kPattern; ++i) h[i] = kiln::to_bf16(f[i]);
    const void* src = bf16 ? static_cast<const void*>(h.data()) : static_cast<const void*>(f.data());
    const std::size_t chunk = kPattern * (bf16 ? 2 : 4);
    for (std::size_t off = 0; off < bytes; off += chunk)
      kiln::device::copy_to_device(static_cast<char*>(dst) + off, src, bytes - off < chunk ? bytes - off : chunk);
  }
  Buffer buffers_[8];
};

Pool& pool() {
  static Pool p;
  return p;
}

enum Slot { kInp, kWeight, kOut, kPre, kDweight, kDinp, kBias, kLogits };

// What follows the product in a forward benchmark.
enum Epilogue { kNone = 0, kBiasFused = 1, kBiasUnfused = 2, kGeluFused = 3, kGeluUnfused = 4 };

void BM_LinearForwardBf16(benchmark::State& state) {
  const std::int64_t in = state.range(0), out = state.range(1);
  const auto epilogue = static_cast<Epilogue>(state.range(2));
  Pool& p = pool();
  auto* x = p.get<kiln::bf16>(kInp, kRows * in);
  auto* w = p.get<kiln::bf16>(kWeight, in * out);
  auto* y = p.get<kiln::bf16>(kOut, kRows * out);
  auto* pre = p.get<kiln::bf16>(kPre, kRows * out);
  auto* bias = p.get<kiln::bf16>(kBias, out);
  kiln::cuda::set_matmul_epilogue_fusion(epilogue != kBiasUnfused && epilogue != kGeluUnfused);
  auto run = [&] {
    if (epilogue == kGeluFused || epilogue == kGeluUnfused)
      kiln::cuda::linear_forward_gelu_bf16(y, pre, x, w, bias, kRows, in, out);
    else
      kiln::cuda::linear_forward_bf16(y, x, w, epilogue == kNone ? nullptr : bias, kRows, in, out);
  };
  run();  // plan + heuristic outside the timing
  kiln::device::synchronize();
  for (auto _ : state) {
    for (int r = 0; r < kReps; ++r) run();
    kiln::device::synchronize();
  }
  kiln::cuda::set_matmul_epilogue_fusion(true);
  state.counters["TFLOP/s"] = benchmark::Counter(2.0 * kRows * in * out * kReps / 1e12,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  static const char* const kNames[] = {"no bias", "bias fused", "bias unfused", "bias+gelu fused", "bias+gelu unfused"};
  state.SetLabel(kNames[epilogue]);
}

// (in, out, epilogue): qkv, attention projection, MLP up (with GELU), MLP down, LM head (no bias).
BENCHMARK(BM_LinearForwardBf16)
    ->Args({768, 2304, kNone})->Args({768, 2304, kBiasFused})->Args({768, 2304, kBiasUnfused})
    ->Args({768, 768, kBiasFused})->Args({768, 768, kBiasUnfused})
    ->Args({768, 3072, kBiasFused})->Args({768, 3072, kGeluFused})->Args({768, 3072, kGeluUnfused})
    ->Args({3072, 768, kBiasFused})->Args({3072, 768, kBiasUnfused})
    ->Args({768, 50304, kNone})
    ->ArgNames({"in", "out", "epilogue"})->MinTime(0.1)->UseRealTime()->Unit(benchmark::kMicrosecond);

// dinp (bf16) + dweight (fp32, accumulated) [+ dbias]; or dweight alone (dinp's GEMM = the
// difference).
void BM_LinearBackwardBf16(benchmark::State& state) {
  const std::int64_t in = state.range(0), out = state.range(1);
  const bool with_dinp = state.range(2) != 0, with_dbias = state.range(3) != 0;
  Pool& p = pool();
  auto* x = p.get<kiln::bf16>(kInp, kRows * in);
  auto* w = p.get<kiln::bf16>(kWeight, in * out);
  auto* dy = p.get<kiln::bf16>(kOut, kRows * out);
  auto* dx = p.get<kiln::bf16>(kDinp, kRows * in);
  auto* dw = p.get<float>(kDweight, in * out);
  auto* db = p.get<float>(kBias, out);
  auto run = [&] {
    kiln::cuda::linear_backward_bf16(with_dinp ? dx : nullptr, dw, with_dbias ? db : nullptr, dy, x, w, kRows, in, out);
  };
  run();
  kiln::device::synchronize();
  for (auto _ : state) {
    for (int r = 0; r < kReps; ++r) run();
    kiln::device::synchronize();
  }
  state.counters["TFLOP/s"] = benchmark::Counter((with_dinp ? 4.0 : 2.0) * kRows * in * out * kReps / 1e12,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(with_dinp ? (with_dbias ? "dinp+dweight+dbias" : "dinp+dweight") : "dweight only");
}

BENCHMARK(BM_LinearBackwardBf16)
    ->Args({768, 2304, 1, 1})->Args({768, 2304, 0, 0})
    ->Args({768, 768, 1, 1})->Args({768, 768, 0, 0})
    ->Args({768, 3072, 1, 1})->Args({768, 3072, 0, 0})
    ->Args({3072, 768, 1, 1})->Args({3072, 768, 0, 0})
    ->Args({768, 50304, 1, 0})->Args({768, 50304, 0, 0})
    ->ArgNames({"in", "out", "dinp", "dbias"})->MinTime(0.1)->UseRealTime()->Unit(benchmark::kMicrosecond);

// The practical peak: a large square bf16 GEMM with fp32 accumulation and bf16 output.
void BM_PeakGemmBf16(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  Pool& p = pool();
  auto* a = p.get<kiln::bf16>(kInp, n * n);
  auto* b = p.get<kiln::bf16>(kWeight, n * n);
  auto* c = p.get<kiln::bf16>(kOut, n * n);
  kiln::cuda::linear_forward_bf16(c, a, b, nullptr, n, n, n);
  kiln::device::synchronize();
  for (auto _ : state) {
    for (int r = 0; r < kReps; ++r) kiln::cuda::linear_forward_bf16(c, a, b, nullptr, n, n, n);
    kiln::device::synchronize();
  }
  state.counters["TFLOP/s"] = benchmark::Counter(2.0 * n * n * n * kReps / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("device peak ~990 TFLOP/s dense bf16 (H200)");
}
BENCHMARK(BM_PeakGemmBf16)->Arg(8192)->MinTime(0.2)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Loss + gradient in place over bf16 logits. GB/s counts one read and one write of the logits
// (the least any fused kernel moves); the kernel reads each row twice, the second time mostly
// from L2.
void BM_CrossEntropyBf16(benchmark::State& state) {
  const std::int64_t n = kRows, vocab = 50257, padded = 50304;
  Pool& p = pool();
  auto* logits = p.get<kiln::bf16>(kLogits, n * padded);
  auto* losses = p.get<float>(kDweight, n);
  std::vector<std::int32_t> host_targets(n);
  for (std::int64_t i = 0; i < n; ++i) host_targets[i] = static_cast<std::int32_t>((i * 7919) % vocab);
  auto* targets = static_cast<std::int32_t*>(kiln::device::alloc(n * sizeof(std::int32_t)));
  kiln::device::copy_to_device(targets, host_targets.data(), n * sizeof(std::int32_t));
  const float scale = 1.0f / static_cast<float>(n);
  kiln::cuda::softmax_cross_entropy_bf16(losses, logits, targets, nullptr, n, vocab, padded, scale);
  kiln::device::synchronize();
  for (auto _ : state) {
    for (int r = 0; r < kReps; ++r)
      kiln::cuda::softmax_cross_entropy_bf16(losses, logits, targets, nullptr, n, vocab, padded, scale);
    kiln::device::synchronize();
  }
  kiln::device::free(targets);
  state.counters["GB/s"] = benchmark::Counter(2.0 * n * padded * 2.0 * kReps / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("HBM 4.8 TB/s (H200)");
}
BENCHMARK(BM_CrossEntropyBf16)->MinTime(0.2)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  if (!kiln::device::cuda_available()) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  std::printf("%s; limits: ~990 TFLOP/s dense bf16, 4.8 TB/s HBM (H200)\n",
              kiln::device::cuda_description().c_str());
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
