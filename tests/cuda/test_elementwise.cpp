// CUDA elementwise ops (add, accumulate, GELU, fp32 <-> bf16 conversion) against the CPU twins
// on seeded random inputs, at sizes that leave a tail after the 128-bit units and with pointers
// off the 16-byte alignment (the scalar path).
//
// Tolerances (atol + rtol * |expected|): add/accumulate and the conversions are exact (bit for
// bit); GELU fp32 forward 1e-6 + 1e-5, backward 1e-5 + 1e-5 (both use tanh = 1 - 2/(exp(2u)+1),
// with different exp implementations); bf16 GELU 1e-4 + 1e-2 (one bf16 rounding).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gpu_test.h"
#include "kernels/elementwise.h"
#include "kernels/gelu.h"

namespace {

using kiln::bf16;
using kiln::testing::DeviceBuffer;
using kiln::testing::padded;
using kiln::testing::unpadded;
using kiln::testing::expect_close;
using kiln::testing::round_bf16;
using kiln::testing::rounded;

// Sizes: single elements, tails of every length below 8 after the vector units, large.
const std::int64_t kSizes[] = {1, 3, 7, 8, 9, 1000, 4097, (1 << 20) + 5};
// Leading elements skipped: 0 keeps 16-byte alignment, 1 breaks it.
const std::size_t kPads[] = {0, 1};

std::vector<float> uniform(std::size_t n, unsigned seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}


template <class T>
void expect_bits_equal(const std::vector<T>& actual, const std::vector<T>& expected, const char* what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < actual.size() && reported < 5; ++i)
    if (std::memcmp(&actual[i], &expected[i], sizeof(T)) != 0) {
      ++reported;
      ADD_FAILURE() << what << "[" << i << "] differs";
    }
}

std::vector<bf16> to_bf16(const std::vector<float>& v) { return kiln::testing::to_bf16(v); }
std::vector<float> to_float(const std::vector<bf16>& v) { return kiln::testing::to_float(v); }

TEST(CudaElementwise, AddAndAccumulateAreExact) {
  KILN_REQUIRE_GPU();
  for (std::int64_t n : kSizes)
    for (std::size_t pad : kPads) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " pad=" << pad);
      const auto size = static_cast<std::size_t>(n);
      const auto a = uniform(size, 1, -4.0f, 4.0f), b = uniform(size, 2, -4.0f, 4.0f);
      std::vector<float> sum(size), acc = a;
      kiln::cpu::add(sum.data(), a.data(), b.data(), n);
      kiln::cpu::accumulate(acc.data(), b.data(), n);

      DeviceBuffer<float> d_a(padded(a, pad)), d_b(padded(b, pad)), d_out(pad + size);
      kiln::cuda::add(d_out.get() + pad, d_a.get() + pad, d_b.get() + pad, n);
      expect_bits_equal(unpadded(d_out, pad), sum, "add");
      kiln::cuda::accumulate(d_a.get() + pad, d_b.get() + pad, n);
      expect_bits_equal(unpadded(d_a, pad), acc, "accumulate");
      // out aliasing an input.
      kiln::cuda::add(d_b.get() + pad, d_out.get() + pad, d_b.get() + pad, n);
      std::vector<float> again(size);
      kiln::cpu::add(again.data(), sum.data(), b.data(), n);
      expect_bits_equal(unpadded(d_b, pad), again, "add in place");
    }
}

TEST(CudaElementwise, Bf16AddAndAccumulateRoundOnce) {
  KILN_REQUIRE_GPU();
  for (std::int64_t n : kSizes)
    for (std::size_t pad : kPads) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " pad=" << pad);
      const auto size = static_cast<std::size_t>(n);
      const auto a = rounded(uniform(size, 3, -4.0f, 4.0f)), b = rounded(uniform(size, 4, -4.0f, 4.0f));
      std::vector<bf16> sum(size);
      for (std::size_t i = 0; i < size; ++i) sum[i] = kiln::to_bf16(a[i] + b[i]);

      DeviceBuffer<bf16> d_a(padded(to_bf16(a), pad)), d_b(padded(to_bf16(b), pad)), d_out(pad + size);
      kiln::cuda::add_bf16(d_out.get() + pad, d_a.get() + pad, d_b.get() + pad, n);
      expect_bits_equal(unpadded(d_out, pad), sum, "add_bf16");
      kiln::cuda::accumulate_bf16(d_a.get() + pad, d_b.get() + pad, n);
      expect_bits_equal(unpadded(d_a, pad), sum, "accumulate_bf16");
    }
}

TEST(CudaElementwise, GeluMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (std::int64_t n : kSizes)
    for (std::size_t pad : kPads) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " pad=" << pad);
      const auto size = static_cast<std::size_t>(n);
      const auto x = uniform(size, 5, -8.0f, 8.0f), dout = uniform(size, 6, -2.0f, 2.0f);
      std::vector<float> y(size), dx(size);
      kiln::cpu::gelu_forward(y.data(), x.data(), n);
      kiln::cpu::gelu_backward(dx.data(), x.data(), dout.data(), n);

      DeviceBuffer<float> d_x(padded(x, pad)), d_dout(padded(dout, pad)), d_y(pad + size), d_dx(pad + size);
      kiln::cuda::gelu_forward(d_y.get() + pad, d_x.get() + pad, n);
      kiln::cuda::gelu_backward(d_dx.get() + pad, d_x.get() + pad, d_dout.get() + pad, n);
      expect_close(unpadded(d_y, pad), y, 1e-6, 1e-5, "gelu_forward");
      expect_close(unpadded(d_dx, pad), dx, 1e-5, 1e-5, "gelu_backward");
      // dinp aliasing dout.
      kiln::cuda::gelu_backward(d_dout.get() + pad, d_x.get() + pad, d_dout.get() + pad, n);
      expect_close(unpadded(d_dout, pad), dx, 1e-5, 1e-5, "gelu_backward in place");
    }
}

TEST(CudaElementwise, GeluTailsAreExact) {
  KILN_REQUIRE_GPU();
  // Far tails: exp(2u) overflows to inf or underflows to 0; gelu is x or 0, gelu' 1 or 0.
  const std::vector<float> x = {-1e4f, -100.0f, -20.0f, 0.0f, 20.0f, 100.0f, 1e4f};
  const std::vector<float> ones(x.size(), 1.0f);
  DeviceBuffer<float> d_x(x), d_ones(ones), d_y(x.size()), d_dx(x.size());
  kiln::cuda::gelu_forward(d_y.get(), d_x.get(), static_cast<std::int64_t>(x.size()));
  kiln::cuda::gelu_backward(d_dx.get(), d_x.get(), d_ones.get(), static_cast<std::int64_t>(x.size()));
  const auto y = d_y.host(), dx = d_dx.host();
  for (std::size_t i = 0; i < x.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "x=" << x[i]);
    EXPECT_FALSE(std::isnan(y[i]));
    EXPECT_FALSE(std::isnan(dx[i]));
    if (x[i] >= 20.0f) {
      EXPECT_EQ(y[i], x[i]);
      EXPECT_EQ(dx[i], 1.0f);
    }
    if (x[i] <= -20.0f) EXPECT_EQ(std::fabs(y[i]), 0.0f);
  }
}

TEST(CudaElementwise, Bf16GeluMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (std::int64_t n : kSizes)
    for (std::size_t pad : kPads) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " pad=" << pad);
      const auto size = static_cast<std::size_t>(n);
      const auto x = rounded(uniform(size, 7, -8.0f, 8.0f)), dout = rounded(uniform(size, 8, -2.0f, 2.0f));
      std::vector<float> y(size), dx(size);
      kiln::cpu::gelu_forward(y.data(), x.data(), n);
      kiln::cpu::gelu_backward(dx.data(), x.data(), dout.data(), n);

      DeviceBuffer<bf16> d_x(padded(to_bf16(x), pad)), d_dout(padded(to_bf16(dout), pad)), d_y(pad + size),
          d_dx(pad + size);
      kiln::cuda::gelu_forward_bf16(d_y.get() + pad, d_x.get() + pad, n);
      kiln::cuda::gelu_backward_bf16(d_dx.get() + pad, d_x.get() + pad, d_dout.get() + pad, n);
      expect_close(to_float(unpadded(d_y, pad)), y, 1e-4, 1e-2, "gelu_forward_bf16");
      expect_close(to_float(unpadded(d_dx, pad)), dx, 1e-4, 1e-2, "gelu_backward_bf16");
      kiln::cuda::gelu_backward_bf16(d_dout.get() + pad, d_x.get() + pad, d_dout.get() + pad, n);
      expect_bits_equal(unpadded(d_dout, pad), unpadded(d_dx, pad), "gelu_backward_bf16 in place");
    }
}

// Random bit patterns (NaNs with payloads, infinities, subnormals, ties) and chosen values.
std::vector<float> conversion_inputs(std::size_t n) {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min(),
                          1.0f + 1.0f / 256.0f,            // tie: rounds down to even
                          1.0f + 3.0f / 256.0f,            // tie: rounds up to even
                          1.0f + 1.0f / 256.0f + 1e-7f};   // just above a tie
  const std::uint32_t patterns[] = {0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu, 0xffffffffu,
                                    0x7f7f8000u, 0x7f7fffffu, 0x00008000u, 0x00018000u, 0x80008000u};
  for (std::uint32_t p : patterns) {
    float f;
    std::memcpy(&f, &p, 4);
    v.push_back(f);
  }
  std::mt19937 rng(9);
  while (v.size() < n) {
    const std::uint32_t p = rng();
    float f;
    std::memcpy(&f, &p, 4);
    v.push_back(f);
  }
  v.resize(n);
  return v;
}

TEST(CudaElementwise, ConversionsMatchHostBitForBit) {
  KILN_REQUIRE_GPU();
  for (std::int64_t n : {std::int64_t{24}, std::int64_t{4097}, std::int64_t{(1 << 20) + 5}})
    for (std::size_t pad : kPads) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " pad=" << pad);
      const auto in = conversion_inputs(static_cast<std::size_t>(n));
      std::vector<bf16> expected(in.size());
      for (std::size_t i = 0; i < in.size(); ++i) expected[i] = kiln::to_bf16(in[i]);
      DeviceBuffer<float> d_in(padded(in, pad)), d_back(pad + in.size());
      DeviceBuffer<bf16> d_out(pad + in.size());
      kiln::cuda::convert_f32_to_bf16(d_out.get() + pad, d_in.get() + pad, n);
      expect_bits_equal(unpadded(d_out, pad), expected, "convert_f32_to_bf16");
      kiln::cuda::convert_bf16_to_f32(d_back.get() + pad, d_out.get() + pad, n);
      std::vector<float> back(in.size());
      for (std::size_t i = 0; i < in.size(); ++i) back[i] = kiln::to_float(expected[i]);
      expect_bits_equal(unpadded(d_back, pad), back, "convert_bf16_to_f32");
    }
  // Every bf16 bit pattern widens exactly.
  std::vector<bf16> all(1 << 16);
  std::vector<float> widened(all.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    all[i].bits = static_cast<std::uint16_t>(i);
    widened[i] = kiln::to_float(all[i]);
  }
  DeviceBuffer<bf16> d_all(all);
  DeviceBuffer<float> d_widened(all.size());
  kiln::cuda::convert_bf16_to_f32(d_widened.get(), d_all.get(), static_cast<std::int64_t>(all.size()));
  expect_bits_equal(d_widened.host(), widened, "every bf16");
}

TEST(CudaElementwise, EmptyTensorsLaunchNothing) {
  KILN_REQUIRE_GPU();
  EXPECT_NO_THROW({
    kiln::cuda::add(nullptr, nullptr, nullptr, 0);
    kiln::cuda::accumulate(nullptr, nullptr, 0);
    kiln::cuda::add_bf16(nullptr, nullptr, nullptr, 0);
    kiln::cuda::accumulate_bf16(nullptr, nullptr, 0);
    kiln::cuda::gelu_forward(nullptr, nullptr, 0);
    kiln::cuda::gelu_backward(nullptr, nullptr, nullptr, 0);
    kiln::cuda::gelu_forward_bf16(nullptr, nullptr, 0);
    kiln::cuda::gelu_backward_bf16(nullptr, nullptr, nullptr, 0);
    kiln::cuda::convert_f32_to_bf16(nullptr, nullptr, 0);
    kiln::cuda::convert_bf16_to_f32(nullptr, nullptr, 0);
    kiln::device::synchronize();
  });
}

}  // namespace
