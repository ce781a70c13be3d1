// The scalar head (core/model/heads.h) on the GPU against the cpu: values at every token and the
// gradients of the head and of the hidden states, on the trunk's hidden states of one model.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/model/heads.h"
#include "gpu_test.h"

TEST(CudaScalarHead, ValuesAndGradientsMatchTheCpu) {
  KILN_REQUIRE_GPU();
  const int n = 24, c = 32;
  const std::vector<float> hidden_host = kiln::testing::random_normal(n * c, 3);
  std::vector<float> dvalues(n);
  for (int i = 0; i < n; ++i) dvalues[i] = i % 8 == 7 ? 1.0f : 0.1f * static_cast<float>(i % 3 - 1);
  kiln::Tensor hidden_cpu = kiln::Tensor::empty({n, c});
  std::copy(hidden_host.begin(), hidden_host.end(), hidden_cpu.f32());
  kiln::Tensor hidden_gpu = kiln::Tensor::empty({n, c}, kiln::DType::f32, kiln::Device::cuda);
  hidden_gpu.copy_from(hidden_cpu);
  kiln::ScalarHead cpu(c, kiln::Device::cpu), gpu(c, kiln::Device::cuda);
  cpu.init(7, 0.5f);
  gpu.init(7, 0.5f);
  const std::vector<float> want = cpu.forward(hidden_cpu), got = gpu.forward(hidden_gpu);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(got[i], want[i], 1e-5 + 1e-5 * std::abs(want[i])) << "row " << i;
  kiln::Tensor dh_cpu = kiln::Tensor::zeros({n, c});
  kiln::Tensor dh_gpu = kiln::Tensor::zeros({n, c}, kiln::DType::f32, kiln::Device::cuda);
  cpu.backward(hidden_cpu, dvalues, dh_cpu);
  gpu.backward(hidden_gpu, dvalues, dh_gpu);
  kiln::Tensor dh_back = kiln::Tensor::empty({n, c});
  dh_back.copy_from(dh_gpu);
  for (int i = 0; i < n * c; ++i) EXPECT_NEAR(dh_back.f32()[i], dh_cpu.f32()[i], 1e-5) << "dhidden " << i;
  kiln::Tensor grads_back = kiln::Tensor::empty({c + 1});
  grads_back.copy_from(gpu.grads());
  for (int i = 0; i <= c; ++i)
    EXPECT_NEAR(grads_back.f32()[i], cpu.grads().f32()[i], 1e-4 + 1e-4 * std::abs(cpu.grads().f32()[i])) << "grad " << i;
}
