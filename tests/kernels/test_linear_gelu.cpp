// The fused linear + GELU CPU twin (the reference for the CUDA GELU epilogue), and the
// row-major -> column-major mapping (kiln::column_major_gemm) that the CUDA products use to call
// cuBLASLt, checked here on the host by a naive column-major product.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "grad_check.h"
#include "kernels/gelu.h"
#include "kernels/matmul.h"

using kiln::testing::random_vector;

TEST(LinearGelu, IsLinearForwardThenGeluBitForBit) {
  const std::int64_t rows = 7, in = 33, out = 9;
  const auto x = random_vector(rows * in, 11), w = random_vector(in * out, 12), b = random_vector(out, 13);
  for (bool bf16 : {false, true}) {
    for (bool with_bias : {false, true}) {
      const float* bias = with_bias ? b.data() : nullptr;
      std::vector<float> pre_ref(rows * out), out_ref(rows * out);
      kiln::cpu::linear_forward(pre_ref.data(), x.data(), w.data(), bias, rows, in, out, bf16);
      kiln::cpu::gelu_forward(out_ref.data(), pre_ref.data(), rows * out);
      std::vector<float> pre(rows * out), y(rows * out), y_no_pre(rows * out);
      kiln::cpu::linear_forward_gelu(y.data(), pre.data(), x.data(), w.data(), bias, rows, in, out, bf16);
      kiln::cpu::linear_forward_gelu(y_no_pre.data(), nullptr, x.data(), w.data(), bias, rows, in, out, bf16);
      EXPECT_EQ(pre, pre_ref) << "bf16=" << bf16 << " bias=" << with_bias;
      EXPECT_EQ(y, out_ref) << "bf16=" << bf16 << " bias=" << with_bias;
      EXPECT_EQ(y_no_pre, out_ref) << "pre_gelu null, bf16=" << bf16 << " bias=" << with_bias;
    }
  }
}

TEST(LinearGelu, MatchesANaiveTanhGeluReference) {
  const std::int64_t rows = 5, in = 17, out = 6;
  const auto x = random_vector(rows * in, 21), w = random_vector(in * out, 22), b = random_vector(out, 23);
  std::vector<float> pre(rows * out), y(rows * out);
  kiln::cpu::linear_forward_gelu(y.data(), pre.data(), x.data(), w.data(), b.data(), rows, in, out, false);
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < out; ++j) {
      double v = b[j];
      for (std::int64_t p = 0; p < in; ++p) v += static_cast<double>(x[i * in + p]) * w[p * out + j];
      const double g = 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
      EXPECT_NEAR(pre[i * out + j], v, 1e-5 * (1.0 + std::fabs(v)));
      EXPECT_NEAR(y[i * out + j], g, 1e-5 * (1.0 + std::fabs(g)));
    }
  }
}

namespace {

// op(x)(i, p) of a column-major operand as the BLAS reads it.
double column_major_op(const std::vector<float>& x, const kiln::ColumnMajorOperand& op, std::int64_t i, std::int64_t p) {
  return op.transpose ? x[p + i * op.ld] : x[i + p * op.ld];
}

}  // namespace

TEST(ColumnMajorGemm, RowMajorProductsMapToTheColumnMajorBlasForAllTransposes) {
  struct Shape {
    std::int64_t m, n, k;
  };
  for (const Shape s : {Shape{7, 5, 9}, Shape{1, 33, 3}, Shape{4, 1, 6}, Shape{3, 8, 1}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k << " ta=" << ta << " tb=" << tb);
        // a: (m, k) row-major, or (k, m) when transposed; b: (k, n), or (n, k).
        const auto a = random_vector(s.m * s.k, 31), b = random_vector(s.k * s.n, 32);
        const kiln::ColumnMajorGemm g = kiln::column_major_gemm(s.m, s.n, s.k, ta, tb);
        ASSERT_EQ(g.m, s.n);
        ASSERT_EQ(g.n, s.m);
        ASSERT_EQ(g.k, s.k);
        // Each operand's stored shape agrees with its op and the problem, and fits its array.
        ASSERT_EQ(g.first.transpose ? g.first.cols : g.first.rows, g.m);
        ASSERT_EQ(g.first.transpose ? g.first.rows : g.first.cols, g.k);
        ASSERT_EQ(g.second.transpose ? g.second.cols : g.second.rows, g.k);
        ASSERT_EQ(g.second.transpose ? g.second.rows : g.second.cols, g.n);
        ASSERT_GE(g.first.ld, g.first.rows);
        ASSERT_GE(g.second.ld, g.second.rows);
        ASSERT_EQ(g.first.ld * g.first.cols, s.k * s.n);
        ASSERT_EQ(g.second.ld * g.second.cols, s.m * s.k);
        ASSERT_EQ(g.ldd, s.n);
        // D (column-major, ld ldd) = op(first) op(second), then read back row-major.
        std::vector<double> d(s.m * s.n);
        for (std::int64_t i = 0; i < g.m; ++i)
          for (std::int64_t j = 0; j < g.n; ++j) {
            double acc = 0.0;
            for (std::int64_t p = 0; p < g.k; ++p) acc += column_major_op(b, g.first, i, p) * column_major_op(a, g.second, p, j);
            d[i + j * g.ldd] = acc;
          }
        for (std::int64_t i = 0; i < s.m; ++i)
          for (std::int64_t j = 0; j < s.n; ++j) {
            double ref = 0.0;
            for (std::int64_t p = 0; p < s.k; ++p) {
              const double av = ta ? a[p * s.m + i] : a[i * s.k + p];
              const double bv = tb ? b[j * s.k + p] : b[p * s.n + j];
              ref += bv * av;  // the column-major side multiplies b's entry by a's
            }
            EXPECT_EQ(d[i * s.n + j], ref) << "c[" << i << ", " << j << "]";
          }
      }
    }
  }
}
