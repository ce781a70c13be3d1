// TFLOP/s of the bf16 CUDA attention (kernels/cuda/attention_fwd.cu, attention_bwd.cu), layout
// blocks of 128 tokens:
//  - dense causal, forward and forward + backward, T = 1k, 4k, 8k, head sizes 64 (12 heads) and
//    128 (8 heads), b = 16k / T sequences (the same tokens x heads at every T);
//  - block-sparse "strided" layouts (a local band of blocks / 32 blocks plus every 16th block
//    before it: density ~1/8) at T = 8k, 16k, 64k beside dense at the same T, with the speed-up.
// FLOPs: 4 * b * hd * (query, key) pairs the layout computes, summed over heads
// (attention_tiling.h); forward + backward counts 3.5x the forward (FlashAttention's convention:
// 2 forward and 5 backward matmuls; kiln's deterministic backward does 7). MiB: device memory the
// case holds (inputs, outputs, lse, layout, the backward's scratch); peak_MiB: the caching
// allocator's peak over the process. H200 peak: ~990 TFLOP/s dense bf16.
// Run: build/bench/cuda_attention (about 20 s on an H200).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/model/attention_layout.h"
#include "kernels/attention.h"
#include "kernels/bf16.h"
#include "kernels/cuda/attention_tiling.h"
#include "kernels/device.h"

namespace {

constexpr double kPeakTflops = 990.0;
constexpr std::int64_t kTokens = 16384;
constexpr int kBlock = 128;

// Device memory freed on scope exit.
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t nbytes) : ptr_(kiln::device::alloc(nbytes)) {}
  ~DeviceArray() { kiln::device::free(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_;
};

// n pseudo-random bf16 values in [-1, 1) on the device, copied from one host pool.
void fill_random(kiln::bf16* dst, std::size_t n) {
  static const std::vector<kiln::bf16> pool = [] {
    std::vector<kiln::bf16> p(std::size_t{1} << 22);
    std::uint32_t x = 2463534242u;
    for (auto& v : p) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      v = kiln::to_bf16(static_cast<float>(x >> 8) / 8388608.0f - 1.0f);
    }
    return p;
  }();
  for (std::size_t done = 0; done < n; done += pool.size())
    kiln::device::copy_to_device(dst + done, pool.data(),
                                 std::min(pool.size(), n - done) * sizeof(kiln::bf16));
}

template <class T>
void upload(DeviceArray& dst, const std::vector<T>& src) {
  kiln::device::copy_to_device(dst.as<T>(), src.data(), src.size() * sizeof(T));
}

kiln::BlockLayout make_layout(std::int64_t t, bool sparse) {
  kiln::AttentionPattern p;
  p.block = kBlock;
  if (sparse) {
    const int blocks = static_cast<int>(t / kBlock);
    p.kind = "strided";
    p.window = std::max(1, blocks / 32);
    p.stride = 16;
  }
  return kiln::build_layout(p, t, 1);
}

// Mean seconds per dense run, for the sparse runs' speed-up: (t, hd, backward).
std::map<std::tuple<std::int64_t, std::int64_t, bool>, double>& dense_seconds() {
  static std::map<std::tuple<std::int64_t, std::int64_t, bool>, double> m;
  return m;
}

// Device tensors of one shape, kept while consecutive benchmarks share it (Google Benchmark calls
// a benchmark function more than once).
struct Tensors {
  std::int64_t b, t, nh, hd, c;
  DeviceArray qkv, out, dout, dqkv, lse;
  Tensors(std::int64_t b_, std::int64_t t_, std::int64_t nh_, std::int64_t hd_)
      : b(b_), t(t_), nh(nh_), hd(hd_), c(nh_ * hd_), qkv(bytes_qkv()), out(bytes_out()),
        dout(bytes_out()), dqkv(bytes_qkv()), lse(b * nh * t * sizeof(float)) {
    fill_random(qkv.as<kiln::bf16>(), bytes_qkv() / 2);
    fill_random(dout.as<kiln::bf16>(), bytes_out() / 2);
  }
  std::size_t bytes_qkv() const { return b * t * 3 * c * sizeof(kiln::bf16); }
  std::size_t bytes_out() const { return b * t * c * sizeof(kiln::bf16); }
  std::size_t bytes() const { return 2 * bytes_qkv() + 2 * bytes_out() + b * nh * t * sizeof(float); }
};

// A layout and its transpose on the device.
struct Layout {
  kiln::BlockLayout host;
  DeviceArray row_ptr, cols, col_ptr, col_rows;
  kiln::cpu::BlockLayoutView view;
  explicit Layout(kiln::BlockLayout layout)
      : host(std::move(layout)), row_ptr(host.row_ptr.size() * sizeof(int)),
        cols(host.cols.size() * sizeof(int)), col_ptr(host.row_ptr.size() * sizeof(int)),
        col_rows(host.cols.size() * sizeof(int)) {
    std::vector<int> cp(host.row_ptr.size()), cr(host.cols.size());
    kiln::cpu::transpose_block_layout(cp.data(), cr.data(), host.row_ptr.data(), host.cols.data(),
                                      host.num_blocks, host.num_layouts);
    upload(row_ptr, host.row_ptr);
    upload(cols, host.cols);
    upload(col_ptr, cp);
    upload(col_rows, cr);
    view = host.view();
    view.row_ptr = row_ptr.as<int>();
    view.cols = cols.as<int>();
    view.col_ptr = col_ptr.as<int>();
    view.col_rows = col_rows.as<int>();
  }
  std::size_t bytes() const { return 2 * (host.row_ptr.size() + host.cols.size()) * sizeof(int); }
};

// args: t, hd, backward (0/1), sparse (0/1).
void BM_Attention(benchmark::State& state) {
  const std::int64_t t = state.range(0), hd = state.range(1);
  const bool backward = state.range(2) != 0, sparse = state.range(3) != 0;
  const std::int64_t b = std::max<std::int64_t>(1, kTokens / t), nh = hd == 64 ? 12 : 8, c = nh * hd;
  static std::unique_ptr<Tensors> tensors;
  static std::unique_ptr<Layout> layout;
  static std::tuple<std::int64_t, bool> layout_key;
  if (!tensors || tensors->t != t || tensors->hd != hd) {
    tensors.reset();
    layout.reset();
    const std::size_t need = 2 * (b * t * 3 * c + b * t * c) * sizeof(kiln::bf16);
    std::size_t free_b = 0, total_b = 0;
    kiln::device::mem_info(&free_b, &total_b);
    if (need + (std::size_t{1} << 30) > free_b) {
      const std::string why = (sparse ? "sparse skipped: needs " : "dense skipped: needs ") +
                              std::to_string(need >> 20) + " MiB";
      state.SkipWithError(why.c_str());
      return;
    }
    tensors = std::make_unique<Tensors>(b, t, nh, hd);
  }
  if (!layout || layout_key != std::make_tuple(t, sparse)) {
    layout = std::make_unique<Layout>(make_layout(t, sparse));
    layout_key = std::make_tuple(t, sparse);
  }
  Tensors& x = *tensors;
  const kiln::cpu::BlockLayoutView& view = layout->view;
  auto run = [&] {
    kiln::cuda::attention_forward_bf16(x.out.as<kiln::bf16>(), x.lse.as<float>(),
                                       x.qkv.as<kiln::bf16>(), b, t, c, nh, view);
    if (backward)
      kiln::cuda::attention_backward_bf16(x.dqkv.as<kiln::bf16>(), x.dout.as<kiln::bf16>(),
                                          x.qkv.as<kiln::bf16>(), x.out.as<kiln::bf16>(),
                                          x.lse.as<float>(), b, t, c, nh, view);
  };
  double seconds = 0.0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    run();
    kiln::device::synchronize();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  seconds /= static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));

  const kiln::BlockLayout& host = layout->host;
  const double flops = kiln::attention_tiling::attention_forward_flops(
                           host.row_ptr.data(), host.cols.data(), host.num_blocks, host.block,
                           host.num_layouts, 0, b, t, nh, hd) *
                       (backward ? 3.5 : 1.0);
  const std::size_t held = x.bytes() + layout->bytes() + (backward ? b * nh * t * sizeof(float) : 0);
  state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ms"] = seconds * 1e3;
  state.counters["MiB"] = static_cast<double>(held) / (1 << 20);
  state.counters["peak_MiB"] =
      static_cast<double>(kiln::device::allocator_stats().peak_in_use) / (1 << 20);
  state.counters["peak_TFLOP/s"] = kPeakTflops;
  std::string label = std::string(sparse ? "strided " : "dense ") + "b=" + std::to_string(b) +
                      " nh=" + std::to_string(nh) + " density " + std::to_string(host.density());
  const auto key = std::make_tuple(t, hd, backward);
  if (!sparse) {
    dense_seconds()[key] = seconds;
  } else if (auto it = dense_seconds().find(key); it != dense_seconds().end()) {
    state.counters["speedup"] = it->second / seconds;
  } else {
    label += " (dense skipped: no speed-up)";
  }
  state.SetLabel(label);
}

void register_benchmarks() {
  auto add = [](std::int64_t t, std::int64_t hd, int backward, int sparse) {
    benchmark::RegisterBenchmark("BM_Attention", BM_Attention)
        ->Args({t, hd, backward, sparse})
        ->ArgNames({"T", "hd", "bwd", "sparse"})
        ->MinTime(0.1)
        ->MinWarmUpTime(0.02)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  for (std::int64_t t : {1024, 4096, 8192})
    for (std::int64_t hd : {64, 128})
      for (int backward : {0, 1}) add(t, hd, backward, 0);
  for (std::int64_t t : {8192, 16384, 65536})
    for (std::int64_t hd : {64, 128})
      for (int backward : {0, 1}) {
        if (t != 8192) add(t, hd, backward, 0);  // dense at 8k is measured above
        add(t, hd, backward, 1);
      }
}

}  // namespace

int main(int argc, char** argv) {
  if (!kiln::device::cuda_available()) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  std::printf("%s; bf16 dense tensor-core peak ~%.0f TFLOP/s (H200)\n",
              kiln::device::cuda_description().c_str(), kPeakTflops);
  register_benchmarks();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
