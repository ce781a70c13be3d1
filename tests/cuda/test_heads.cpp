// The scalar head (core/model/heads.h) on the GPU against the cpu: values at every token and the
// gradients of the head and of the hidden states, for one model's score.weight on both devices.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/model/heads.h"
#include "gpu_test.h"

TEST(CudaScalarHead, ValuesAndGradientsMatchTheCpu) {
  KILN_REQUIRE_GPU();
  kiln::GptShape shape;
  shape.n_layer = 1;
  shape.n_head = 2;
  shape.n_embd = 32;
  shape.context = 16;
  shape.vocab = 37;
  shape.padded_vocab = 64;
  shape.attention_block = 16;
  shape.score_head = true;
  kiln::Gpt cpu_model(shape), gpu_model(shape, kiln::Device::cuda);
  cpu_model.init_weights(7, 0.5f);
  gpu_model.parameter_buffer().copy_from(cpu_model.parameter_buffer());
  const int n = 24, c = 32;
  const std::vector<float> hidden_host = kiln::testing::random_normal(n * c, 3);
  std::vector<float> dvalues(n);
  for (int i = 0; i < n; ++i) dvalues[i] = i % 8 == 7 ? 1.0f : 0.1f * static_cast<float>(i % 3 - 1);
  kiln::Tensor hidden_cpu = kiln::Tensor::empty({n, c});
  std::copy(hidden_host.begin(), hidden_host.end(), hidden_cpu.f32());
  kiln::Tensor hidden_gpu = kiln::Tensor::empty({n, c}, kiln::DType::f32, kiln::Device::cuda);
  hidden_gpu.copy_from(hidden_cpu);
  kiln::ScalarHead cpu(cpu_model), gpu(gpu_model);
  const std::vector<float> want = cpu.forward(hidden_cpu), got = gpu.forward(hidden_gpu);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(got[i], want[i], 1e-5 + 1e-5 * std::abs(want[i])) << "row " << i;
  kiln::Tensor dh_cpu = kiln::Tensor::zeros({n, c});
  kiln::Tensor dh_gpu = kiln::Tensor::zeros({n, c}, kiln::DType::f32, kiln::Device::cuda);
  cpu.backward(hidden_cpu, dvalues, dh_cpu);
  gpu.backward(hidden_gpu, dvalues, dh_gpu);
  kiln::Tensor dh_back = kiln::Tensor::empty({n, c});
  dh_back.copy_from(dh_gpu);
  for (int i = 0; i < n * c; ++i) EXPECT_NEAR(dh_back.f32()[i], dh_cpu.f32()[i], 1e-5) << "dhidden " << i;
  const kiln::Parameter& w_cpu = cpu_model.params().get(kiln::Role::score_weight);
  kiln::Tensor grad_back = kiln::Tensor::empty({1, c});
  grad_back.copy_from(gpu_model.params().get(kiln::Role::score_weight).grad);
  for (int i = 0; i < c; ++i)
    EXPECT_NEAR(grad_back.f32()[i], w_cpu.grad.f32()[i], 1e-4 + 1e-4 * std::abs(w_cpu.grad.f32()[i])) << "grad " << i;
}
