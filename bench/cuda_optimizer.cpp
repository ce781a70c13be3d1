// GPU timings of the optimizer and embedding-backward kernels at GPT-2 124M scale: fused AdamW
// (fp32 param, grad, m, v; with and without the bf16 weight copy) and sum_squares in GB/s against
// the HBM limit, and the sorted embedding backward at 8 x 1024 tokens x 768, vocabulary 50304.
// Run: build/bench/cuda_optimizer (skips without a CUDA device; well under a minute).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/device.h"
#include "kernels/embedding.h"
#include "kernels/optimizer.h"

namespace {

constexpr double kHbmGBps = 4800.0;  // H200 HBM3e
constexpr std::int64_t kParams = 124'000'000;
constexpr double kMinTime = 0.3;  // seconds per benchmark

// A device buffer for the benchmark's lifetime.
template <class T>
struct Buffer {
  explicit Buffer(std::size_t n) : ptr(static_cast<T*>(kiln::device::alloc(n * sizeof(T)))) {
    kiln::device::fill_zero(ptr, n * sizeof(T));
  }
  ~Buffer() { kiln::device::free(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* ptr;
};

// GPT-2-like segments: alternating weight (decay) and bias/LayerNorm (no decay) runs.
std::vector<kiln::cpu::AdamWSegment> gpt2_like_segments() {
  std::vector<kiln::cpu::AdamWSegment> segments;
  std::int64_t at = 0;
  const std::int64_t sizes[] = {2359296, 2304, 589824, 2304, 2359296, 3840, 2359296, 1536};
  while (at < kParams) {
    for (int k = 0; k < 8 && at < kParams; ++k) {
      const std::int64_t size = std::min(sizes[k], kParams - at);
      segments.push_back({at, size, k % 2 ? 0.0f : 0.1f});
      at += size;
    }
  }
  return segments;
}

void set_bandwidth(benchmark::State& state, double bytes_per_iteration) {
  state.counters["GB/s"] = benchmark::Counter(bytes_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["HBM_GB/s"] = kHbmGBps;
}

void BM_AdamW(benchmark::State& state) {
  const bool bf16_copy = state.range(0) != 0;
  Buffer<float> param(kParams), grad(kParams), m(kParams), v(kParams);
  Buffer<kiln::bf16> copy(kParams);
  const auto segments = gpt2_like_segments();
  const kiln::cpu::AdamWStep step{6e-4f, 0.9f, 0.95f, 1e-8f, 1.0f, 10};
  for (auto _ : state) {
    if (bf16_copy)
      kiln::cuda::adamw_update_bf16_copy(param.ptr, copy.ptr, grad.ptr, m.ptr, v.ptr, segments.data(),
                                         static_cast<int>(segments.size()), step);
    else
      kiln::cuda::adamw_update(param.ptr, grad.ptr, m.ptr, v.ptr, segments.data(), static_cast<int>(segments.size()),
                               step);
    kiln::device::synchronize();
  }
  // Read param, grad, m, v; write param, m, v (+ the bf16 copy).
  set_bandwidth(state, static_cast<double>(kParams) * (7 * 4 + (bf16_copy ? 2 : 0)));
}

void BM_SumSquares(benchmark::State& state) {
  Buffer<float> x(kParams);
  for (auto _ : state) benchmark::DoNotOptimize(kiln::cuda::sum_squares(x.ptr, kParams));  // syncs
  set_bandwidth(state, static_cast<double>(kParams) * 4);
}

void BM_SumSquaresAsync(benchmark::State& state) {
  Buffer<float> x(kParams);
  Buffer<double> out(1);
  for (auto _ : state) {
    kiln::cuda::sum_squares_async(out.ptr, x.ptr, kParams);
    kiln::device::synchronize();
  }
  set_bandwidth(state, static_cast<double>(kParams) * 4);
}

// Tokens drawn Zipf-like (a few very frequent ids, as in text), positions 0..1023 per row.
void BM_EmbeddingBackward(benchmark::State& state) {
  const std::int64_t b = 8, t = 1024, c = 768, vocab = 50304, n = b * t;
  std::mt19937 rng(1);
  std::vector<std::int32_t> tokens(n), positions(n);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (std::int64_t i = 0; i < n; ++i) {
    tokens[i] = static_cast<std::int32_t>(std::min<double>(vocab - 1, std::pow(vocab, unit(rng)) - 1));
    positions[i] = static_cast<std::int32_t>(i % t);
  }
  Buffer<std::int32_t> d_tokens(n), d_positions(n);
  kiln::device::copy_to_device(d_tokens.ptr, tokens.data(), n * sizeof(std::int32_t));
  kiln::device::copy_to_device(d_positions.ptr, positions.data(), n * sizeof(std::int32_t));
  Buffer<float> dout(n * c), dwte(vocab * c), dwpe(t * c);
  for (auto _ : state) {
    kiln::cuda::embedding_backward(dwte.ptr, dwpe.ptr, dout.ptr, d_tokens.ptr, d_positions.ptr, n, c, 0, vocab);
    kiln::device::synchronize();
  }
  // dout read twice (wte and wpe passes) plus a read-modify-write of each touched row (at most n).
  set_bandwidth(state, static_cast<double>(n) * c * 4 * 2 + static_cast<double>(n + t) * c * 8);
}

BENCHMARK(BM_AdamW)->Arg(0)->Arg(1)->ArgName("bf16_copy")->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);
BENCHMARK(BM_SumSquares)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);
BENCHMARK(BM_SumSquaresAsync)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);
BENCHMARK(BM_EmbeddingBackward)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);

}  // namespace

int main(int argc, char** argv) {
  if (!kiln::device::cuda_available()) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  std::printf("%s; HBM limit %.0f GB/s (H200)\n", kiln::device::cuda_description().c_str(), kHbmGBps);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
