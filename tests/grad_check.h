// Finite-difference helpers shared by the gradient tests.
// A test defines a scalar objective f() = sum_i w_i * out_i over a kernel's outputs, with random
// weights w, and compares the analytic gradient of f with central differences, element by
// element, within abs + rel * |reference|.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace kiln::testing {

inline std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  Rng rng(seed, 0);
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * rng.normal(i);
  return v;
}

inline double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Checks analytic[i] against (f(x+eps) - f(x-eps)) / 2eps for every i (or `stride`-spaced ones).
inline void expect_gradient(const std::string& what, std::vector<float>& x,
                            const std::vector<float>& analytic, const std::function<double()>& f,
                            float eps = 1e-2f, double abs_tol = 2e-3, double rel_tol = 2e-2,
                            std::size_t stride = 1) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  int failures = 0;
  for (std::size_t i = 0; i < x.size(); i += stride) {
    const float saved = x[i];
    x[i] = saved + eps;
    const double up = f();
    x[i] = saved - eps;
    const double down = f();
    x[i] = saved;
    const double numeric = (up - down) / (2.0 * eps);
    if (std::abs(numeric - analytic[i]) > abs_tol + rel_tol * std::abs(numeric)) {
      if (++failures <= 5)
        ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << " vs numeric " << numeric;
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " mismatching elements";
}

}  // namespace kiln::testing
