// Parity with an independent implementation: kiln's GPT against a PyTorch GPT written from the
// math (tests/reference/gpt_torch.py). tests/reference/make_parity_fixture.py had kiln train a
// tiny pre-LN and a post-LN model for 20 steps, and wrote that kiln checkpoint's weights, one
// masked batch and the reference's logits, mean masked loss and every parameter gradient,
// computed in float64 (and in float32, under "f32.", which
// shows how far an ordinary fp32 implementation lands from float64 on this problem).
//
// Tolerance per tensor: |kiln - ref64| <= abs + rel * |ref64| elementwise, with
//   logits, loss:  abs 1e-5, rel 1e-4
//   gradients:     abs 1e-6, rel 1e-4 (gradients are O(1e-4..1e-1), so abs 1e-5 would hide
//                  a wrong small gradient)
// Measured on a Zen4 (AVX-512) build: kiln's largest error is 2.4e-6 on the logits and 2.4e-7 on
// any gradient, the same as torch's own float32 run (2.4e-6, 2.4e-7), so the bounds leave about 20x
// room for other CPUs, thread counts and BLAS kernels while still catching a changed LayerNorm
// eps (1e-5 -> 1e-6 fails on the logits and most gradients). KILN_PARITY_VERBOSE=1 prints
// the per-tensor numbers. The batch (T = 40) spans three 16-token attention blocks, the last
// partial. Padded vocabulary columns of the logits and rows of the wte gradient must be exactly
// zero.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/checkpoint/model_io.h"
#include "core/checkpoint/safetensors.h"
#include "core/model/gpt.h"

namespace {

struct Tolerance {
  double abs;
  double rel;
};
constexpr Tolerance kOutputTolerance{1e-5, 1e-4};
constexpr Tolerance kGradTolerance{1e-6, 1e-4};

struct ParityCase {
  std::string dir;
  kiln::GptShape shape;
  kiln::Batch batch;
};

ParityCase read_case(const std::string& norm) {
  ParityCase c;
  c.dir = std::string(KILN_SOURCE_DIR) + "/tests/data/parity/" + norm;
  std::ifstream in(c.dir + "/fixture.json");
  if (!in)
    throw std::runtime_error(c.dir + "/fixture.json is missing; run tests/reference/make_parity_fixture.py");
  const nlohmann::json j = nlohmann::json::parse(in);
  c.shape.n_layer = j.at("n_layer");
  c.shape.n_head = j.at("n_head");
  c.shape.n_embd = j.at("n_embd");
  c.shape.context = j.at("context");
  c.shape.vocab = j.at("vocab");
  c.shape.padded_vocab = (c.shape.vocab + 63) / 64 * 64;  // model.vocab_multiple 64
  c.shape.post_norm = j.at("norm") == "post";
  c.shape.attention_block = 16;
  c.batch.batch = j.at("batch");
  c.batch.seq_len = j.at("seq_len");
  c.batch.inputs = j.at("inputs").get<std::vector<std::int32_t>>();
  c.batch.targets = j.at("targets").get<std::vector<std::int32_t>>();
  for (int m : j.at("mask").get<std::vector<int>>()) c.batch.mask.push_back(static_cast<std::uint8_t>(m));
  return c;
}

// Compares kiln's `n` values (a row-strided matrix: `rows` rows of `cols` used columns out of
// `stride`) with the float64 reference; on failure names the tensor, the worst element and the
// max abs diff, beside the float32 reference's own max abs diff for scale.
void expect_close(const std::string& name, const float* kiln, std::int64_t rows, std::int64_t cols,
                  std::int64_t stride, const kiln::Tensor& ref64, const kiln::Tensor& ref32,
                  Tolerance tol, double* worst_ratio) {
  ASSERT_EQ(ref64.numel(), rows * cols) << name << ": reference has " << ref64.numel() << " values";
  const float* r = ref64.f32();
  const float* r32 = ref32.f32();
  double max_abs = 0.0, max_abs32 = 0.0, worst = 0.0;
  std::int64_t worst_i = 0, failures = 0;
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      const double k = kiln[i * stride + j], ref = r[i * cols + j];
      const double diff = std::abs(k - ref);
      const double ratio = diff / (tol.abs + tol.rel * std::abs(ref));
      max_abs = std::max(max_abs, diff);
      max_abs32 = std::max(max_abs32, std::abs(static_cast<double>(r32[i * cols + j]) - ref));
      failures += ratio > 1.0;
      if (ratio > worst) {
        worst = ratio;
        worst_i = i * cols + j;
      }
    }
  }
  *worst_ratio = std::max(*worst_ratio, worst);
  if (std::getenv("KILN_PARITY_VERBOSE") != nullptr)
    std::cout << "[ parity ] " << name << ": max abs diff kiln " << max_abs << ", torch float32 "
              << max_abs32 << "; worst |diff| / tolerance " << worst << "\n";
  EXPECT_EQ(failures, 0) << name << ": " << failures << " of " << rows * cols
                         << " values outside abs " << tol.abs << " + rel " << tol.rel
                         << "; max abs diff " << max_abs << " (torch float32: " << max_abs32
                         << "); worst at flat index " << worst_i << ": kiln "
                         << kiln[(worst_i / cols) * stride + worst_i % cols] << " vs "
                         << r[worst_i];
}

void check_parity(const std::string& norm) {
  const ParityCase c = read_case(norm);
  const kiln::SafetensorsFile expected(c.dir + "/expected.safetensors");
  kiln::Gpt model(c.shape);
  kiln::load_model(model, c.dir + "/model.safetensors");
  const std::int64_t v = c.shape.vocab, vp = c.shape.padded_vocab, c_dim = c.shape.n_embd;
  const std::int64_t n = static_cast<std::int64_t>(c.batch.batch) * c.batch.seq_len;
  const double tokens = static_cast<double>(c.batch.loss_tokens());
  double worst = 0.0;

  // Forward: logits (first `vocab` of `padded_vocab` columns) and the mean masked loss.
  const double loss = model.forward(c.batch) / tokens;
  const float* logits = model.logits().f32();
  expect_close("logits", logits, n, v, vp, expected.load("logits"), expected.load("f32.logits"),
               kOutputTolerance, &worst);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = v; j < vp; ++j)
      ASSERT_EQ(logits[i * vp + j], 0.0f) << "padded logit column " << j << " of row " << i;
  const float loss_f = static_cast<float>(loss);
  expect_close("loss", &loss_f, 1, 1, 1, expected.load("loss"), expected.load("f32.loss"),
               kOutputTolerance, &worst);

  // Backward: the gradient of the mean masked loss with respect to every parameter.
  model.zero_grad();
  const double sum = model.forward_backward(c.batch, static_cast<float>(1.0 / tokens));
  EXPECT_NEAR(sum / tokens, loss, 1e-6) << "forward_backward and forward disagree on the loss";
  int compared = 0;
  for (const kiln::Parameter& p : model.parameters()) {
    const std::string key = "grad." + p.name;
    ASSERT_TRUE(expected.contains(key)) << "expected.safetensors has no " << key;
    const kiln::Tensor ref = expected.load(key);
    const std::int64_t rows = ref.shape()[0];
    const std::int64_t cols = ref.numel() / rows;
    expect_close(key, p.grad.f32(), rows, cols, cols, ref, expected.load("f32." + key),
                 kGradTolerance, &worst);
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(model.parameters().size()));
  const float* wte_grad = model.parameter("transformer.wte.weight").grad.f32();
  for (std::int64_t i = v * c_dim; i < vp * c_dim; ++i)
    ASSERT_EQ(wte_grad[i], 0.0f) << "padded wte row " << i / c_dim << " received gradient";
  std::cout << "[ parity ] " << norm << "-LN: " << compared + 2
            << " tensors compared; worst |diff| / tolerance = " << worst << "\n";
}

}  // namespace

TEST(Parity, PreLnMatchesPyTorch) { check_parity("pre"); }

TEST(Parity, PostLnMatchesPyTorch) { check_parity("post"); }
