// Block-sparse attention: every pattern against dense attention with the equivalent token mask
// (outputs and gradients), layout properties (causality, two-hop reachability for strided and
// fixed), the errors that name the key to change, and a KV-cache decoder that honours layouts.
#include <gtest/gtest.h>

#include <cmath>

#include "core/config.h"
#include "core/model/attention_layout.h"
#include "core/model/decode.h"
#include "core/model/gpt.h"
#include "grad_check.h"
#include "kernels/attention.h"

using kiln::testing::dot;
using kiln::testing::expect_gradient;
using kiln::testing::random_vector;

namespace {

kiln::AttentionPattern pattern(const std::string& kind, int block, int window, int stride,
                               int summary = 1, int global = 0, bool per_head = false) {
  kiln::AttentionPattern p;
  p.kind = kind;
  p.block = block;
  p.window = window;
  p.stride = stride;
  p.summary = summary;
  p.global = global;
  p.per_head = per_head;
  return p;
}

// Softmax attention in double where query i of head h sees key j iff j <= i and the layout
// holds block (i / block, j / block) for h; h reads key/value head h / (nh / nkv) of q|k|v rows
// c + 2 nkv hd wide.
std::vector<double> masked_attention(const std::vector<float>& qkv, int b, int t, int c, int nh, int nkv,
                                     const kiln::BlockLayout& layout) {
  const int hd = c / nh, w = c + 2 * nkv * hd, group = nh / nkv;
  std::vector<double> out(static_cast<std::size_t>(b) * t * c, 0.0);
  for (int bi = 0; bi < b; ++bi)
    for (int h = 0; h < nh; ++h)
      for (int i = 0; i < t; ++i) {
        std::vector<double> s(t, 0.0);
        std::vector<bool> on(t, false);
        double m = -1e300;
        for (int j = 0; j <= i; ++j) {
          on[j] = layout.allows(h, i / layout.block, j / layout.block);
          if (!on[j]) continue;
          double acc = 0;
          for (int d = 0; d < hd; ++d)
            acc += static_cast<double>(qkv[(bi * t + i) * w + h * hd + d]) * qkv[(bi * t + j) * w + c + h / group * hd + d];
          s[j] = acc / std::sqrt(static_cast<double>(hd));
          m = std::max(m, s[j]);
        }
        double z = 0;
        for (int j = 0; j <= i; ++j) z += on[j] ? (s[j] = std::exp(s[j] - m)) : 0.0;
        for (int j = 0; j <= i; ++j)
          if (on[j])
            for (int d = 0; d < hd; ++d)
              out[(bi * t + i) * c + h * hd + d] += s[j] / z * qkv[(bi * t + j) * w + c + (nkv + h / group) * hd + d];
      }
  return out;
}

// nkv key/value heads (0: nh).
void check_pattern(const kiln::AttentionPattern& p, int b, int t, int c, int nh, bool grads, int nkv = 0) {
  SCOPED_TRACE(p.describe() + " t=" + std::to_string(t) + " kv heads " + std::to_string(nkv));
  const kiln::BlockLayout layout = kiln::build_layout(p, t, nh);
  const int kv = nkv > 0 ? nkv : nh, w = c + 2 * kv * (c / nh);
  auto qkv = random_vector(static_cast<std::size_t>(b) * t * w, 41);
  std::vector<float> out(static_cast<std::size_t>(b) * t * c), lse(static_cast<std::size_t>(b) * nh * t);
  kiln::cpu::attention_forward(out.data(), lse.data(), qkv.data(), b, t, c, nh, layout.view(), nkv);
  const auto ref = masked_attention(qkv, b, t, c, nh, kv, layout);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 2e-5) << i;
  if (!grads) return;
  auto weights = random_vector(out.size(), 42);
  auto f = [&] {
    kiln::cpu::attention_forward(out.data(), lse.data(), qkv.data(), b, t, c, nh, layout.view(), nkv);
    return dot(out, weights);
  };
  f();
  std::vector<float> dqkv(qkv.size());
  kiln::cpu::attention_backward(dqkv.data(), weights.data(), qkv.data(), out.data(), lse.data(), b, t, c, nh, layout.view(),
                                nkv);
  expect_gradient("dqkv", qkv, dqkv, f, 1e-2f, 2e-3, 2e-2, 5);
}

}  // namespace

TEST(SparseAttention, DenseMatchesNaiveAttention) {
  check_pattern(pattern("dense", 64, 1, 1), 2, 64, 128, 2, false);   // hd 64, full blocks
  check_pattern(pattern("dense", 32, 1, 1), 1, 100, 256, 2, false);  // hd 128, partial last block
  check_pattern(pattern("dense", 16, 1, 1), 2, 37, 24, 3, false);    // generic head size 8
  check_pattern(pattern("dense", 128, 1, 1), 1, 200, 128, 1, false); // hd 128, block 128
  check_pattern(pattern("dense", 16, 1, 1), 1, 21, 16, 2, true);     // gradients, partial block
  check_pattern(pattern("dense", 16, 1, 1), 2, 33, 64, 1, true);     // gradients, hd 64 path
}

TEST(SparseAttention, EveryPatternMatchesDenseWithItsMask) {
  check_pattern(pattern("local", 16, 2, 1), 2, 96, 32, 2, false);
  check_pattern(pattern("strided", 16, 2, 3), 1, 128, 64, 1, false);
  check_pattern(pattern("fixed", 16, 1, 4, 1), 1, 128, 32, 2, false);
  check_pattern(pattern("fixed", 16, 1, 4, 1, 0, true), 1, 128, 64, 4, false);  // per head
  check_pattern(pattern("local", 32, 1, 1, 1, 1), 1, 128, 64, 1, false);       // + global block
  check_pattern(pattern("dense", 16, 1, 1, 1, 1), 1, 64, 16, 1, false);
  check_pattern(pattern("strided", 64, 2, 2), 1, 512, 128, 1, false);           // hd 128
}

// Grouped-query attention: query head h reads key/value head h / (nh / nkv) in place, in every
// pattern, and the gradient of a shared key/value head sums its query heads'.
TEST(SparseAttention, GroupedKeyValueHeadsMatchNaiveAttention) {
  check_pattern(pattern("dense", 64, 1, 1), 2, 64, 256, 4, false, 2);           // hd 64, two groups
  check_pattern(pattern("dense", 32, 1, 1), 1, 100, 512, 4, false, 1);          // multi-query, hd 128
  check_pattern(pattern("fixed", 16, 1, 4, 1, 0, true), 1, 128, 64, 4, false, 2);  // per-head layouts
  check_pattern(pattern("dense", 16, 1, 1), 1, 21, 32, 4, true, 2);             // gradients, partial block
  check_pattern(pattern("dense", 16, 1, 1), 2, 33, 24, 3, true, 1);             // gradients, multi-query
  check_pattern(pattern("fixed", 16, 1, 2, 1, 0, true), 1, 64, 32, 4, true, 2);  // per-head layouts share a kv head
}

TEST(SparseAttention, GradientsThroughSparseLayouts) {
  check_pattern(pattern("local", 16, 1, 1), 1, 48, 16, 2, true);
  check_pattern(pattern("fixed", 16, 1, 2, 1, 0, true), 1, 64, 16, 2, true);
  check_pattern(pattern("strided", 16, 1, 2, 1, 1), 1, 64, 16, 1, true);
}

TEST(SparseAttention, LayoutsAreCausalAndStridedFixedReachEverythingInTwoHops) {
  for (const auto& p : {pattern("local", 16, 3, 1), pattern("strided", 16, 4, 4),
                        pattern("fixed", 16, 1, 4, 1), pattern("fixed", 16, 1, 8, 2, 0, true),
                        pattern("strided", 16, 3, 3, 1, 2)}) {
    SCOPED_TRACE(p.describe());
    const kiln::BlockLayout layout = kiln::build_layout(p, 16 * 32, 4);
    const int nb = layout.num_blocks;
    for (int h = 0; h < layout.num_layouts; ++h)
      for (int q = 0; q < nb; ++q) {
        ASSERT_TRUE(layout.allows(h, q, q)) << "own block";
        for (int k = q + 1; k < nb; ++k) ASSERT_FALSE(layout.allows(h, q, k)) << "future block";
      }
    if (p.kind == "local") continue;
    // Two layers of one head reach every earlier block; with per-head summaries (which move the
    // summary away from a chunk's end for some heads) the heads together do.
    for (int q = 0; q < nb; ++q)
      for (int k = 0; k <= q; ++k) {
        bool reached = false;
        for (int h = 0; h < layout.num_layouts && !reached; ++h)
          for (int m = k; m <= q && !reached; ++m) reached = layout.allows(h, q, m) && layout.allows(h, m, k);
        ASSERT_TRUE(reached) << "block " << q << " cannot reach " << k << " in two layers";
      }
    if (layout.num_layouts > 1) continue;
    for (int q = 0; q < nb; ++q)
      for (int k = 0; k <= q; ++k) {
        bool reached = false;
        for (int m = k; m <= q && !reached; ++m) reached = layout.allows(0, q, m) && layout.allows(0, m, k);
        ASSERT_TRUE(reached);
      }
  }
}

TEST(SparseAttention, DensityGrowsLikeNSqrtNForStrided) {
  // With window = stride = sqrt(blocks), active blocks grow as n * sqrt(n).
  for (int blocks : {16, 64, 256}) {
    const int w = static_cast<int>(std::sqrt(blocks));
    const kiln::BlockLayout layout = kiln::build_layout(pattern("strided", 16, w, w), 16 * blocks, 1);
    const double per_n_sqrt_n = static_cast<double>(layout.cols.size()) / (blocks * std::sqrt(blocks));
    EXPECT_GT(per_n_sqrt_n, 1.0);
    EXPECT_LT(per_n_sqrt_n, 2.5);
  }
  EXPECT_DOUBLE_EQ(kiln::dense_causal_layout(1024, 64).density(), 1.0);
}

// The (query, key) pairs a layout lets attend, which MFU's FLOP count uses, against a count
// token by token through allows(); and the model FLOPs that follow from it.
TEST(SparseAttention, AttendedPairsCountTokensTheMaskAllows) {
  auto brute = [](const kiln::BlockLayout& layout, int t) {
    double pairs = 0;
    for (int h = 0; h < layout.num_layouts; ++h)
      for (int q = 0; q < t; ++q)
        for (int k = 0; k <= q; ++k) pairs += layout.allows(h, q / layout.block, k / layout.block);
    return pairs / layout.num_layouts;
  };
  EXPECT_DOUBLE_EQ(kiln::dense_causal_layout(100, 16).attended_pairs(100), 100.0 * 101 / 2);  // partial block
  for (const auto& p : {pattern("local", 16, 3, 1), pattern("strided", 16, 2, 3), pattern("fixed", 16, 1, 4, 1, 0, true),
                        pattern("local", 32, 2, 1, 1, 1)}) {
    const kiln::BlockLayout layout = kiln::build_layout(p, 256, 4);
    EXPECT_DOUBLE_EQ(layout.attended_pairs(256), brute(layout, 256)) << p.describe();
  }
  // 6 x matmul parameters (the tied head counted once) + 12 C per attended pair per token.
  kiln::ModelConfig config;
  config.n_layer = 2;
  config.n_head = 2;
  config.n_embd = 32;
  config.context = 64;
  config.attention_block = 16;
  config.attention = "dense,local";
  config.attention_window = 2;
  const kiln::GptShape shape = kiln::GptShape::from_config(config, 100);
  const double local = kiln::build_layout(pattern("local", 16, 2, 1), 64, 2).attended_pairs(64);
  EXPECT_DOUBLE_EQ(shape.flops_per_token(64),
                   6.0 * (2 * 12.0 * 32 * 32 + 100.0 * 32) + 12.0 * 32 * (64.0 * 65 / 2 + local) / 64);
}

TEST(SparseAttention, InvalidPatternsNameTheKeyToChange) {
  auto message_of = [](const kiln::AttentionPattern& p, int t) {
    try {
      kiln::build_layout(p, t, 2);
    } catch (const kiln::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of(pattern("local", 16, 2, 1), 100).find("train.seq_len"), std::string::npos);
  EXPECT_NE(message_of(pattern("local", 16, 9, 1), 128).find("model.attention_window=9"), std::string::npos);
  EXPECT_NE(message_of(pattern("fixed", 16, 1, 2, 3), 128).find("model.attention_summary=3"), std::string::npos);
  EXPECT_NE(message_of(pattern("banded", 16, 1, 1), 128).find("unknown pattern 'banded'"), std::string::npos);
  EXPECT_THROW(kiln::attention_kinds("dense,local", 3), kiln::Error);
  EXPECT_EQ(kiln::attention_kinds("gpt3", 4), (std::vector<std::string>{"dense", "local", "dense", "local"}));
  // Through the config: file, key and value in the message.
  try {
    kiln::parse_config("model:\n  attention: local\n  attention_window: 50\ntrain:\n  seq_len: 256\n", "x.yaml");
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("x.yaml:2"), std::string::npos) << what;
    EXPECT_NE(what.find("model.attention_window=50"), std::string::npos) << what;
  }
}

TEST(SparseAttention, DecoderHonoursTheLayoutOfEachLayer) {
  kiln::ModelConfig config;
  config.n_layer = 2;
  config.n_head = 2;
  config.n_embd = 16;
  config.context = 64;
  config.attention_block = 16;
  config.attention = "fixed,local";
  config.attention_window = 1;
  config.attention_stride = 2;
  config.attention_per_head = 1;
  kiln::Gpt model(kiln::GptShape::from_config(config, 37));
  model.init_weights(4, 0.3f);
  kiln::Batch batch;
  batch.batch = 1;
  batch.seq_len = 64;
  for (int i = 0; i < 64; ++i) {
    batch.inputs.push_back((i * 7) % 37);
    batch.targets.push_back((i * 5) % 37);
  }
  model.forward(batch);
  const float* full = model.logits().f32();
  const int vp = model.shape().padded_vocab;
  kiln::Decoder decoder(model);
  decoder.reset(1);
  for (int t = 0; t < 64; ++t) {
    const float* step = decoder.step({0}, {batch.inputs[t]});
    for (int v = 0; v < 37; ++v)
      ASSERT_NEAR(step[v], full[t * vp + v], 1e-4 + 1e-4 * std::abs(full[t * vp + v])) << "position " << t;
  }
}

TEST(SparseAttention, PackedDocumentsTrainAsIfAlone) {
  // Two documents of 10 and 14 tokens packed into one row of 24, positions restarting and a
  // document mask: each one's logits equal its own forward pass, and so does the loss.
  kiln::GptShape shape;
  shape.n_layer = 2;
  shape.n_head = 2;
  shape.n_embd = 16;
  shape.context = 32;
  shape.vocab = 37;
  shape.padded_vocab = 64;
  shape.attention_block = 16;
  kiln::Gpt model(shape);
  model.init_weights(8, 0.3f);
  auto doc = [](int len, int salt) {
    kiln::Batch b;
    b.batch = 1;
    b.seq_len = len;
    for (int i = 0; i < len; ++i) {
      b.inputs.push_back((i * 5 + salt) % 37);
      b.targets.push_back((i * 3 + salt) % 37);
    }
    return b;
  };
  const kiln::Batch a = doc(10, 1), b = doc(14, 7);
  kiln::Batch packed;
  packed.batch = 1;
  packed.seq_len = 24;
  for (const auto* d : {&a, &b})
    for (int i = 0; i < d->seq_len; ++i) {
      packed.inputs.push_back(d->inputs[i]);
      packed.targets.push_back(d->targets[i]);
      packed.positions.push_back(i);
      packed.segments.push_back(d == &a ? 0 : 1);
    }
  const double packed_loss = model.forward(packed);
  const std::vector<float> packed_logits(model.logits().f32(), model.logits().f32() + 24 * 64);
  double solo_loss = 0;
  int offset = 0;
  for (const auto* d : {&a, &b}) {
    solo_loss += model.forward(*d);
    for (int i = 0; i < d->seq_len; ++i)
      for (int v = 0; v < 37; ++v)
        ASSERT_NEAR(packed_logits[(offset + i) * 64 + v], model.logits().f32()[i * 64 + v], 1e-5)
            << "document token " << offset + i;
    offset += d->seq_len;
  }
  EXPECT_NEAR(packed_loss, solo_loss, 1e-5 * solo_loss);
  // Gradients flow through the mask too: packed and separate backward passes agree.
  model.zero_grad();
  model.forward_backward(packed, 1.0f);
  std::vector<float> packed_grads(model.gradient_buffer().f32(), model.gradient_buffer().f32() + model.gradient_buffer().numel());
  model.zero_grad();
  model.forward_backward(a, 1.0f);
  model.forward_backward(b, 1.0f);
  for (std::size_t i = 0; i < packed_grads.size(); ++i)
    ASSERT_NEAR(packed_grads[i], model.gradient_buffer().f32()[i], 1e-5 + 1e-4 * std::abs(packed_grads[i])) << i;
}
