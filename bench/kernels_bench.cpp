// Google Benchmark timings of the CPU kernels at GPT-2 124M training shapes (B=4, T=256,
// C=768, 12 heads). Reports FLOP/s for matmul and attention, bytes/s for memory-bound kernels.
// Run: build/bench/kernels_bench  (compare runs side by side in one invocation: the machine is
// noisy).
#include <benchmark/benchmark.h>

#include <vector>

#include "core/model/attention_layout.h"
#include "core/rng.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"

namespace {

std::vector<float> random(std::size_t n, std::uint64_t seed) {
  kiln::Rng rng(seed, 0);
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = rng.normal(i);
  return v;
}

void BM_Matmul(benchmark::State& state) {
  const std::int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const bool bf16 = state.range(3) != 0;
  auto a = random(m * k, 1), b = random(k * n, 2);
  std::vector<float> c(m * n);
  for (auto _ : state) {
    if (bf16)
      kiln::cpu::matmul_bf16(c.data(), a.data(), b.data(), m, n, k, false, false);
    else
      kiln::cpu::matmul(c.data(), a.data(), b.data(), m, n, k, false, false);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}
// (rows, out, in): qkv, attention projection, MLP up, MLP down, LM head; fp32 then bf16.
BENCHMARK(BM_Matmul)->Args({1024, 2304, 768, 0})->Args({1024, 768, 768, 0})->Args({1024, 3072, 768, 0})
    ->Args({1024, 768, 3072, 0})->Args({1024, 50304, 768, 0})->Args({1024, 3072, 768, 1})
    ->Args({1024, 50304, 768, 1})->Unit(benchmark::kMillisecond);

void BM_Attention(benchmark::State& state) {
  const std::int64_t b = 4, t = state.range(0), c = 768, nh = 12;
  const bool backward = state.range(1) != 0;
  auto qkv = random(b * t * 3 * c, 3), dout = random(b * t * c, 4);
  std::vector<float> out(b * t * c), lse(b * nh * t), dqkv(b * t * 3 * c);
  const kiln::BlockLayout layout = kiln::dense_causal_layout(t, 64);
  kiln::cpu::attention_forward(out.data(), lse.data(), qkv.data(), b, t, c, nh, layout.view());
  for (auto _ : state) {
    if (backward)
      kiln::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), b, t, c, nh, layout.view());
    else
      kiln::cpu::attention_forward(out.data(), lse.data(), qkv.data(), b, t, c, nh, layout.view());
    benchmark::ClobberMemory();
  }
  // Causal FLOPs actually needed: QK^T and PV over the lower triangle (x2.5 for backward).
  const double flops = 2.0 * 2.0 * b * nh * (t * (t + 1) / 2.0) * (c / nh) * (backward ? 2.5 : 1.0);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Attention)->Args({256, 0})->Args({256, 1})->Args({1024, 0})->Args({1024, 1})->Unit(benchmark::kMillisecond);

void BM_LayerNorm(benchmark::State& state) {
  const std::int64_t rows = 1024, c = 768;
  auto x = random(rows * c, 5), g = random(c, 6), bias = random(c, 7), dy = random(rows * c, 8);
  std::vector<float> y(rows * c), mean(rows), rstd(rows), dx(rows * c), dg(c), db(c);
  for (auto _ : state) {
    kiln::cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), g.data(), bias.data(), rows, c);
    kiln::cpu::layernorm_backward(dx.data(), dg.data(), db.data(), dy.data(), x.data(), g.data(), mean.data(), rstd.data(), rows, c);
  }
  state.counters["bytes/s"] = benchmark::Counter(6.0 * rows * c * 4, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_LayerNorm)->Unit(benchmark::kMicrosecond);

void BM_Gelu(benchmark::State& state) {
  const std::int64_t n = 1024 * 3072;
  auto x = random(n, 9);
  std::vector<float> y(n);
  for (auto _ : state) kiln::cpu::gelu_forward(y.data(), x.data(), n);
  state.counters["bytes/s"] = benchmark::Counter(2.0 * n * 4, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Gelu)->Unit(benchmark::kMicrosecond);

void BM_CrossEntropy(benchmark::State& state) {
  const std::int64_t n = 1024, vocab = 50257, padded = 50304;
  auto logits = random(n * padded, 10);
  std::vector<std::int32_t> targets(n, 42);
  std::vector<float> losses(n), work(logits.size());
  for (auto _ : state) {
    state.PauseTiming();
    work = logits;
    state.ResumeTiming();
    kiln::cpu::softmax_cross_entropy(losses.data(), work.data(), targets.data(), nullptr, n, vocab, padded, 1e-3f);
  }
  state.counters["bytes/s"] = benchmark::Counter(3.0 * n * padded * 4, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CrossEntropy)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
