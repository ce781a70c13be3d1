// Batched decoding (core/model/decode.cpp) against the full forward pass, in tokens/s, on the cpu
// and (where one answers) on the GPU. Google Benchmark; a small GPT (4 layers, 256 wide, 4
// heads, GPT-2's padded vocabulary, 512 positions, fp32):
//   Forward/<device>/8:  one forward pass over 8 x 256 tokens (training's shape, no backward)
//   Decode/<device>/B:   B sequences decoded together, 64 steps each from an empty cache
//                        (every step: one token per sequence through the whole model)
//   decode [--benchmark_filter=cpu] ...
// scripts/gpu-check runs the cuda rows.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/model/decode.h"
#include "kernels/device.h"

namespace {

constexpr int kSteps = 64, kSeq = 256;

kiln::GptShape bench_shape() {
  kiln::ModelConfig m;
  m.n_layer = 4;
  m.n_head = 4;
  m.n_embd = 256;
  m.context = 512;
  return kiln::GptShape::from_config(m, 50257);
}

kiln::Gpt& model_on(kiln::Device device) {
  static std::unique_ptr<kiln::Gpt> models[2];
  auto& m = models[device == kiln::Device::cpu ? 0 : 1];
  if (!m) {
    m = std::make_unique<kiln::Gpt>(bench_shape(), device);
    m->init_weights(1);
  }
  return *m;
}

void BM_Forward(benchmark::State& state, kiln::Device device) {
  kiln::Gpt& model = model_on(device);
  kiln::Batch batch;
  batch.batch = static_cast<int>(state.range(0));
  batch.seq_len = kSeq;
  for (int i = 0; i < batch.batch * kSeq; ++i) {
    batch.inputs.push_back((i * 7919) % 50257);
    batch.targets.push_back((i * 104729) % 50257);
  }
  for (auto _ : state) benchmark::DoNotOptimize(model.forward(batch));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(batch.batch) * kSeq, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Decode(benchmark::State& state, kiln::Device device) {
  kiln::Gpt& model = model_on(device);
  kiln::Decoder decoder(model);
  const int b = static_cast<int>(state.range(0));
  std::vector<int> seqs(b);
  std::vector<std::int32_t> tokens(b);
  for (int i = 0; i < b; ++i) seqs[i] = i;
  for (auto _ : state) {
    decoder.reset(b);
    for (int t = 0; t < kSteps; ++t) {
      for (int i = 0; i < b; ++i) tokens[i] = (t * 31 + i * 17) % 50257;
      benchmark::DoNotOptimize(decoder.step(seqs, tokens));
    }
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(b) * kSteps, benchmark::Counter::kIsIterationInvariantRate);
}

void register_device(kiln::Device device, const std::string& name) {
  benchmark::RegisterBenchmark(("Forward/" + name).c_str(), BM_Forward, device)->Arg(8)->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("Decode/" + name).c_str(), BM_Decode, device)
      ->Arg(1)->Arg(8)->Arg(32)->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  register_device(kiln::Device::cpu, "cpu");
  if (kiln::device::cuda_available()) register_device(kiln::Device::cuda, "cuda");
  else std::printf("no CUDA device (%s): cpu rows only\n", kiln::device::cuda_description().c_str());
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
