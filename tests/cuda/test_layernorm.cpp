// CUDA LayerNorm (plain, fused with the residual add, backward; fp32 and bf16) against the CPU
// twins on seeded random inputs: odd shapes, rows too long for registers, unaligned pointers,
// accumulation into non-zero gradients, bit-identical parameter gradients run to run.
//
// Tolerances (atol + rtol * |expected|): fp32 forward 2e-6 + 1e-5 (mean: 1e-6 + 1e-5, rstd
// 1e-5 relative); fp32 backward dinp 1e-5 + 1e-4, dgamma/dbeta (1e-5 + 3e-7 * rows) + 1e-4
// (the sum over rows runs in another order); bf16 outputs 1e-3 + 1e-2 (one bf16 rounding of a
// value within the fp32 tolerance). The fused residual itself must match bit for bit. fp32 out
// and dinp also allow 2e-7 * the largest rstd: in rows of nearly equal values (c = 1, 3) rstd
// reaches 1/sqrt(eps) = 316 and multiplies last-bit differences of the mean (the twins sum in
// other orders) and of dout * gamma (the CPU twin's FMA contraction).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gpu_test.h"
#include "kernels/elementwise.h"
#include "kernels/layernorm.h"

namespace {

using kiln::bf16;
using kiln::testing::DeviceBuffer;
using kiln::testing::padded;
using kiln::testing::unpadded;
using kiln::testing::expect_close;
using kiln::testing::round_bf16;
using kiln::testing::rounded;

struct Shape {
  std::int64_t rows, c;
};

// rows {1, 7, 333, 4096} x c {1, 3, 768, 769, 1600, 4100}, then rows that do not fit in
// registers (the re-reading kernels): 12288 (forward in registers, backward not), 20001 (scalar).
std::vector<Shape> shapes() {
  std::vector<Shape> out;
  for (std::int64_t rows : {1, 7, 333, 4096})
    for (std::int64_t c : {1, 3, 768, 769, 1600, 4100}) out.push_back({rows, c});
  out.push_back({5, 12288});
  out.push_back({3, 20001});
  return out;
}

std::vector<float> normal(std::size_t n, unsigned seed, float mean, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Rows with their own offset, so that the mean matters.
std::vector<float> activations(std::int64_t rows, std::int64_t c, unsigned seed) {
  auto v = normal(static_cast<std::size_t>(rows * c), seed, 0.0f, 1.0f);
  std::mt19937 rng(seed + 1000);
  std::uniform_real_distribution<float> offset(-1.0f, 1.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float o = offset(rng);
    for (std::int64_t i = 0; i < c; ++i) v[r * c + i] += o;
  }
  return v;
}


std::vector<float> as_float(const std::vector<bf16>& v) { return kiln::testing::to_float(v); }

template <class T>
void expect_bits_equal(const std::vector<T>& actual, const std::vector<T>& expected, const char* what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  EXPECT_EQ(std::memcmp(actual.data(), expected.data(), actual.size() * sizeof(T)), 0) << what;
}

double grad_atol(std::int64_t rows) { return 1e-5 + 3e-7 * static_cast<double>(rows); }
double rstd_atol(const std::vector<float>& rstd) {
  return 2e-7 * static_cast<double>(*std::max_element(rstd.begin(), rstd.end()));
}

// ---- fp32 ------------------------------------------------------------------------------------

// Forward or fused residual forward on one shape; pad > 0 misaligns every activation pointer.
void check_forward_f32(const Shape& s, bool residual, std::size_t pad, bool in_place = false) {
  SCOPED_TRACE(testing::Message() << "rows=" << s.rows << " c=" << s.c << " residual=" << residual
                                  << " pad=" << pad << " in_place=" << in_place);
  const auto n = static_cast<std::size_t>(s.rows * s.c);
  const auto inp = activations(s.rows, s.c, 1), delta = normal(n, 2, 0.0f, 0.5f);
  const auto gamma = normal(s.c, 3, 1.0f, 0.1f), beta = normal(s.c, 4, 0.0f, 0.1f);
  std::vector<float> res_ref(n), out_ref(n), mean_ref(s.rows), rstd_ref(s.rows);
  if (residual)
    kiln::cpu::residual_layernorm_forward(res_ref.data(), out_ref.data(), mean_ref.data(), rstd_ref.data(),
                                          inp.data(), delta.data(), gamma.data(), beta.data(), s.rows, s.c);
  else
    kiln::cpu::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), inp.data(), gamma.data(),
                                 beta.data(), s.rows, s.c);

  DeviceBuffer<float> d_inp(padded(inp, pad)), d_delta(padded(delta, pad)), d_res(pad + n),
      d_out(pad + n), d_mean(s.rows), d_rstd(s.rows), d_gamma(gamma), d_beta(beta);
  float* res_ptr = in_place ? d_inp.get() + pad : d_res.get() + pad;
  if (residual)
    kiln::cuda::residual_layernorm_forward(res_ptr, d_out.get() + pad, d_mean.get(), d_rstd.get(),
                                           d_inp.get() + pad, d_delta.get() + pad, d_gamma.get(),
                                           d_beta.get(), s.rows, s.c);
  else
    kiln::cuda::layernorm_forward(d_out.get() + pad, d_mean.get(), d_rstd.get(), d_inp.get() + pad,
                                  d_gamma.get(), d_beta.get(), s.rows, s.c);
  expect_close(unpadded(d_out, pad), out_ref, 2e-6 + rstd_atol(rstd_ref), 1e-5, "out");
  expect_close(d_mean.host(), mean_ref, 1e-6, 1e-5, "mean");
  expect_close(d_rstd.host(), rstd_ref, 0.0, 1e-5, "rstd");
  if (residual) expect_bits_equal(unpadded(in_place ? d_inp : d_res, pad), res_ref, "residual");
}

struct BackwardResult {
  std::vector<float> dinp, dgamma, dbeta;
};

// Backward on one shape from non-zero dinp/dgamma/dbeta; returns the GPU's results after
// checking them against the CPU twin.
BackwardResult check_backward_f32(const Shape& s, std::size_t pad) {
  SCOPED_TRACE(testing::Message() << "rows=" << s.rows << " c=" << s.c << " pad=" << pad);
  const auto n = static_cast<std::size_t>(s.rows * s.c);
  const auto inp = activations(s.rows, s.c, 5), dout = normal(n, 6, 0.0f, 1.0f);
  const auto gamma = normal(s.c, 7, 1.0f, 0.1f), beta = normal(s.c, 8, 0.0f, 0.1f);
  const auto dinp0 = normal(n, 9, 0.0f, 1.0f), dgamma0 = normal(s.c, 10, 0.0f, 1.0f),
             dbeta0 = normal(s.c, 11, 0.0f, 1.0f);
  std::vector<float> out(n), mean(s.rows), rstd(s.rows);
  kiln::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), gamma.data(), beta.data(),
                               s.rows, s.c);
  auto dinp_ref = dinp0, dgamma_ref = dgamma0, dbeta_ref = dbeta0;
  kiln::cpu::layernorm_backward(dinp_ref.data(), dgamma_ref.data(), dbeta_ref.data(), dout.data(), inp.data(),
                                gamma.data(), mean.data(), rstd.data(), s.rows, s.c);

  DeviceBuffer<float> d_inp(padded(inp, pad)), d_dout(padded(dout, pad)), d_dinp(padded(dinp0, pad)),
      d_gamma(gamma), d_mean(mean), d_rstd(rstd), d_dgamma(dgamma0), d_dbeta(dbeta0);
  kiln::cuda::layernorm_backward(d_dinp.get() + pad, d_dgamma.get(), d_dbeta.get(), d_dout.get() + pad,
                                 d_inp.get() + pad, d_gamma.get(), d_mean.get(), d_rstd.get(), s.rows, s.c);
  BackwardResult got{unpadded(d_dinp, pad), d_dgamma.host(), d_dbeta.host()};
  expect_close(got.dinp, dinp_ref, 1e-5 + rstd_atol(rstd), 1e-4, "dinp");
  expect_close(got.dgamma, dgamma_ref, grad_atol(s.rows), 1e-4, "dgamma");
  expect_close(got.dbeta, dbeta_ref, grad_atol(s.rows), 1e-4, "dbeta");
  return got;
}

TEST(CudaLayerNorm, ForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : shapes()) check_forward_f32(s, false, 0);
}

TEST(CudaLayerNorm, ResidualForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : shapes()) check_forward_f32(s, true, 0);
  // The residual stream updated in place (residual aliases inp).
  for (const Shape& s : {Shape{7, 768}, Shape{333, 769}, Shape{3, 20001}}) check_forward_f32(s, true, 0, true);
}

TEST(CudaLayerNorm, UnalignedPointersTakeTheScalarPath) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{7, 768}, Shape{333, 1600}, Shape{3, 12288}}) {
    check_forward_f32(s, false, 1);
    check_forward_f32(s, true, 1);
    check_backward_f32(s, 1);
  }
}

TEST(CudaLayerNorm, BackwardAccumulatesLikeCpu) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : shapes()) check_backward_f32(s, 0);
}

TEST(CudaLayerNorm, BackwardIsBitIdenticalRunToRun) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{4096, 768}, Shape{333, 1600}, Shape{7, 12288}, Shape{3, 20001}}) {
    const BackwardResult a = check_backward_f32(s, 0), b = check_backward_f32(s, 0);
    expect_bits_equal(a.dgamma, b.dgamma, "dgamma");
    expect_bits_equal(a.dbeta, b.dbeta, "dbeta");
    expect_bits_equal(a.dinp, b.dinp, "dinp");
  }
}

// ---- bf16 ------------------------------------------------------------------------------------

void check_forward_bf16(const Shape& s, bool residual, std::size_t pad) {
  SCOPED_TRACE(testing::Message() << "bf16 rows=" << s.rows << " c=" << s.c << " residual=" << residual
                                  << " pad=" << pad);
  const auto n = static_cast<std::size_t>(s.rows * s.c);
  const auto inp = rounded(activations(s.rows, s.c, 21)), delta = rounded(normal(n, 22, 0.0f, 0.5f));
  const auto gamma = normal(s.c, 23, 1.0f, 0.1f), beta = normal(s.c, 24, 0.0f, 0.1f);
  // The CPU sees what the GPU stores: the residual rounded to bf16.
  std::vector<float> x = inp;
  std::vector<bf16> res_ref(n);
  if (residual)
    for (std::size_t i = 0; i < n; ++i) {
      res_ref[i] = kiln::to_bf16(inp[i] + delta[i]);
      x[i] = kiln::to_float(res_ref[i]);
    }
  std::vector<float> out_ref(n), mean_ref(s.rows), rstd_ref(s.rows);
  kiln::cpu::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), x.data(), gamma.data(),
                               beta.data(), s.rows, s.c);

  DeviceBuffer<bf16> d_inp(padded(kiln::testing::to_bf16(inp), pad)),
      d_delta(padded(kiln::testing::to_bf16(delta), pad)), d_res(pad + n), d_out(pad + n);
  DeviceBuffer<float> d_mean(s.rows), d_rstd(s.rows), d_gamma(gamma), d_beta(beta);
  if (residual)
    kiln::cuda::residual_layernorm_forward_bf16(d_res.get() + pad, d_out.get() + pad, d_mean.get(),
                                                d_rstd.get(), d_inp.get() + pad, d_delta.get() + pad,
                                                d_gamma.get(), d_beta.get(), s.rows, s.c);
  else
    kiln::cuda::layernorm_forward_bf16(d_out.get() + pad, d_mean.get(), d_rstd.get(), d_inp.get() + pad,
                                       d_gamma.get(), d_beta.get(), s.rows, s.c);
  expect_close(as_float(unpadded(d_out, pad)), out_ref, 1e-3, 1e-2, "out");
  expect_close(d_mean.host(), mean_ref, 1e-6, 1e-5, "mean");
  expect_close(d_rstd.host(), rstd_ref, 0.0, 1e-5, "rstd");
  if (residual) expect_bits_equal(unpadded(d_res, pad), res_ref, "residual");
}

BackwardResult check_backward_bf16(const Shape& s, std::size_t pad) {
  SCOPED_TRACE(testing::Message() << "bf16 rows=" << s.rows << " c=" << s.c << " pad=" << pad);
  const auto n = static_cast<std::size_t>(s.rows * s.c);
  const auto inp = rounded(activations(s.rows, s.c, 25)), dout = rounded(normal(n, 26, 0.0f, 1.0f));
  const auto gamma = normal(s.c, 27, 1.0f, 0.1f), beta = normal(s.c, 28, 0.0f, 0.1f);
  const auto dinp0 = rounded(normal(n, 29, 0.0f, 1.0f));
  const auto dgamma0 = normal(s.c, 30, 0.0f, 1.0f), dbeta0 = normal(s.c, 31, 0.0f, 1.0f);
  std::vector<float> out(n), mean(s.rows), rstd(s.rows);
  kiln::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), gamma.data(), beta.data(),
                               s.rows, s.c);
  auto dinp_ref = dinp0, dgamma_ref = dgamma0, dbeta_ref = dbeta0;
  kiln::cpu::layernorm_backward(dinp_ref.data(), dgamma_ref.data(), dbeta_ref.data(), dout.data(), inp.data(),
                                gamma.data(), mean.data(), rstd.data(), s.rows, s.c);

  DeviceBuffer<bf16> d_inp(padded(kiln::testing::to_bf16(inp), pad)),
      d_dout(padded(kiln::testing::to_bf16(dout), pad)), d_dinp(padded(kiln::testing::to_bf16(dinp0), pad));
  DeviceBuffer<float> d_gamma(gamma), d_mean(mean), d_rstd(rstd), d_dgamma(dgamma0), d_dbeta(dbeta0);
  kiln::cuda::layernorm_backward_bf16(d_dinp.get() + pad, d_dgamma.get(), d_dbeta.get(), d_dout.get() + pad,
                                      d_inp.get() + pad, d_gamma.get(), d_mean.get(), d_rstd.get(), s.rows,
                                      s.c);
  BackwardResult got{as_float(unpadded(d_dinp, pad)), d_dgamma.host(), d_dbeta.host()};
  expect_close(got.dinp, dinp_ref, 1e-3, 1e-2, "dinp");
  expect_close(got.dgamma, dgamma_ref, grad_atol(s.rows), 1e-4, "dgamma");
  expect_close(got.dbeta, dbeta_ref, grad_atol(s.rows), 1e-4, "dbeta");
  return got;
}

TEST(CudaLayerNorm, Bf16ForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : shapes()) check_forward_bf16(s, false, 0);
}

TEST(CudaLayerNorm, Bf16ResidualForwardRoundsTheResidualBeforeTheStatistics) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : shapes()) check_forward_bf16(s, true, 0);
}

TEST(CudaLayerNorm, Bf16BackwardAccumulatesLikeCpu) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : shapes()) check_backward_bf16(s, 0);
}

TEST(CudaLayerNorm, Bf16UnalignedPointersTakeTheScalarPath) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{7, 768}, Shape{333, 1600}}) {
    check_forward_bf16(s, false, 1);
    check_forward_bf16(s, true, 1);
    check_backward_bf16(s, 1);
  }
}

TEST(CudaLayerNorm, Bf16BackwardIsBitIdenticalRunToRun) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{4096, 768}, Shape{333, 1600}, Shape{7, 12288}, Shape{3, 4100}}) {
    const BackwardResult a = check_backward_bf16(s, 0), b = check_backward_bf16(s, 0);
    expect_bits_equal(a.dgamma, b.dgamma, "dgamma");
    expect_bits_equal(a.dbeta, b.dbeta, "dbeta");
    expect_bits_equal(a.dinp, b.dinp, "dinp");
  }
}

TEST(CudaLayerNorm, EmptyTensorsLaunchNothing) {
  KILN_REQUIRE_GPU();
  for (const Shape& s : {Shape{0, 768}, Shape{7, 0}, Shape{0, 0}}) {
    EXPECT_NO_THROW({
      kiln::cuda::layernorm_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, s.rows, s.c);
      kiln::cuda::residual_layernorm_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, s.rows, s.c);
      kiln::cuda::layernorm_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                     s.rows, s.c);
      kiln::cuda::layernorm_forward_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, s.rows, s.c);
      kiln::cuda::residual_layernorm_forward_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                                  nullptr, s.rows, s.c);
      kiln::cuda::layernorm_backward_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                          nullptr, s.rows, s.c);
      kiln::device::synchronize();
    });
  }
}

}  // namespace
