// GPU timings of the fused residual add + LayerNorm (forward, backward, both; fp32 and bf16) at
// 8x1024 x 768, 8x1024 x 1600 and 16x2048 x 4096 (rows x c), and of GELU forward + backward, in
// GB/s of the bytes each kernel must move at minimum, beside the measured device-to-device copy
// bandwidth (1 GiB through device::copy_on_device, read + write counted) and the HBM limit. The
// summary at the end prints "LN fwd+bwd / copy"; the target is >= 80%.
// Run: build/bench/cuda_layernorm (skips without a CUDA device; well under a minute).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/device.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"

namespace {

constexpr double kHbmGBps = 4800.0;  // H200 HBM3e
constexpr double kMinTime = 0.1;     // seconds per benchmark
// Work queued between two synchronisations: about 2 ms of HBM traffic, so that the per-iteration
// synchronisation and launch latency stay small beside it.
constexpr double kBytesPerIteration = 8e9;

double g_copy_gbps = 0.0;
std::map<std::string, double> g_results;  // label -> GB/s of the last (reported) run
std::vector<std::string> g_order;

// A device buffer for the benchmark's lifetime, filled with N(0, 1) values (not zeros, which a
// memory system might compress).
template <class T>
struct Buffer {
  explicit Buffer(std::size_t n) : ptr(static_cast<T*>(kiln::device::alloc(n * sizeof(T)))) {
    const std::size_t chunk = std::min<std::size_t>(n, std::size_t{1} << 16);
    std::mt19937 rng(static_cast<unsigned>(n));
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<T> host(chunk);
    for (T& x : host) x = convert(dist(rng));
    kiln::device::copy_to_device(ptr, host.data(), chunk * sizeof(T));
    for (std::size_t done = chunk; done < n;) {  // doubling copies on the device
      const std::size_t count = std::min(done, n - done);
      kiln::device::copy_on_device(ptr + done, ptr, count * sizeof(T));
      done += count;
    }
  }
  ~Buffer() { kiln::device::free(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  static T convert(float x) {
    if constexpr (sizeof(T) == 2) return kiln::to_bf16(x);
    else return static_cast<T>(x);
  }
  T* ptr;
};

// Queues `step` (moving bytes_per_step at minimum) enough times per iteration for about
// kBytesPerIteration, synchronising once per iteration; reports GB/s, the HBM limit and the
// fraction of the measured copy bandwidth.
template <class Step>
void run(benchmark::State& state, const std::string& label, double bytes_per_step, Step step) {
  const int reps = std::max(1, static_cast<int>(std::ceil(kBytesPerIteration / bytes_per_step)));
  double seconds = 0.0;
  std::int64_t iterations = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) step();
    kiln::device::synchronize();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ++iterations;
  }
  const double bytes = bytes_per_step * reps;
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["HBM_GB/s"] = kHbmGBps;
  const double gbps = seconds > 0.0 ? bytes * static_cast<double>(iterations) / seconds * 1e-9 : 0.0;
  if (g_copy_gbps > 0.0) state.counters["of_copy"] = gbps / g_copy_gbps;
  state.SetLabel(label);
  if (!g_results.count(label)) g_order.push_back(label);
  g_results[label] = gbps;
}

void BM_CopyDeviceToDevice(benchmark::State& state) {
  constexpr std::size_t kBytes = std::size_t{1} << 30;
  Buffer<float> src(kBytes / 4), dst(kBytes / 4);
  run(state, "D2D copy 1 GiB", 2.0 * kBytes, [&] { kiln::device::copy_on_device(dst.ptr, src.ptr, kBytes); });
  g_copy_gbps = g_results["D2D copy 1 GiB"];
}

// fp32 and bf16 entry points under one name, for the templates below.
void residual_ln_forward(float* residual, float* out, float* mean, float* rstd, const float* inp,
                         const float* delta, const float* gamma, const float* beta, std::int64_t rows,
                         std::int64_t c) {
  kiln::cuda::residual_layernorm_forward(residual, out, mean, rstd, inp, delta, gamma, beta, rows, c);
}
void residual_ln_forward(kiln::bf16* residual, kiln::bf16* out, float* mean, float* rstd,
                         const kiln::bf16* inp, const kiln::bf16* delta, const float* gamma,
                         const float* beta, std::int64_t rows, std::int64_t c) {
  kiln::cuda::residual_layernorm_forward_bf16(residual, out, mean, rstd, inp, delta, gamma, beta, rows, c);
}
void ln_backward(float* dinp, float* dgamma, float* dbeta, const float* dout, const float* inp,
                 const float* gamma, const float* mean, const float* rstd, std::int64_t rows, std::int64_t c) {
  kiln::cuda::layernorm_backward(dinp, dgamma, dbeta, dout, inp, gamma, mean, rstd, rows, c);
}
void ln_backward(kiln::bf16* dinp, float* dgamma, float* dbeta, const kiln::bf16* dout,
                 const kiln::bf16* inp, const float* gamma, const float* mean, const float* rstd,
                 std::int64_t rows, std::int64_t c) {
  kiln::cuda::layernorm_backward_bf16(dinp, dgamma, dbeta, dout, inp, gamma, mean, rstd, rows, c);
}

// range(0) rows, range(1) c, range(2): 0 forward + backward, 1 forward, 2 backward.
template <class T>
void BM_ResidualLayerNorm(benchmark::State& state) {
  const std::int64_t rows = state.range(0), c = state.range(1);
  const int kind = static_cast<int>(state.range(2));
  const auto n = static_cast<std::size_t>(rows * c);
  Buffer<T> inp(n), delta(n), residual(n), out(n), dout(n), dinp(n);
  Buffer<float> gamma(c), beta(c), dgamma(c), dbeta(c), mean(rows), rstd(rows);
  const double es = sizeof(T), nd = static_cast<double>(n), rd = static_cast<double>(rows),
               cd = static_cast<double>(c);
  // Forward: read inp, delta; write residual, out, mean, rstd; read gamma, beta.
  const double forward_bytes = 4 * nd * es + 8 * rd + 8 * cd;
  // Backward: read dout, residual, dinp; write dinp; read mean, rstd, gamma; dgamma, dbeta in+out.
  const double backward_bytes = 4 * nd * es + 8 * rd + 20 * cd;
  // The forward once outside the timing, so that mean/rstd hold real statistics.
  residual_ln_forward(residual.ptr, out.ptr, mean.ptr, rstd.ptr, inp.ptr, delta.ptr, gamma.ptr, beta.ptr, rows, c);
  const char* names[] = {"fwd+bwd", "fwd", "bwd"};
  const std::string label = std::string("residual LN ") + names[kind] + (sizeof(T) == 2 ? " bf16 " : " fp32 ") +
                            std::to_string(rows) + "x" + std::to_string(c);
  const double bytes = (kind != 2 ? forward_bytes : 0.0) + (kind != 1 ? backward_bytes : 0.0);
  run(state, label, bytes, [&] {
    if (kind != 2)
      residual_ln_forward(residual.ptr, out.ptr, mean.ptr, rstd.ptr, inp.ptr, delta.ptr, gamma.ptr, beta.ptr,
                          rows, c);
    if (kind != 1)
      ln_backward(dinp.ptr, dgamma.ptr, dbeta.ptr, dout.ptr, residual.ptr, gamma.ptr, mean.ptr, rstd.ptr, rows, c);
  });
}

// GELU forward then backward over the MLP hidden activations of 8x1024 tokens x 3072.
template <class T>
void BM_Gelu(benchmark::State& state) {
  const std::int64_t n = 8 * 1024 * 3072;
  const auto size = static_cast<std::size_t>(n);
  Buffer<T> x(size), y(size), dout(size), dx(size);
  const std::string label = std::string("GELU fwd+bwd ") + (sizeof(T) == 2 ? "bf16 " : "fp32 ") + std::to_string(n);
  // Forward: read x, write y; backward: read x, dout, write dx.
  run(state, label, 5.0 * static_cast<double>(n) * sizeof(T), [&] {
    if constexpr (sizeof(T) == 2) {
      kiln::cuda::gelu_forward_bf16(y.ptr, x.ptr, n);
      kiln::cuda::gelu_backward_bf16(dx.ptr, x.ptr, dout.ptr, n);
    } else {
      kiln::cuda::gelu_forward(y.ptr, x.ptr, n);
      kiln::cuda::gelu_backward(dx.ptr, x.ptr, dout.ptr, n);
    }
  });
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int kind : {0, 1, 2}) {
    b->Args({8 * 1024, 768, kind});
    b->Args({8 * 1024, 1600, kind});
    b->Args({16 * 2048, 4096, kind});
  }
  b->ArgNames({"rows", "c", "kind"});
}

BENCHMARK(BM_CopyDeviceToDevice)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);
BENCHMARK_TEMPLATE(BM_ResidualLayerNorm, float)
    ->Apply(shapes)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);
BENCHMARK_TEMPLATE(BM_ResidualLayerNorm, kiln::bf16)
    ->Apply(shapes)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);
BENCHMARK_TEMPLATE(BM_Gelu, float)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);
BENCHMARK_TEMPLATE(BM_Gelu, kiln::bf16)->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);

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
  std::printf("\nSummary (GB/s of minimum traffic; copy counts read + write):\n");
  std::printf("  %-44s %8.0f GB/s (%.0f%% of HBM %.0f)\n", "D2D copy 1 GiB", g_copy_gbps,
              100.0 * g_copy_gbps / kHbmGBps, kHbmGBps);
  for (const std::string& label : g_order) {
    if (label == "D2D copy 1 GiB") continue;
    const double gbps = g_results[label];
    std::printf("  %-44s %8.0f GB/s", label.c_str(), gbps);
    if (g_copy_gbps > 0.0) {
      std::printf(" = %5.1f%% of copy", 100.0 * gbps / g_copy_gbps);
      if (label.rfind("residual LN fwd+bwd", 0) == 0)
        std::printf(gbps >= 0.8 * g_copy_gbps ? "  (target >= 80%%: met)" : "  (target >= 80%%: MISSED)");
    }
    std::printf("\n");
  }
  return 0;
}
