// The CUDA optimizer kernels against their CPU twins: AdamW over segments of odd sizes with gaps
// and different weight decays for several steps (aligned and misaligned buffers), the bf16 copy
// of the updated weights, the device-side clip factor, and the deterministic sum of squares.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gpu_test.h"
#include "kernels/optimizer.h"

namespace {

using kiln::bf16;
using kiln::cpu::AdamWSegment;
using kiln::cpu::AdamWStep;
using kiln::testing::DeviceBuffer;

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Odd sizes, gaps (elements no segment owns must stay as they are), segments sharing an aligned
// group of four, different weight decays, one segment of 100003.
const std::vector<AdamWSegment> kSegments = {
    {0, 1, 0.1f},     {1, 7, 0.0f},     {8, 333, 0.1f},      {345, 769, 0.0f}, {1114, 2050, 0.05f},
    {3166, 5, 0.1f},  {3171, 0, 0.1f},  {3171, 3, 0.0f},     {3180, 100003, 0.1f}, {103185, 768, 0.0f},
};
constexpr std::int64_t kTotal = 103185 + 768 + 3;  // a gap at the end too

std::vector<bool> owned() {
  std::vector<bool> mask(kTotal, false);
  for (const auto& s : kSegments)
    for (std::int64_t i = s.offset; i < s.offset + s.size; ++i) mask[i] = true;
  return mask;
}

// Tolerance per tensor: |diff| <= 1e-6 |expected| + 1e-6 max|expected| (FMA contraction may differ
// between the host compiler and nvcc: a few ulps, more where m's two terms cancel). Elements
// outside every segment: equal bit for bit.
void expect_adamw_close(const std::vector<float>& actual, const std::vector<float>& expected, const char* what) {
  double max_abs = 0.0;
  for (float x : expected) max_abs = std::max(max_abs, static_cast<double>(std::fabs(x)));
  kiln::testing::expect_close(actual, expected, 1e-6 * max_abs, 1e-6, what);
  const auto mask = owned();
  int untouched_changed = 0;
  for (std::int64_t i = 0; i < kTotal; ++i)
    if (!mask[i] && std::memcmp(&actual[i], &expected[i], sizeof(float)) != 0) ++untouched_changed;
  EXPECT_EQ(untouched_changed, 0) << what << ": elements outside every segment were written";
}

struct State {
  std::vector<float> param, m, v;
};

State initial_state() {
  State s{random_floats(kTotal, 1, 0.5f), random_floats(kTotal, 2, 0.01f), random_floats(kTotal, 3, 1e-4f)};
  for (float& x : s.v) x = std::fabs(x);
  return s;
}

AdamWStep step_at(int step) {
  // A clip scale below 1 on some steps, as the trainer passes.
  return AdamWStep{1e-3f * static_cast<float>(step), 0.9f, 0.95f, 1e-8f, step % 2 ? 1.0f : 0.37f, step};
}

// 5 steps with fresh gradients, both buffer alignments (a 1-float shift forces the scalar path).
TEST(CudaOptimizer, AdamWMatchesCpuTwinOverSegmentsAndSteps) {
  KILN_REQUIRE_GPU();
  for (std::size_t shift : {0, 1}) {
    SCOPED_TRACE(testing::Message() << "pointer shift " << shift << " floats");
    State cpu = initial_state();
    auto padded = [&](const std::vector<float>& x) {
      std::vector<float> p(shift, 0.0f);
      p.insert(p.end(), x.begin(), x.end());
      return p;
    };
    DeviceBuffer<float> param(padded(cpu.param)), m(padded(cpu.m)), v(padded(cpu.v)), grad(kTotal + shift);
    for (int step = 1; step <= 5; ++step) {
      const auto g = random_floats(kTotal, 100 + step, 1.0f);
      kiln::device::copy_to_device(grad.get() + shift, g.data(), kTotal * sizeof(float));
      const AdamWStep s = step_at(step);
      kiln::cpu::adamw_update(cpu.param.data(), g.data(), cpu.m.data(), cpu.v.data(), kSegments.data(),
                              static_cast<int>(kSegments.size()), s);
      kiln::cuda::adamw_update(param.get() + shift, grad.get() + shift, m.get() + shift, v.get() + shift,
                               kSegments.data(), static_cast<int>(kSegments.size()), s);
    }
    auto unpad = [&](std::vector<float> x) {
      x.erase(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(shift));
      return x;
    };
    expect_adamw_close(unpad(param.host()), cpu.param, "param");
    expect_adamw_close(unpad(m.host()), cpu.m, "m");
    expect_adamw_close(unpad(v.host()), cpu.v, "v");
  }
}

// The bf16 copy is kiln::to_bf16 of the updated fp32 master, bit for bit; elements outside the
// segments keep their old bf16 bits. The fp32 results equal plain adamw_update's bit for bit.
TEST(CudaOptimizer, AdamWBf16CopyIsTheRoundedMaster) {
  KILN_REQUIRE_GPU();
  const State init = initial_state();
  const std::vector<bf16> sentinel(kTotal, bf16{0x7abc});
  DeviceBuffer<float> param(init.param), m(init.m), v(init.v), grad(random_floats(kTotal, 7, 1.0f));
  DeviceBuffer<float> param_ref(init.param), m_ref(init.m), v_ref(init.v);
  DeviceBuffer<bf16> copy(sentinel);
  for (int step = 1; step <= 3; ++step) {
    const AdamWStep s = step_at(step);
    kiln::cuda::adamw_update_bf16_copy(param.get(), copy.get(), grad.get(), m.get(), v.get(), kSegments.data(),
                                       static_cast<int>(kSegments.size()), s);
    kiln::cuda::adamw_update(param_ref.get(), grad.get(), m_ref.get(), v_ref.get(), kSegments.data(),
                             static_cast<int>(kSegments.size()), s);
  }
  const auto master = param.host();
  const auto bits = copy.host();
  const auto mask = owned();
  int wrong = 0;
  for (std::int64_t i = 0; i < kTotal; ++i) {
    const std::uint16_t want = mask[i] ? kiln::to_bf16(master[i]).bits : sentinel[i].bits;
    if (bits[i].bits != want && wrong++ < 5)
      ADD_FAILURE() << "bf16 copy [" << i << "]: bits " << bits[i].bits << ", want " << want;
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(std::memcmp(master.data(), param_ref.host().data(), kTotal * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(m.host().data(), m_ref.host().data(), kTotal * sizeof(float)), 0);
}

// A device scale gives the same bits as the same scale passed in AdamWStep, with and without
// the bf16 copy; step.grad_scale is ignored.
TEST(CudaOptimizer, AdamWScaledReadsTheScaleFromTheDevice) {
  KILN_REQUIRE_GPU();
  const State init = initial_state();
  const auto g = random_floats(kTotal, 8, 1.0f);
  for (bool with_copy : {false, true}) {
    DeviceBuffer<float> param(init.param), m(init.m), v(init.v), grad(g);
    DeviceBuffer<float> param_ref(init.param), m_ref(init.m), v_ref(init.v);
    DeviceBuffer<bf16> copy(kTotal);
    DeviceBuffer<float> scale(std::vector<float>{0.37f});
    AdamWStep s = step_at(3);
    s.grad_scale = 0.37f;
    kiln::cuda::adamw_update(param_ref.get(), grad.get(), m_ref.get(), v_ref.get(), kSegments.data(),
                             static_cast<int>(kSegments.size()), s);
    s.grad_scale = 123.0f;  // must be ignored
    kiln::cuda::adamw_update_scaled(param.get(), with_copy ? copy.get() : nullptr, grad.get(), m.get(), v.get(),
                                    kSegments.data(), static_cast<int>(kSegments.size()), s, scale.get());
    EXPECT_EQ(std::memcmp(param.host().data(), param_ref.host().data(), kTotal * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(v.host().data(), v_ref.host().data(), kTotal * sizeof(float)), 0);
  }
}

// The clip factor of core/optim/adamw.cpp, computed the same way on the host: equal bits.
TEST(CudaOptimizer, ClipScaleIsTheTrainersFormula) {
  KILN_REQUIRE_GPU();
  DeviceBuffer<double> ss(1);
  DeviceBuffer<float> scale(1);
  for (float max_norm : {1.0f, 0.5f, 0.0f}) {
    for (double squares : {0.0, 0.25, 0.999999, 1.0, 1.0000001, 4.0, 123.456, 1e6}) {
      kiln::device::copy_to_device(ss.get(), &squares, sizeof(double));
      kiln::cuda::clip_scale_from_sum_squares(scale.get(), ss.get(), max_norm);
      const double norm = std::sqrt(squares);
      float want = 1.0f;
      if (max_norm > 0.0f && norm > max_norm) want = static_cast<float>(max_norm / (norm + 1e-6));
      EXPECT_EQ(scale.host()[0], want) << "sum of squares " << squares << ", max_norm " << max_norm;
    }
  }
}

// Against a long double host sum: |diff| <= 1e-12 * sum (each square is exact in double; the
// GPU's per-thread runs are short, so its rounding error is far below this). Two runs, the async
// form, and a 4-byte-shifted copy of the same data (scalar path) all give the same bits.
TEST(CudaOptimizer, SumSquaresIsAccurateAndDeterministic) {
  KILN_REQUIRE_GPU();
  for (std::int64_t n : {1, 3, 7, 333, 769, 2050, (1 << 20) + 5, 10000003}) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    const auto x = random_floats(n, 9, 2.0f);
    long double reference = 0.0L;
    for (float e : x) reference += static_cast<long double>(e) * e;
    DeviceBuffer<float> d_x(x);
    const double first = kiln::cuda::sum_squares(d_x.get(), n);
    EXPECT_NEAR(first, static_cast<double>(reference), 1e-12 * static_cast<double>(reference));
    EXPECT_NEAR(first, kiln::cpu::sum_squares(x.data(), n), 1e-12 * static_cast<double>(reference));
    const double second = kiln::cuda::sum_squares(d_x.get(), n);
    EXPECT_EQ(std::memcmp(&first, &second, sizeof(double)), 0) << first << " then " << second;

    DeviceBuffer<double> out(1);
    kiln::cuda::sum_squares_async(out.get(), d_x.get(), n);
    const double async = out.host()[0];
    EXPECT_EQ(std::memcmp(&first, &async, sizeof(double)), 0) << first << " vs async " << async;

    std::vector<float> shifted(1, 0.0f);
    shifted.insert(shifted.end(), x.begin(), x.end());
    DeviceBuffer<float> d_shifted(shifted);
    const double unaligned = kiln::cuda::sum_squares(d_shifted.get() + 1, n);
    EXPECT_EQ(std::memcmp(&first, &unaligned, sizeof(double)), 0) << first << " vs unaligned " << unaligned;
  }
}

TEST(CudaOptimizer, ZeroSizesLaunchNothing) {
  KILN_REQUIRE_GPU();
  DeviceBuffer<float> buf(8);
  DeviceBuffer<bf16> buf16(8);
  DeviceBuffer<double> out(std::vector<double>{42.0});
  const std::vector<AdamWSegment> empty = {{0, 0, 0.1f}, {4, 0, 0.0f}};
  const AdamWStep s = step_at(1);
  EXPECT_NO_THROW(kiln::cuda::adamw_update(buf.get(), buf.get(), buf.get(), buf.get(), nullptr, 0, s));
  EXPECT_NO_THROW(kiln::cuda::adamw_update(buf.get(), buf.get(), buf.get(), buf.get(), empty.data(), 2, s));
  EXPECT_NO_THROW(kiln::cuda::adamw_update_bf16_copy(buf.get(), buf16.get(), buf.get(), buf.get(), buf.get(),
                                                     empty.data(), 2, s));
  EXPECT_EQ(kiln::cuda::sum_squares(buf.get(), 0), 0.0);
  kiln::cuda::sum_squares_async(out.get(), buf.get(), 0);
  EXPECT_EQ(out.host()[0], 0.0);
  EXPECT_NO_THROW(kiln::device::synchronize());
}

}  // namespace
