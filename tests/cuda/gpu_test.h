// Shared by the GPU tests (ctest label "gpu"): skip without a device, move vectors to and from
// device memory, compare against a CPU twin's output.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/device.h"

// First statement of every GPU test: without a device (any CUDA error counts) the test reports
// skipped and the rest of the suite runs.
#define KILN_REQUIRE_GPU()                                                              \
  do {                                                                                  \
    if (!::kiln::device::cuda_available())                                              \
      GTEST_SKIP() << "no CUDA device: " << ::kiln::device::cuda_description();         \
  } while (0)

namespace kiln::testing {

// Whether this binary runs the GPU tests on the host emulator of CUDA (test_cuda_emu, tests/emu/)
// rather than on a device. Emulated kernels are many thousand times slower than a GPU's, so the
// training tests use smaller problems there; each says where.
#ifdef KILN_CUDA_EMULATOR
inline constexpr bool kEmulated = true;
#else
inline constexpr bool kEmulated = false;
#endif

// Device memory holding a copy of a host vector (or n zeroed elements); read back with host().
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<T>& values) : n_(values.size()) {
    ptr_ = static_cast<T*>(device::alloc(bytes()));
    device::copy_to_device(ptr_, values.data(), bytes());
  }
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    ptr_ = static_cast<T*>(device::alloc(bytes()));
    device::fill_zero(ptr_, bytes());
  }
  ~DeviceBuffer() { device::free(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() { return ptr_; }
  const T* get() const { return ptr_; }
  std::size_t size() const { return n_; }
  std::vector<T> host() const {
    std::vector<T> out(n_);
    device::copy_to_host(out.data(), ptr_, bytes());
    return out;
  }

 private:
  std::size_t bytes() const { return n_ ? n_ * sizeof(T) : 1; }
  T* ptr_ = nullptr;
  std::size_t n_ = 0;
};

// `pad` leading elements, so that a tensor copied to the device starts off the 16-byte
// alignment (the kernels' scalar paths); unpadded() reads it back without them.
template <class T>
std::vector<T> padded(const std::vector<T>& v, std::size_t pad) {
  std::vector<T> out(pad + v.size(), T{});
  std::copy(v.begin(), v.end(), out.begin() + static_cast<std::ptrdiff_t>(pad));
  return out;
}
template <class T>
std::vector<T> unpadded(const DeviceBuffer<T>& buffer, std::size_t pad) {
  const std::vector<T> all = buffer.host();
  return std::vector<T>(all.begin() + static_cast<std::ptrdiff_t>(pad), all.end());
}

// x rounded through bf16 (what a bf16 tensor holding x stores).
inline float round_bf16(float x) { return to_float(to_bf16(x)); }
// Every element rounded to bf16 and back (what a bf16 copy of the values holds).
inline std::vector<float> rounded(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}
// n seeded draws from N(0, 1).
inline std::vector<float> random_normal(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}
inline std::vector<bf16> to_bf16(const std::vector<float>& x) {
  std::vector<bf16> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = kiln::to_bf16(x[i]);
  return out;
}
inline std::vector<float> to_float(const std::vector<bf16>& x) {
  std::vector<float> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = kiln::to_float(x[i]);
  return out;
}

// Every element within atol + atol_each[i] (when given) + rtol * |expected|; reports the first
// few offenders by index.
inline void expect_close(const std::vector<float>& actual, const std::vector<float>& expected,
                         double atol, double rtol, const char* what, const std::vector<double>* atol_each = nullptr) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  if (atol_each != nullptr) ASSERT_EQ(atol_each->size(), expected.size()) << what;
  int reported = 0;
  double worst = 0.0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double err = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    const double tol = atol + (atol_each != nullptr ? (*atol_each)[i] : 0.0) +
                       rtol * std::fabs(static_cast<double>(expected[i]));
    worst = std::max(worst, err);
    if (!(err <= tol) && reported++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: " << actual[i] << " vs " << expected[i]
                    << " (|diff| " << err << " > " << tol << ")";
  }
  if (reported > 5) ADD_FAILURE() << what << ": " << reported << " elements out of tolerance";
  ::testing::Test::RecordProperty(std::string(what) + "_max_abs_err", std::to_string(worst));
}

// cuBLASLt's fused bias epilogue with a bf16 output adds the bias to the product rounded to bf16
// (seen on an H200: off by up to half an ulp of x w where x w + bias cancels). The tolerance that
// adds per element: that half ulp of |x w|, times GELU's steepest slope (1.13) when GELU follows.
inline std::vector<double> bf16_bias_epilogue_slack(const std::vector<float>& product, bool gelu) {
  std::vector<double> slack(product.size());
  for (std::size_t i = 0; i < product.size(); ++i) slack[i] = std::ldexp(std::fabs(product[i]), -8) * (gelu ? 1.13 : 1.0);
  return slack;
}

}  // namespace kiln::testing
