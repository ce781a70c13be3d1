// The learning-rate schedule and AdamW over a slice of the parameters (ZeRO-1's building block).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/checkpoint/model_io.h"
#include "core/checkpoint/safetensors.h"
#include "core/optim/adamw.h"

TEST(Schedule, WarmupThenCosineFromThePeak) {
  kiln::OptimConfig o;
  o.lr = 1.0f;
  o.min_lr_ratio = 0.1f;
  o.warmup_steps = 4;
  EXPECT_FLOAT_EQ(kiln::learning_rate(o, 1, 100), 0.25f);
  EXPECT_FLOAT_EQ(kiln::learning_rate(o, 4, 100), 1.0f);
  EXPECT_FLOAT_EQ(kiln::learning_rate(o, 5, 100), 1.0f);  // first decay step is the peak
  EXPECT_LT(kiln::learning_rate(o, 60, 100), kiln::learning_rate(o, 30, 100));
  EXPECT_NEAR(kiln::learning_rate(o, 100, 100), 0.1f, 1e-3);
  o.warmup_steps = 0;
  EXPECT_FLOAT_EQ(kiln::learning_rate(o, 1, 10), 1.0f);  // no warmup: step 1 at the peak
  EXPECT_FLOAT_EQ(kiln::learning_rate(o, 1, 1), 1.0f);
  o.schedule = "constant";
  EXPECT_FLOAT_EQ(kiln::learning_rate(o, 77, 100), 1.0f);
}

namespace {
kiln::GptShape small_shape() {
  kiln::GptShape s;
  s.n_layer = 1;
  s.n_head = 2;
  s.n_embd = 16;
  s.context = 8;
  s.vocab = 20;
  s.padded_vocab = 64;
  s.attention_block = 16;
  return s;
}
}  // namespace

TEST(AdamW, SlicesUpdateExactlyLikeTheWholeModel) {
  kiln::Gpt whole(small_shape()), sliced(small_shape());
  whole.init_weights(1);
  sliced.init_weights(1);
  const std::int64_t n = whole.parameter_buffer().numel();
  for (std::int64_t i = 0; i < n; ++i)
    whole.gradient_buffer().f32()[i] = sliced.gradient_buffer().f32()[i] = std::sin(0.37 * i);
  kiln::OptimConfig o;
  o.grad_clip = 0.5f;  // clipping active: the norm comes from all slices
  kiln::AdamW full(o, whole);
  const auto stats = full.step(1e-2f);
  // Three slices with boundaries inside parameters, as ZeRO-1 cuts the buffer.
  const std::int64_t cuts[] = {0, n / 3 + 7, 2 * n / 3 + 1, n};
  for (int k = 0; k < 3; ++k) {
    kiln::AdamW part(o, sliced, cuts[k], cuts[k + 1]);
    part.step(1e-2f, sliced.gradient_buffer().f32() + cuts[k], stats.grad_norm);
  }
  EXPECT_EQ(0, std::memcmp(whole.parameter_buffer().raw(), sliced.parameter_buffer().raw(),
                           whole.parameter_buffer().nbytes()));
}

TEST(ModelIo, NonFiniteWeightsAreRejectedOnLoad) {
  kiln::Gpt model(small_shape());
  model.init_weights(2);
  model.parameters()[5].value.f32()[3] = NAN;
  const std::string path = ::testing::TempDir() + "/kiln_nan_model.safetensors";
  kiln::save_model(model, path);
  kiln::Gpt other(small_shape());
  try {
    kiln::load_model(other, path);
    FAIL() << "expected an error";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find(model.parameters()[5].name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
}
