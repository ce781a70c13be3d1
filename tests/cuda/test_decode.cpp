// Batched decoding on the GPU (core/model/decode.cpp) against the same decoder on the cpu: the
// same block code, with the CUDA kernels and device KV caches. A ragged batch of three prompts
// (dense and block-sparse layers, one layer each) gives logits within fp32 tolerance of the cpu's
// at every step, and the same greedy tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
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

namespace {
void check_ragged_batch(const kiln::GptShape& shape) {
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
}  // namespace

TEST(CudaDecode, RaggedBatchMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  check_ragged_batch(decode_shape());
}

// The LLaMA family: rotary embeddings at each sequence's own position, RMSNorm, SwiGLU, one
// key/value head for both query heads.
TEST(CudaDecode, LlamaRaggedBatchMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  kiln::GptShape shape = decode_shape();
  shape.rms_norm = shape.rope = shape.swiglu = true;
  shape.bias = shape.tied_head = false;
  shape.llama_names = true;
  shape.mlp_width = 48;
  shape.n_kv_head = 1;  // multi-query
  check_ragged_batch(shape);
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

// bf16 activations (model.dtype=bf16): the decoder runs the same bf16 block over its rows (the
// attention core widens q, k and v to fp32 and rounds its output back). At every position of
// every sequence of a ragged batch its logits are as close to the fp32 model's (same weights) as
// the bf16 training forward's over the whole sequence are: the two bf16 paths differ only in
// the attention kernels and in where bf16 rounding falls, not in what they compute.
TEST(CudaDecode, Bf16ActivationsAreAsCloseToFp32AsTheBf16Forward) {
  KILN_REQUIRE_GPU();
  kiln::ModelConfig m;
  m.n_layer = 2;
  m.n_head = 2;
  m.n_embd = 64;  // head size 32: the bf16 attention kernels' smallest
  m.context = 32;
  m.attention_block = 16;
  m.dtype = "bf16";
  const kiln::GptShape shape = kiln::GptShape::from_config(m, 37);
  m.dtype = "f32";
  const kiln::GptShape shape32 = kiln::GptShape::from_config(m, 37);
  kiln::Gpt model(shape, kiln::Device::cuda), model32(shape32, kiln::Device::cuda);
  model.init_weights(13, 0.3f);
  model32.parameter_buffer().copy_from(model.parameter_buffer());
  const int vp = shape.padded_vocab;
  const std::vector<std::vector<std::int32_t>> seqs = {{3, 9, 27, 4, 12, 1, 30, 5, 8, 2, 19, 33, 7, 16, 21, 6, 14, 28},
                                                       {5, 1, 36, 2},
                                                       {11, 0, 24, 9, 13, 35, 4, 10, 22}};
  // Each sequence's logits from the training forward, on the host.
  auto forward = [&](kiln::Gpt& net, const std::vector<std::int32_t>& s) {
    kiln::Batch b;
    b.batch = 1;
    b.seq_len = static_cast<int>(s.size());
    b.inputs = s;
    b.targets = s;
    net.forward(b);
    const kiln::Tensor logits = net.logits().to(kiln::Device::cpu);
    std::vector<float> row(logits.numel());
    if (logits.dtype() == kiln::DType::f32) return std::vector<float>(logits.f32(), logits.f32() + logits.numel());
    const auto* raw = static_cast<const kiln::bf16*>(logits.raw());
    for (std::size_t i = 0; i < row.size(); ++i) row[i] = kiln::to_float(raw[i]);
    return row;
  };
  double forward_err = 0.0, decode_err = 0.0;
  std::vector<std::vector<float>> exact;
  for (const auto& s : seqs) {
    exact.push_back(forward(model32, s));
    const std::vector<float> bf = forward(model, s);
    for (std::size_t t = 0; t < s.size(); ++t)
      for (int v = 0; v < shape.vocab; ++v)
        forward_err = std::max(forward_err, static_cast<double>(std::abs(bf[t * vp + v] - exact.back()[t * vp + v])));
  }
  kiln::Decoder decoder(model);
  decoder.reset(3);
  for (std::size_t t = 0; t < seqs[0].size(); ++t) {
    std::vector<int> rows;
    std::vector<std::int32_t> tokens;
    for (int s = 0; s < 3; ++s)
      if (t < seqs[s].size()) {
        rows.push_back(s);
        tokens.push_back(seqs[s][t]);
      }
    const float* got = decoder.step(rows, tokens);
    for (std::size_t r = 0; r < rows.size(); ++r)
      for (int v = 0; v < shape.vocab; ++v)
        decode_err = std::max(decode_err, static_cast<double>(std::abs(got[r * vp + v] - exact[rows[r]][t * vp + v])));
  }
  RecordProperty("forward_max_abs_err", std::to_string(forward_err));
  RecordProperty("decode_max_abs_err", std::to_string(decode_err));
  std::printf("bf16 logits against fp32: forward %g, decoding %g\n", forward_err, decode_err);
  EXPECT_GT(forward_err, 0.0);  // bf16 is in use
  EXPECT_LE(decode_err, 1.5 * forward_err);
}

// Scoring on bf16 activations keeps no layer's activations either (every block rewrites one
// layer's buffers) and gives the training forward's log-probabilities bit for bit.
TEST(CudaModels, Bf16TokenLogprobsAreTheForwardsLosses) {
  KILN_REQUIRE_GPU();
  kiln::ModelConfig m;
  m.n_layer = 2;
  m.n_head = 2;
  m.n_embd = 64;
  m.context = 32;
  m.attention_block = 16;
  m.dtype = "bf16";
  kiln::Gpt model(kiln::GptShape::from_config(m, 37), kiln::Device::cuda);
  model.init_weights(3, 0.3f);
  kiln::Batch batch;
  batch.batch = 2;
  batch.seq_len = 20;
  for (int i = 0; i < 40; ++i) {
    batch.inputs.push_back((i * 5 + 1) % 37);
    batch.targets.push_back((i * 11 + 2) % 37);
    batch.mask.push_back(i % 4 != 0);
  }
  const std::vector<float> logprobs = model.token_logprobs(batch);
  const std::int64_t scoring_bytes = model.activation_bytes();
  model.forward(batch);
  EXPECT_LT(scoring_bytes, model.activation_bytes());
  const kiln::Tensor losses = model.losses().to(kiln::Device::cpu);
  for (int i = 0; i < 40; ++i) EXPECT_EQ(logprobs[i], batch.mask[i] ? -losses.f32()[i] : 0.0f) << "token " << i;
}
