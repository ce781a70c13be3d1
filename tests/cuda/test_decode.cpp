// Batched decoding on the GPU (core/model/decode.cpp) against the same decoder on the cpu: the
// same block code, with the CUDA kernels and device KV caches. A ragged batch of three prompts
// (dense and block-sparse layers, one layer each) gives logits within fp32 tolerance of the cpu's
// at every step, and the same greedy tokens.
#include <gtest/gtest.h>

#include <cmath>
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
