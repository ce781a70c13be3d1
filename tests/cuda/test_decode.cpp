// Batched decoding on the GPU (core/model/decode.cpp) against the same decoder on the cpu: the
// same block code, with the CUDA kernels and device KV caches. A ragged batch of three prompts
// (dense and block-sparse layers, one layer each) gives logits within fp32 tolerance of the cpu's
// at every step, and the same greedy tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "core/model/decode.h"
#include "gpu_test.h"

namespace {

kiln::GptShape decode_shape() {
  kiln::ModelConfig m;
  m.n_layer = 2;
  m.n_head = 2;
  m.n_embd = 32;
  m.context = 32;
  m.attention_block = 16;
  m.attention = "dense,local";
  m.attention_window = 1;
  return kiln::GptShape::from_config(m, 37);
}

// The same weights on both devices.
void init_like(kiln::Gpt& cpu, kiln::Gpt& gpu) {
  cpu.init_weights(13, 0.3f);
  gpu.parameter_buffer().copy_from(cpu.parameter_buffer());
}

}  // namespace

TEST(CudaDecode, RaggedBatchMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  const kiln::GptShape shape = decode_shape();
  kiln::Gpt cpu(shape), gpu(shape, kiln::Device::cuda);
  init_like(cpu, gpu);
  kiln::Decoder on_cpu(cpu), on_gpu(gpu);
  const std::vector<int> lengths = {kiln::testing::kEmulated ? 18 : 32, 5, 17};  // past one 16-token block
  on_cpu.reset(3);
  on_gpu.reset(3);
  const int vp = shape.padded_vocab;
  for (int t = 0; t < lengths[0]; ++t) {
    std::vector<int> seqs;
    std::vector<std::int32_t> tokens;
    for (int s = 0; s < 3; ++s)
      if (t < lengths[s]) {
        seqs.push_back(s);
        tokens.push_back((t * 7 + s * 11) % 37);
      }
    const float* c = on_cpu.step(seqs, tokens);
    const std::vector<float> want(c, c + seqs.size() * vp);
    const float* got = on_gpu.step(seqs, tokens);
    for (std::size_t r = 0; r < seqs.size(); ++r)
      for (int v = 0; v < shape.vocab; ++v)
        ASSERT_NEAR(got[r * vp + v], want[r * vp + v], 1e-4 + 1e-4 * std::abs(want[r * vp + v]))
            << "sequence " << seqs[r] << " position " << t << " token " << v;
  }
}

TEST(CudaDecode, GreedyTokensMatchTheCpu) {
  KILN_REQUIRE_GPU();
  const kiln::GptShape shape = decode_shape();
  kiln::Gpt cpu(shape), gpu(shape, kiln::Device::cuda);
  init_like(cpu, gpu);
  kiln::SampleOptions greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = kiln::testing::kEmulated ? 8 : 40;  // 40: past the 32-token context
  greedy.stop_at_eot = false;
  const std::vector<std::vector<std::int32_t>> prompts = {{1, 2, 3}, {4}, {5, 6, 7, 8, 9}};
  EXPECT_EQ(kiln::Decoder(gpu).generate(prompts, greedy, 36), kiln::Decoder(cpu).generate(prompts, greedy, 36));
}

// Two models on one device share its one stream and the caching allocator: used in turn
// (forward, backward and decoding interleaved), each gives what it gives alone.
TEST(CudaModels, TwoModelsOnOneDeviceAreIndependent) {
  KILN_REQUIRE_GPU();
  kiln::GptShape a_shape = decode_shape(), b_shape = decode_shape();
  b_shape.n_embd = 16;
  b_shape.post_norm = true;
  kiln::Batch batch;
  batch.batch = 2;
  batch.seq_len = 16;
  for (int i = 0; i < 32; ++i) {
    batch.inputs.push_back((i * 5) % 37);
    batch.targets.push_back((i * 3 + 1) % 37);
  }
  auto grads = [&](kiln::Gpt& model) {
    model.zero_grad();
    const double loss = model.forward_backward(batch, 0.05f);
    std::vector<float> g(model.gradient_buffer().numel());
    kiln::device::copy_to_host(g.data(), model.gradient_buffer().f32(), g.size() * sizeof(float));
    return std::make_pair(loss, g);
  };
  kiln::Gpt a_alone(a_shape, kiln::Device::cuda), b_alone(b_shape, kiln::Device::cuda);
  a_alone.init_weights(1);
  b_alone.init_weights(2);
  const auto a_ref = grads(a_alone);
  const auto b_ref = grads(b_alone);
  kiln::Gpt a(a_shape, kiln::Device::cuda), b(b_shape, kiln::Device::cuda);
  a.init_weights(1);
  b.init_weights(2);
  kiln::SampleOptions greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = 4;
  const auto b_tokens = kiln::Decoder(b).generate({{1, 2}}, greedy, 36);
  EXPECT_EQ(grads(a), a_ref);
  const auto a_tokens = kiln::Decoder(a).generate({{1, 2}}, greedy, 36);
  EXPECT_EQ(grads(b), b_ref);
  EXPECT_EQ(kiln::Decoder(b_alone).generate({{1, 2}}, greedy, 36), b_tokens);
  EXPECT_EQ(kiln::Decoder(a_alone).generate({{1, 2}}, greedy, 36), a_tokens);
}
