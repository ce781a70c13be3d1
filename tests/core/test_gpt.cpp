// Whole-model checks: finite-difference gradients through every layer (pre- and post-LN, with a
// loss mask and packed positions), thread-count independent initialisation, parameter naming.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/checkpoint/model_io.h"
#include "core/model/decode.h"
#include "core/model/gpt.h"
#include "core/model/heads.h"
#include "core/rng.h"

namespace {

kiln::GptShape tiny_shape(bool post_norm, int mlp_width = 0) {
  kiln::GptShape s;
  s.mlp_width = mlp_width;
  s.n_layer = 2;
  s.n_head = 2;
  s.n_embd = 16;
  s.context = 24;
  s.vocab = 37;
  s.padded_vocab = 64;
  s.post_norm = post_norm;
  s.attention_block = 16;
  return s;
}

// The LLaMA family at the same size: RMSNorm, rotary embeddings, SwiGLU (width 24), no biases,
// an untied head, LLaMA's parameter names.
kiln::GptShape tiny_llama(bool post_norm = false) {
  kiln::GptShape s = tiny_shape(post_norm, 24);
  s.rms_norm = true;
  s.norm_eps = 1e-6f;
  s.rope = true;
  s.swiglu = true;
  s.bias = false;
  s.tied_head = false;
  s.llama_names = true;
  return s;
}

// Grouped-query attention: 4 query heads sharing 2 key/value heads (head size 4).
kiln::GptShape tiny_gqa() {
  kiln::GptShape s = tiny_llama();
  s.n_head = 4;
  s.n_kv_head = 2;
  return s;
}

kiln::Batch tiny_batch(int b, int t, int vocab, bool with_mask) {
  kiln::Batch batch;
  batch.batch = b;
  batch.seq_len = t;
  kiln::Rng rng(7, 0);
  for (int i = 0; i < b * t; ++i) {
    batch.inputs.push_back(static_cast<std::int32_t>(rng.u64(2 * i) % vocab));
    batch.targets.push_back(static_cast<std::int32_t>(rng.u64(2 * i + 1) % vocab));
    if (with_mask) batch.mask.push_back(i % 3 != 0);
    // Two packed documents per row: positions restart at t/2.
    batch.positions.push_back(static_cast<std::int32_t>((i % t) % (t / 2 + 1)));
  }
  return batch;
}

// weighted: per-token float weights (negative and zero among them) on top of the mask, and the
// LM head at `temperature`; the loss is then sum_i w_i * -log softmax(logits_i / T)[target_i].
void check_shape_gradients(const kiln::GptShape& shape, bool weighted = false, float temperature = 1.0f,
                           int seq = 20) {
  kiln::Gpt model(shape);
  model.init_weights(11, 0.3f);  // larger weights than GPT-2's so every path carries signal
  kiln::Batch batch = tiny_batch(2, seq, 37, true);
  if (weighted)
    for (int i = 0; i < 2 * seq; ++i) batch.weights.push_back(i % 7 == 0 ? 0.0f : (i % 2 ? 1.5f : -0.5f) + 0.05f * i);
  const double tokens = static_cast<double>(batch.loss_tokens());
  model.zero_grad();
  model.forward_backward(batch, static_cast<float>(1.0 / tokens), temperature);
  auto loss = [&] {
    if (temperature == 1.0f) return model.forward(batch) / tokens;
    const std::vector<float> logprobs = model.token_logprobs(batch, temperature);
    double sum = 0.0;
    for (int i = 0; i < 2 * seq; ++i) sum -= logprobs[i] * (weighted ? batch.weights[i] : 1.0f);
    return sum / tokens;
  };
  kiln::Rng pick(3, 0);
  int checked = 0, failures = 0;
  for (auto& p : model.parameters()) {
    std::int64_t n = p.value.numel();
    if (p.role == kiln::Role::token_embedding || p.role == kiln::Role::lm_head) n = 37 * 16;  // padded rows: no gradient
    for (int k = 0; k < 4; ++k) {
      const std::int64_t i = static_cast<std::int64_t>(pick.u64(checked * 7 + k) % n);
      float* w = p.value.f32() + i;
      const float saved = *w, eps = 1e-2f;
      *w = saved + eps;
      const double up = loss();
      *w = saved - eps;
      const double down = loss();
      *w = saved;
      const double numeric = (up - down) / (2 * eps);
      const double analytic = p.grad.f32()[i];
      if (std::abs(numeric - analytic) > 1e-3 + 3e-2 * std::abs(numeric)) {
        ++failures;
        ADD_FAILURE() << p.name << "[" << i << "]: analytic " << analytic << " numeric " << numeric;
      }
      ++checked;
    }
  }
  EXPECT_EQ(failures, 0);
  // Padded vocabulary rows never receive gradient.
  const auto& wte = model.params().get(kiln::Role::token_embedding);
  for (std::int64_t i = 37 * 16; i < wte.grad.numel(); ++i) ASSERT_EQ(wte.grad.f32()[i], 0.0f);
}

void check_model_gradients(bool post_norm, int mlp_width = 0, bool weighted = false, float temperature = 1.0f,
                           bool tied = true) {
  kiln::GptShape shape = tiny_shape(post_norm, mlp_width);
  shape.tied_head = tied;
  check_shape_gradients(shape, weighted, temperature);
}

}  // namespace

TEST(Gpt, PreLnGradientsMatchFiniteDifferences) { check_model_gradients(false); }
TEST(Gpt, MlpWidthOtherThanFourTimesTheWidth) { check_model_gradients(false, 24); }
TEST(Gpt, PerTokenWeightsMatchFiniteDifferences) { check_model_gradients(false, 0, true); }
TEST(Gpt, UntiedHeadMatchesFiniteDifferences) { check_model_gradients(false, 0, false, 1.0f, false); }
TEST(Gpt, LlamaGradientsMatchFiniteDifferences) { check_shape_gradients(tiny_llama()); }
TEST(Gpt, PostNormLlamaPartsMatchFiniteDifferences) { check_shape_gradients(tiny_llama(true), true); }
// Rotary embeddings with a block-sparse layer (local attention, one 16-token block back) and
// packed rows whose positions restart at each document (tiny_batch's), grouped heads included.
TEST(Gpt, LlamaWithASparseLayerAndPackedPositionsMatchesFiniteDifferences) {
  kiln::GptShape s = tiny_gqa();
  kiln::AttentionPattern dense, local;
  dense.block = local.block = 16;
  local.kind = "local";
  local.window = 1;
  s.attention = {local, dense};
  s.context = 32;
  check_shape_gradients(s, false, 1.0f, 32);
}

TEST(Gpt, GroupedKvHeadsMatchFiniteDifferences) {
  check_shape_gradients(tiny_gqa());
  EXPECT_EQ(kiln::Gpt(tiny_gqa()).parameter("model.layers.0.self_attn.qkv_proj.weight").full_shape,
            (kiln::Shape{16, 16 + 2 * 2 * 4}));
}

// The LLaMA table: Hugging Face's names, no biases and no learned positions, q|k|v and gate|up
// fused, LLaMA's MLP width rule (8/3 of 4C, rounded up to a multiple).
TEST(Gpt, LlamaParameterTable) {
  kiln::GptShape s = tiny_llama();
  kiln::Gpt model(s);
  std::vector<std::string> names;
  for (const kiln::Parameter& p : model.parameters()) names.push_back(p.name);
  const std::vector<std::string> want = {
      "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.qkv_proj.weight",
      "model.layers.0.self_attn.o_proj.weight", "model.layers.0.post_attention_layernorm.weight",
      "model.layers.0.mlp.gate_up_proj.weight", "model.layers.0.mlp.down_proj.weight",
      "model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.qkv_proj.weight",
      "model.layers.1.self_attn.o_proj.weight", "model.layers.1.post_attention_layernorm.weight",
      "model.layers.1.mlp.gate_up_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight",
      "lm_head.weight"};
  EXPECT_EQ(names, want);
  EXPECT_EQ(model.parameter("model.layers.0.mlp.gate_up_proj.weight").full_shape, (kiln::Shape{16, 48}));
  EXPECT_EQ(model.params().block(1).end - model.params().block(1).first, 6u);
  s.mlp_width = 0;
  s.mlp_multiple_of = 32;
  EXPECT_EQ(s.ffn(), 64);  // 8/3 * 16 = 42.7, rounded up to 64
  s.n_embd = 4096;
  s.mlp_multiple_of = 256;
  EXPECT_EQ(s.ffn(), 11008);  // LLaMA-7B's
}

// An untied head is its own parameter in the heads group, saved without padded vocabulary rows
// under Hugging Face's name, and counted once in the model FLOPs (as the tied head is).
TEST(Gpt, UntiedHeadIsATableParameter) {
  kiln::GptShape tied = tiny_shape(false), untied = tied;
  untied.tied_head = false;
  kiln::Gpt a(untied), b(untied);
  const kiln::Parameter& head = a.parameter("lm_head.weight");
  EXPECT_EQ(&a.lm_head(), &head);
  EXPECT_EQ(a.params().heads().first, static_cast<std::size_t>(&head - a.parameters().data()));
  EXPECT_EQ(untied.num_params() - tied.num_params(), 64 * 16);
  EXPECT_EQ(untied.flops_per_token(16), tied.flops_per_token(16));
  a.init_weights(5, 0.3f);
  for (std::int64_t i = 37 * 16; i < head.value.numel(); ++i) ASSERT_EQ(head.value.f32()[i], 0.0f);
  const std::string path = ::testing::TempDir() + "kiln_untied.safetensors";
  kiln::save_model(a, path);
  kiln::load_model(b, path);
  EXPECT_EQ(std::memcmp(a.parameter_buffer().f32(), b.parameter_buffer().f32(), a.parameter_buffer().nbytes()), 0);
  std::remove(path.c_str());
}
TEST(Gpt, WeightsAtATemperatureMatchFiniteDifferences) { check_model_gradients(true, 0, true, 0.6f); }

// Weights of 1 and 0 are the mask: the same losses and gradients, bit for bit.
TEST(Gpt, ZeroOneWeightsAreTheMask) {
  auto run = [](const kiln::Batch& batch) {
    kiln::Gpt model(tiny_shape(false));
    model.init_weights(11, 0.3f);
    model.zero_grad();
    const double loss = model.forward_backward(batch, 0.05f);
    const kiln::Tensor& g = model.gradient_buffer();
    return std::make_pair(loss, std::vector<float>(g.f32(), g.f32() + g.numel()));
  };
  const kiln::Batch masked = tiny_batch(2, 20, 37, true);
  kiln::Batch weighted = masked;
  weighted.mask.clear();
  for (const std::uint8_t m : masked.mask) weighted.weights.push_back(m ? 1.0f : 0.0f);
  const auto a = run(masked), b = run(weighted);
  EXPECT_EQ(a.first, b.first);
  EXPECT_EQ(a.second, b.second);
}

TEST(Gpt, BatchWeightsAreChecked) {
  kiln::Gpt model(tiny_shape(false));
  kiln::Batch batch = tiny_batch(1, 8, 37, false);
  batch.weights.assign(7, 1.0f);
  EXPECT_THROW(model.forward(batch), kiln::Error);
  batch.weights.assign(8, 1.0f);
  batch.weights[3] = NAN;
  EXPECT_THROW(model.forward(batch), kiln::Error);
}

// The parameter table: every parameter once, found by role; the groups (embeddings, each block,
// the final norm) cover the table in order; the buffer holds num_params() values.
TEST(Gpt, ParameterTableGroupsCoverEveryParameterInOrder) {
  for (bool post : {false, true}) {
    const kiln::GptShape shape = tiny_shape(post, 40);
    kiln::Gpt model(shape);
    const kiln::ParamTable& t = model.params();
    std::size_t next = 0;
    auto take = [&](kiln::ParamRange r) {
      EXPECT_EQ(r.first, next);
      next = r.end;
    };
    take(t.embeddings());
    EXPECT_EQ(t.embeddings().end - t.embeddings().first, 2u);
    for (int l = 0; l < shape.n_layer; ++l) {
      take(t.block(l));
      EXPECT_EQ(t.block(l).end - t.block(l).first, static_cast<std::size_t>(kiln::kBlockRoles));
      for (std::size_t i = t.block(l).first; i < t.block(l).end; ++i) EXPECT_EQ(t.all()[i].layer, l);
    }
    take(t.final_norm());
    take(t.heads());
    EXPECT_EQ(next, t.all().size());
    EXPECT_EQ(t.heads().end - t.heads().first, 0u);
    EXPECT_EQ(t.final_norm().end - t.final_norm().first, post ? 0u : 2u);
    EXPECT_EQ(t.get(kiln::Role::mlp_in_weight, 1).name, "transformer.h.1.mlp.c_fc.weight");
    EXPECT_EQ(t.get(kiln::Role::mlp_in_weight, 1).value.shape(), (kiln::Shape{16, 40}));
    // num_params (of the whole model, padded vocabulary rows included) is the table's size.
    EXPECT_EQ(model.parameter_buffer().numel(), shape.num_params());
  }
}
TEST(Gpt, PostLnGradientsMatchFiniteDifferences) { check_model_gradients(true); }

// model.recompute: the same losses and gradients, bit for bit, from less activation memory.
TEST(Gpt, RecomputationGivesIdenticalGradientsWithLessMemory) {
  for (bool post_norm : {false, true}) {
    kiln::GptShape plain = tiny_shape(post_norm), again = tiny_shape(post_norm);
    plain.n_layer = again.n_layer = 4;
    again.recompute = true;
    kiln::Gpt a(plain), b(again);
    a.init_weights(3, 0.3f);
    b.init_weights(3, 0.3f);
    const kiln::Batch batch = tiny_batch(2, 24, 37, true);
    for (int step = 0; step < 2; ++step) {  // twice: the second pass reuses every buffer
      EXPECT_EQ(a.forward_backward(batch, 0.01f), b.forward_backward(batch, 0.01f)) << post_norm;
    }
    const auto& ga = a.gradient_buffer();
    auto& gb = b.gradient_buffer();
    EXPECT_EQ(0, std::memcmp(ga.raw(), gb.raw(), ga.nbytes())) << "post_norm=" << post_norm;
    EXPECT_LT(b.activation_bytes(), a.activation_bytes());
  }
}

// Micro-batches queued and collected once give the losses and gradients of one call per batch,
// in order; a second collection finds nothing queued.
TEST(Gpt, QueuedMicroBatchesMatchOneCallPerBatch) {
  kiln::Gpt a(tiny_shape(false)), b(tiny_shape(false));
  a.init_weights(5, 0.3f);
  b.init_weights(5, 0.3f);
  const kiln::Batch first = tiny_batch(2, 20, 37, true), second = tiny_batch(3, 24, 37, false);
  double one_by_one = 0.0;
  one_by_one += a.forward_backward(first, 0.01f);
  one_by_one += a.forward_backward(second, 0.01f);
  b.queue_forward_backward(first, 0.01f);
  b.queue_forward_backward(second, 0.01f);
  EXPECT_EQ(one_by_one, b.take_loss_sum());
  EXPECT_EQ(0.0, b.take_loss_sum());
  EXPECT_GT(one_by_one, 0.0);
  EXPECT_EQ(0, std::memcmp(a.gradient_buffer().raw(), b.gradient_buffer().raw(), a.gradient_buffer().nbytes()));
}

// A scalar head on the trunk, as a reward model (the last token of each row weighs most) with a
// value at every token: every trunk and head parameter's gradient against finite differences.
void check_scalar_head(bool post_norm) {
  kiln::GptShape shape = tiny_shape(post_norm);
  shape.score_head = true;
  kiln::Gpt model(shape);
  model.init_weights(17, 0.3f);
  kiln::ScalarHead head(model);
  const kiln::Batch batch = tiny_batch(2, 20, 37, false);
  std::vector<float> coeff(40);
  for (int i = 0; i < 40; ++i) coeff[i] = i % 20 == 19 ? 1.0f : 0.05f * static_cast<float>(i % 7 - 3);
  auto loss = [&] {
    const std::vector<float> v = head.forward(model.trunk_forward(batch));
    double sum = 0.0;
    for (int i = 0; i < 40; ++i) sum += static_cast<double>(coeff[i]) * v[i];
    return sum;
  };
  std::vector<std::pair<std::size_t, std::size_t>> ready;
  model.set_gradient_ready_hook([&](std::size_t first, std::size_t end) { ready.emplace_back(first, end); });
  model.zero_grad();
  const kiln::Tensor& hidden = model.trunk_forward(batch);
  head.forward(hidden);
  kiln::Tensor dhidden = kiln::Tensor::zeros(hidden.shape());
  head.backward(hidden, coeff, dhidden);
  model.trunk_backward(dhidden);
  model.set_gradient_ready_hook({});
  // Every parameter, the head's included, is reported ready exactly once.
  std::vector<int> reported(model.parameters().size(), 0);
  for (auto [first, end] : ready)
    for (std::size_t i = first; i < end; ++i) ++reported[i];
  EXPECT_EQ(reported, std::vector<int>(model.parameters().size(), 1));
  EXPECT_EQ(model.parameters().back().name, "score.weight");
  kiln::Rng pick(4, 0);
  int checked = 0, failures = 0;
  for (auto& p : model.parameters()) {
    const std::int64_t n = p.role == kiln::Role::token_embedding ? 37 * 16 : p.value.numel();
    for (int k = 0; k < 3; ++k) {
      const auto i = static_cast<std::int64_t>(pick.u64(checked * 5 + k) % n);
      float* w = p.value.f32() + i;
      const float saved = *w, eps = 1e-2f;
      *w = saved + eps;
      const double up = loss();
      *w = saved - eps;
      const double down = loss();
      *w = saved;
      const double numeric = (up - down) / (2 * eps), analytic = p.grad.f32()[i];
      if (std::abs(numeric - analytic) > 1e-3 + 3e-2 * std::abs(numeric)) {
        ++failures;
        ADD_FAILURE() << p.name << "[" << i << "]: analytic " << analytic << " numeric " << numeric;
      }
      ++checked;
    }
  }
  EXPECT_EQ(failures, 0);
}

// The scalar head is a parameter of the table: it is saved and loaded with the model under
// Hugging Face's name and shape (score.weight, (1, C)).
TEST(Gpt, ScalarHeadIsSavedAndLoadedWithTheModel) {
  kiln::GptShape shape = tiny_shape(false);
  shape.score_head = true;
  kiln::Gpt a(shape), b(shape);
  a.init_weights(23, 0.3f);
  const std::string path = ::testing::TempDir() + "kiln_score_head.safetensors";
  kiln::save_model(a, path);
  kiln::load_model(b, path);
  EXPECT_EQ(std::memcmp(a.parameter_buffer().f32(), b.parameter_buffer().f32(), a.parameter_buffer().nbytes()), 0);
  EXPECT_EQ(b.parameter("score.weight").full_shape, (kiln::Shape{1, 16}));
  std::remove(path.c_str());
}

TEST(Gpt, ScalarHeadOnThePreLnTrunkMatchesFiniteDifferences) { check_scalar_head(false); }
TEST(Gpt, ScalarHeadOnThePostLnTrunkMatchesFiniteDifferences) { check_scalar_head(true); }

// The LM head's per-token log-probabilities are log softmax of the logits at the targets (over
// the real vocabulary), and 0 where the mask is 0. They keep no layer's activations (less
// memory than a training forward) and are bit for bit what the training forward computes.
TEST(Gpt, TokenLogprobsAreLogSoftmaxAtTheTargets) {
  for (bool post : {false, true}) {
    kiln::Gpt model(tiny_shape(post));
    model.init_weights(19, 0.3f);
    const kiln::Batch batch = tiny_batch(2, 20, 37, true);
    const std::vector<float> logprobs = model.token_logprobs(batch);
    const std::int64_t forward_only_bytes = model.activation_bytes();
    model.forward(batch);
    EXPECT_LT(forward_only_bytes, model.activation_bytes());
    const float* logits = model.logits().f32();
    for (int i = 0; i < 40; ++i) {
      if (!batch.mask[i]) {
        EXPECT_EQ(logprobs[i], 0.0f);
        continue;
      }
      EXPECT_EQ(logprobs[i], -model.losses().f32()[i]) << "token " << i;
      const float* row = logits + i * 64;
      const double max = *std::max_element(row, row + 37);
      double sum = 0.0;
      for (int v = 0; v < 37; ++v) sum += std::exp(row[v] - max);
      EXPECT_NEAR(logprobs[i], row[batch.targets[i]] - max - std::log(sum), 1e-5) << "token " << i;
    }
  }
}

// At a temperature: log softmax(logits / T) at the targets.
TEST(Gpt, TokenLogprobsAtATemperature) {
  kiln::Gpt model(tiny_shape(false));
  model.init_weights(19, 0.3f);
  const kiln::Batch batch = tiny_batch(2, 20, 37, true);
  const float t = 0.6f;
  const std::vector<float> logprobs = model.token_logprobs(batch, t);
  model.forward(batch);
  const float* logits = model.logits().f32();
  for (int i = 0; i < 40; ++i) {
    if (!batch.mask[i]) continue;
    const float* row = logits + i * 64;
    const double max = *std::max_element(row, row + 37) / t;
    double sum = 0.0;
    for (int v = 0; v < 37; ++v) sum += std::exp(row[v] / t - max);
    EXPECT_NEAR(logprobs[i], row[batch.targets[i]] / t - max - std::log(sum), 1e-5) << "token " << i;
  }
  EXPECT_THROW(model.token_logprobs(batch, 0.0f), kiln::Error);
}

// Nothing global ties a process to one model: two models of different shapes, used in turn
// (activations resized, bf16 primitives cached per shape), give what each gives alone.
TEST(Gpt, TwoModelsInOneProcessAreIndependent) {
  auto run = [](kiln::Gpt& model, const kiln::Batch& batch) {
    model.zero_grad();
    const double loss = model.forward_backward(batch, 0.01f);
    return std::make_pair(loss, std::vector<float>(model.gradient_buffer().f32(),
                                                   model.gradient_buffer().f32() + model.gradient_buffer().numel()));
  };
  kiln::GptShape a_shape = tiny_shape(false, 24), b_shape = tiny_shape(true);
  b_shape.n_embd = 32;
  b_shape.bf16_matmul = true;
  const kiln::Batch a_batch = tiny_batch(2, 20, 37, true), b_batch = tiny_batch(3, 12, 37, false);
  kiln::Gpt a_alone(a_shape), b_alone(b_shape);
  a_alone.init_weights(5);
  b_alone.init_weights(6);
  const auto a_ref = run(a_alone, a_batch);
  const auto b_ref = run(b_alone, b_batch);
  kiln::Gpt a(a_shape), b(b_shape);
  a.init_weights(5);
  b.init_weights(6);
  const auto b_first = run(b, b_batch);
  const auto a_then = run(a, a_batch);
  const auto b_again = run(b, b_batch);
  EXPECT_EQ(a_then, a_ref);
  EXPECT_EQ(b_first, b_ref);
  EXPECT_EQ(b_again, b_ref);
}

TEST(Gpt, InitialisationIsIndependentOfThreadCount) {
  kiln::Gpt a(tiny_shape(false)), b(tiny_shape(false));
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  a.init_weights(5);
  omp_set_num_threads(2);
  b.init_weights(5);
  omp_set_num_threads(threads);
  const auto& pa = a.parameter_buffer();
  auto& pb = b.parameter_buffer();
  ASSERT_EQ(0, std::memcmp(pa.raw(), pb.raw(), pa.nbytes()));
}

TEST(Gpt, InitialisationFollowsGpt2) {
  kiln::GptShape shape = tiny_shape(false);
  shape.n_embd = 64;
  shape.n_head = 4;
  kiln::Gpt model(shape);
  model.init_weights(1);
  auto stddev = [](const kiln::Tensor& t) {
    double s = 0;
    for (std::int64_t i = 0; i < t.numel(); ++i) s += t.f32()[i] * t.f32()[i];
    return std::sqrt(s / t.numel());
  };
  EXPECT_NEAR(stddev(model.parameter("transformer.h.0.mlp.c_fc.weight").value), 0.02, 0.001);
  EXPECT_NEAR(stddev(model.parameter("transformer.h.0.mlp.c_proj.weight").value), 0.02 / 2.0, 0.001);
  EXPECT_EQ(model.parameter("transformer.h.1.ln_2.weight").value.f32()[3], 1.0f);
  EXPECT_EQ(model.parameter("transformer.h.1.attn.c_attn.bias").value.f32()[3], 0.0f);
  EXPECT_EQ(model.parameter("transformer.h.0.attn.c_attn.weight").value.shape(), (kiln::Shape{64, 192}));
  EXPECT_TRUE(model.parameter("transformer.h.0.attn.c_attn.weight").decay);
  EXPECT_FALSE(model.parameter("transformer.h.0.attn.c_attn.bias").decay);
  EXPECT_FALSE(model.parameter("transformer.wte.weight").decay);
  EXPECT_EQ(model.parameter("transformer.wte.weight").value.f32()[64 * 40], 0.0f);  // padded row
}

TEST(Gpt, RejectsTokensOutsideTheVocabulary) {
  kiln::Gpt model(tiny_shape(false));
  model.init_weights(1);
  kiln::Batch batch = tiny_batch(1, 8, 37, false);
  batch.inputs[3] = 40;
  try {
    model.forward(batch);
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 40"), std::string::npos) << e.what();
  }
}

// The batched KV-cached decoder must produce, position by position, the logits of a full forward
// pass, for every sequence of a ragged batch (three prompts of 20, 13 and 7 tokens fed in the same
// steps, the shorter ones leaving the batch when done).
void check_decoder_matches_forward(bool post_norm, int mlp_width = 0, bool llama = false, bool gqa = false) {
  kiln::Gpt model(gqa ? tiny_gqa() : llama ? tiny_llama(post_norm) : tiny_shape(post_norm, mlp_width));
  model.init_weights(21, 0.3f);
  const std::vector<int> lengths = {20, 13, 7};
  std::vector<kiln::Batch> alone;
  std::vector<std::vector<float>> full;
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    kiln::Batch b = tiny_batch(1, 20, 37, false);
    b.positions.clear();
    for (int i = 0; i < 20; ++i) b.inputs[i] = (b.inputs[i] + static_cast<int>(s) * 5) % 37;
    b.seq_len = lengths[s];
    b.inputs.resize(lengths[s]);
    b.targets.resize(lengths[s]);
    model.forward(b);
    full.emplace_back(model.logits().f32(), model.logits().f32() + model.logits().numel());
    alone.push_back(b);
  }
  kiln::Decoder decoder(model);
  decoder.reset(3);
  for (int t = 0; t < 20; ++t) {
    std::vector<int> seqs;
    std::vector<std::int32_t> tokens;
    for (int s = 0; s < 3; ++s)
      if (t < lengths[s]) {
        seqs.push_back(s);
        tokens.push_back(alone[s].inputs[t]);
      }
    const float* logits = decoder.step(seqs, tokens);
    for (std::size_t r = 0; r < seqs.size(); ++r)
      for (int v = 0; v < 37; ++v) {
        const float want = full[seqs[r]][t * 64 + v];
        ASSERT_NEAR(logits[r * 64 + v], want, 1e-4 + 1e-4 * std::abs(want))
            << "sequence " << seqs[r] << " position " << t << " token " << v;
      }
  }
  EXPECT_EQ(decoder.length(0), 20);
  EXPECT_EQ(decoder.length(2), 7);
}

TEST(Decoder, PreLnRaggedBatchMatchesFullForward) { check_decoder_matches_forward(false); }
TEST(Decoder, PostLnRaggedBatchMatchesFullForward) { check_decoder_matches_forward(true); }
TEST(Decoder, RaggedBatchMatchesFullForwardWithAnotherMlpWidth) { check_decoder_matches_forward(false, 24); }
TEST(Decoder, LlamaRaggedBatchMatchesFullForward) { check_decoder_matches_forward(false, 0, true); }
TEST(Decoder, GroupedKvHeadsRaggedBatchMatchesFullForward) { check_decoder_matches_forward(false, 0, true, true); }

// Each sequence of a batch gets the tokens it gets alone: greedy, and sampled with its own seed,
// with prompts of different lengths, stop tokens, and caches that slide past the context.
TEST(Decoder, BatchGivesEachSequenceWhatItGetsAlone) {
  kiln::Gpt model(tiny_shape(false));
  model.init_weights(3, 0.3f);
  kiln::Decoder decoder(model);
  const std::vector<std::vector<std::int32_t>> prompts = {{1, 2, 3}, {4}, {5, 6, 7, 8, 9, 10, 11}, {12, 13}};
  const std::vector<std::uint64_t> seeds = {9, 10, 11, 12};
  for (float temperature : {0.0f, 0.9f}) {
    kiln::SampleOptions options;
    options.max_tokens = 30;  // longer than the 24-position context: the caches slide
    options.stop_at_eot = false;
    options.temperature = temperature;
    options.top_k = 5;
    const auto batch = decoder.generate(prompts, options, 36, seeds);
    ASSERT_EQ(batch.size(), prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(batch[i].size(), 30u);
      EXPECT_EQ(batch[i], decoder.generate({prompts[i]}, options, 36, {seeds[i]})[0]) << "sequence " << i;
    }
    // A stop token ends a sequence before it is emitted; the others go on.
    options.stop_tokens = {batch[1][4]};
    const auto stopped = decoder.generate(prompts, options, 36, seeds);
    const auto first = std::find(batch[1].begin(), batch[1].end(), batch[1][4]) - batch[1].begin();
    EXPECT_EQ(stopped[1], std::vector<std::int32_t>(batch[1].begin(), batch[1].begin() + first));
  }
}

TEST(Decoder, SamplingIsSeededAndTopKOneIsGreedy) {
  kiln::Gpt model(tiny_shape(false));
  model.init_weights(3, 0.3f);
  kiln::Decoder decoder(model);
  const std::vector<std::vector<std::int32_t>> prompt = {{1, 2, 3}};
  kiln::SampleOptions options;
  options.max_tokens = 30;  // longer than the 24-position context: the cache slides
  options.stop_at_eot = false;
  options.seed = 9;
  const auto a = decoder.generate(prompt, options, 36);
  const auto b = decoder.generate(prompt, options, 36);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a[0].size(), 30u);
  options.seed = 10;
  EXPECT_NE(decoder.generate(prompt, options, 36), a);
  options.top_k = 1;
  kiln::SampleOptions greedy = options;
  greedy.temperature = 0.0f;
  EXPECT_EQ(decoder.generate(prompt, options, 36), decoder.generate(prompt, greedy, 36));
  // A tiny nucleus keeps only the most likely token: greedy again.
  options.top_k = 0;
  options.top_p = 1e-6f;
  EXPECT_EQ(decoder.generate(prompt, options, 36), decoder.generate(prompt, greedy, 36));
}
