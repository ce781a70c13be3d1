// The LLaMA family's CUDA kernels (kernels/cuda/llama.cu) against their CPU twins: RMSNorm
// (plain, fused with the residual add, backward with deterministic dgamma), rotary embeddings
// (grouped heads laid out, positions restarting) and SwiGLU, fp32 and bf16 activations. Widths
// cover one partial block (c = 40) and several (c = 600).
//
// Tolerances: fp32 1e-5 relative (another order of the block's sum of squares, expf against the
// cpu's polynomial exp); bf16 outputs against the cpu on the same bf16 inputs, one rounding: 1e-2.
#include <cmath>
#include <cstdint>
#include <vector>

#include "gpu_test.h"
#include "kernels/llama.h"

namespace {

using kiln::bf16;
using kiln::testing::DeviceBuffer;
using kiln::testing::expect_close;
using kiln::testing::random_normal;
using kiln::testing::to_bf16;
using kiln::testing::to_float;

}  // namespace

TEST(CudaLlama, RmsNormMatchesCpu) {
  KILN_REQUIRE_GPU();
  for (const std::int64_t c : {40, 600}) {
    SCOPED_TRACE(testing::Message() << "c=" << c);
    const std::int64_t rows = 70;  // two partial-dgamma chunks
    const float eps = 1e-6f;
    const auto x = random_normal(rows * c, 1), delta = random_normal(rows * c, 2), gamma = random_normal(c, 3),
               dy = random_normal(rows * c, 4), dx0 = random_normal(rows * c, 5);
    // Forward, plain and fused.
    std::vector<float> y(rows * c), rstd(rows), res(rows * c), y2(rows * c), rstd2(rows);
    kiln::cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), gamma.data(), rows, c, eps);
    kiln::cpu::residual_rmsnorm_forward(res.data(), y2.data(), rstd2.data(), x.data(), delta.data(), gamma.data(), rows,
                                        c, eps);
    DeviceBuffer<float> dx(x), ddelta(delta), dgamma_w(gamma), dy_out(rows * c), drstd(rows), dres(rows * c),
        dy2(rows * c), drstd2(rows);
    kiln::cuda::rmsnorm_forward(dy_out.get(), drstd.get(), dx.get(), dgamma_w.get(), rows, c, eps);
    kiln::cuda::residual_rmsnorm_forward(dres.get(), dy2.get(), drstd2.get(), dx.get(), ddelta.get(), dgamma_w.get(),
                                         rows, c, eps);
    expect_close(dy_out.host(), y, 1e-6, 1e-5, "out");
    expect_close(drstd.host(), rstd, 0, 1e-5, "rstd");
    EXPECT_EQ(dres.host(), res);  // one fp32 add
    expect_close(dy2.host(), y2, 1e-6, 1e-5, "fused out");
    // Backward: dinp accumulates, dgamma accumulates, both twice the same bits.
    std::vector<float> dinp = dx0, dg(c, 0.5f);
    kiln::cpu::rmsnorm_backward(dinp.data(), dg.data(), dy.data(), x.data(), gamma.data(), rstd.data(), rows, c);
    std::vector<std::vector<float>> runs;
    for (int run = 0; run < 2; ++run) {
      DeviceBuffer<float> ddinp(dx0), ddg(std::vector<float>(c, 0.5f)), ddy(dy), dr(rstd);
      kiln::cuda::rmsnorm_backward(ddinp.get(), ddg.get(), ddy.get(), dx.get(), dgamma_w.get(), dr.get(), rows, c);
      expect_close(ddinp.host(), dinp, 1e-5, 1e-5, "dinp");
      expect_close(ddg.host(), dg, 1e-4, 1e-5, "dgamma");
      runs.push_back(ddg.host());
    }
    EXPECT_EQ(runs[0], runs[1]);
    // bf16 activations.
    const auto x16 = to_bf16(x), delta16 = to_bf16(delta), dy16 = to_bf16(dy), dx016 = to_bf16(dx0);
    DeviceBuffer<bf16> bx(x16), bdelta(delta16), bout(rows * c), bres(rows * c), bdy(dy16), bdinp(dx016);
    DeviceBuffer<float> brstd(rows), bdg(std::vector<float>(c, 0.5f));
    kiln::cuda::residual_rmsnorm_forward_bf16(bres.get(), bout.get(), brstd.get(), bx.get(), bdelta.get(),
                                              dgamma_w.get(), rows, c, eps);
    std::vector<float> r16(rows * c);
    for (std::int64_t i = 0; i < rows * c; ++i) r16[i] = kiln::testing::round_bf16(to_float(x16)[i] + to_float(delta16)[i]);
    EXPECT_EQ(to_float(bres.host()), r16);
    std::vector<float> y16(rows * c), rstd16(rows);
    kiln::cpu::rmsnorm_forward(y16.data(), rstd16.data(), r16.data(), gamma.data(), rows, c, eps);
    expect_close(to_float(bout.host()), y16, 1e-2, 1e-2, "bf16 fused out");
    expect_close(brstd.host(), rstd16, 0, 1e-5, "bf16 rstd");
    kiln::cuda::rmsnorm_backward_bf16(bdinp.get(), bdg.get(), bdy.get(), bres.get(), dgamma_w.get(), brstd.get(), rows, c);
    std::vector<float> dinp16 = to_float(dx016), dg16(c, 0.5f);
    kiln::cpu::rmsnorm_backward(dinp16.data(), dg16.data(), to_float(dy16).data(), r16.data(), gamma.data(),
                                rstd16.data(), rows, c);
    expect_close(to_float(bdinp.host()), dinp16, 2e-2, 1e-2, "bf16 dinp");
    expect_close(bdg.host(), dg16, 1e-3, 1e-4, "bf16 dgamma");
  }
}

TEST(CudaLlama, RopeMatchesCpu) {
  KILN_REQUIRE_GPU();
  const std::int64_t rows = 9, hd = 16, half = hd / 2, qh = 4, kvh = 2, width = (qh + 2 * kvh) * hd, context = 32;
  std::vector<float> cos(context * half), sin(context * half);
  kiln::rope_tables(cos.data(), sin.data(), context, hd, 10000.0f);
  const std::vector<std::int32_t> positions = {0, 1, 2, 3, 0, 1, 31, 17, 5};  // a packed second document
  const auto x = random_normal(rows * width, 7);
  DeviceBuffer<float> dcos(cos), dsin(sin);
  DeviceBuffer<std::int32_t> dpos(positions);
  for (const bool backward : {false, true}) {
    SCOPED_TRACE(backward ? "backward" : "forward");
    std::vector<float> y = x;
    (backward ? kiln::cpu::rope_backward : kiln::cpu::rope_forward)(y.data(), cos.data(), sin.data(), positions.data(),
                                                                    rows, qh, kvh, hd);
    DeviceBuffer<float> dx(x);
    (backward ? kiln::cuda::rope_backward : kiln::cuda::rope_forward)(dx.get(), dcos.get(), dsin.get(), dpos.get(),
                                                                      rows, qh, kvh, hd);
    expect_close(dx.host(), y, 1e-6, 1e-6, "qkv");
    const auto x16 = to_bf16(x);
    std::vector<float> y16 = to_float(x16);
    (backward ? kiln::cpu::rope_backward : kiln::cpu::rope_forward)(y16.data(), cos.data(), sin.data(),
                                                                    positions.data(), rows, qh, kvh, hd);
    DeviceBuffer<bf16> bx(x16);
    (backward ? kiln::cuda::rope_backward_bf16 : kiln::cuda::rope_forward_bf16)(bx.get(), dcos.get(), dsin.get(),
                                                                                dpos.get(), rows, qh, kvh, hd);
    expect_close(to_float(bx.host()), y16, 1e-6, 8e-3, "bf16 qkv");
  }
}

TEST(CudaLlama, SwigluMatchesCpu) {
  KILN_REQUIRE_GPU();
  const std::int64_t rows = 5, f = 300;
  const auto x = random_normal(rows * 2 * f, 8), dy = random_normal(rows * f, 9);
  std::vector<float> y(rows * f), dx(rows * 2 * f);
  kiln::cpu::swiglu_forward(y.data(), x.data(), rows, f);
  kiln::cpu::swiglu_backward(dx.data(), x.data(), dy.data(), rows, f);
  DeviceBuffer<float> dxin(x), dyin(dy), dout(rows * f), ddx(rows * 2 * f);
  kiln::cuda::swiglu_forward(dout.get(), dxin.get(), rows, f);
  kiln::cuda::swiglu_backward(ddx.get(), dxin.get(), dyin.get(), rows, f);
  expect_close(dout.host(), y, 1e-6, 1e-5, "out");
  expect_close(ddx.host(), dx, 1e-6, 1e-5, "dinp");
  const auto x16 = to_bf16(x), dy16 = to_bf16(dy);
  std::vector<float> y16(rows * f), dx16(rows * 2 * f);
  kiln::cpu::swiglu_forward(y16.data(), to_float(x16).data(), rows, f);
  kiln::cpu::swiglu_backward(dx16.data(), to_float(x16).data(), to_float(dy16).data(), rows, f);
  DeviceBuffer<bf16> bx(x16), bdy(dy16), bout(rows * f), bdx(rows * 2 * f);
  kiln::cuda::swiglu_forward_bf16(bout.get(), bx.get(), rows, f);
  kiln::cuda::swiglu_backward_bf16(bdx.get(), bx.get(), bdy.get(), rows, f);
  expect_close(to_float(bout.host()), y16, 1e-6, 8e-3, "bf16 out");
  expect_close(to_float(bdx.host()), dx16, 1e-6, 8e-3, "bf16 dinp");
}

TEST(CudaLlama, ZeroRowsLaunchNothing) {
  KILN_REQUIRE_GPU();
  kiln::cuda::rmsnorm_forward(nullptr, nullptr, nullptr, nullptr, 0, 8, 1e-5f);
  kiln::cuda::rmsnorm_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 8);
  kiln::cuda::rope_forward(nullptr, nullptr, nullptr, nullptr, 0, 2, 2, 8);
  kiln::cuda::swiglu_forward(nullptr, nullptr, 0, 8);
  EXPECT_NO_THROW(kiln::device::synchronize());
}
