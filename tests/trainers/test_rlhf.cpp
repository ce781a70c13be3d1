// Preference tuning (docs/rlhf.md): the losses and GAE against closed forms, direct sums and
// finite differences; the preference world's gold rule; the reward, dpo and ppo stages on a tiny
// SFT and reward run (tests/rlhf_fixture.h): gradients through the whole model by finite
// differences, scores independent of packing, the stored score statistics, DPO at the reference,
// PPO's first minibatch at ratio 1 and KL 0, bit-exact resumption of every trained role, and the
// errors bad input gets.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "core/checkpoint/model_io.h"
#include "core/checkpoint/run_dir.h"
#include "core/checkpoint/safetensors.h"
#include "core/data/tokenizer.h"
#include "core/model/heads.h"
#include "error_of.h"
#include "kernels/error.h"
#include "rlhf_fixture.h"
#include "trainers/dpo.h"
#include "trainers/ppo.h"
#include "trainers/reward.h"
#include "trainers/rl_losses.h"
#include "trainers/rollout.h"

namespace fs = std::filesystem;
using kiln::testing::error_of;

// ---- the losses --------------------------------------------------------------------------------

TEST(RlLosses, GaeMatchesDirectSummation) {
  const std::vector<double> rewards = {0.1, -0.3, 0.0, 0.7, 1.5}, values = {0.2, 0.4, -0.1, 0.3, 0.9};
  for (double gamma : {1.0, 0.9})
    for (double lambda : {1.0, 0.95, 0.0}) {
      std::vector<double> adv, ret;
      kiln::gae(rewards, values, gamma, lambda, adv, ret);
      const std::size_t n = rewards.size();
      for (std::size_t t = 0; t < n; ++t) {
        double direct = 0.0;
        for (std::size_t k = t; k < n; ++k) {
          const double next = k + 1 < n ? values[k + 1] : 0.0;
          direct += std::pow(gamma * lambda, static_cast<double>(k - t)) * (rewards[k] + gamma * next - values[k]);
        }
        EXPECT_NEAR(adv[t], direct, 1e-12) << "gamma " << gamma << " lambda " << lambda << " t " << t;
        EXPECT_NEAR(ret[t], direct + values[t], 1e-12);
      }
    }
  // lambda = 1, gamma = 1: the return is the sum of the rewards to go.
  std::vector<double> adv, ret;
  kiln::gae(rewards, values, 1.0, 1.0, adv, ret);
  EXPECT_NEAR(ret[0], 0.1 - 0.3 + 0.0 + 0.7 + 1.5, 1e-12);
}

namespace {
double central(const std::function<double(double)>& f, double x, double h = 1e-6) { return (f(x + h) - f(x - h)) / (2 * h); }
}  // namespace

TEST(RlLosses, DerivativesMatchFiniteDifferences) {
  for (double rc : {-1.3, 0.2, 2.0})
    for (double rr : {-0.4, 0.9})
      for (double center : {0.0, 0.05}) {
        const kiln::PairLoss l = kiln::bradley_terry(rc, rr, 0.3, center);
        EXPECT_NEAR(l.d_chosen, central([&](double x) { return kiln::bradley_terry(x, rr, 0.3, center).loss; }, rc), 1e-7);
        EXPECT_NEAR(l.d_rejected, central([&](double x) { return kiln::bradley_terry(rc, x, 0.3, center).loss; }, rr), 1e-7);
      }
  EXPECT_NEAR(kiln::bradley_terry(0.5, 0.5, 0.0, 0.0).loss, std::log(2.0), 1e-15);
  for (bool ipo : {false, true})
    for (double eps : {0.0, 0.1})
      for (double pc : {-5.0, -2.0})
        for (double pr : {-4.0, -6.5}) {
          const double refc = -3.1, refr = -5.2, beta = 0.3;
          const kiln::DpoTerms t = kiln::dpo_loss(pc, pr, refc, refr, beta, eps, ipo);
          EXPECT_NEAR(t.d_chosen, central([&](double x) { return kiln::dpo_loss(x, pr, refc, refr, beta, eps, ipo).loss; }, pc), 1e-7);
          EXPECT_NEAR(t.d_rejected, central([&](double x) { return kiln::dpo_loss(pc, x, refc, refr, beta, eps, ipo).loss; }, pr), 1e-7);
          EXPECT_NEAR(t.reward_chosen, beta * (pc - refc), 1e-15);
        }
  // At the reference DPO's loss is log 2 and IPO's is 1 / (4 beta^2).
  EXPECT_NEAR(kiln::dpo_loss(-2, -3, -2, -3, 0.1, 0.0, false).loss, std::log(2.0), 1e-15);
  EXPECT_NEAR(kiln::dpo_loss(-2, -3, -2, -3, 0.5, 0.0, true).loss, 1.0, 1e-15);
  // PPO's policy loss: away from the clip's kinks the derivative is the loss's; at ratio far out
  // of the interval on the clipped side it is 0.
  for (double adv : {-1.2, 0.8})
    for (double logp : {-2.3, -2.0, -1.7, -1.95}) {
      const double old = -2.0, clip = 0.2;
      const kiln::PolicyTerms t = kiln::ppo_policy_loss(logp, old, adv, clip);
      EXPECT_NEAR(t.d_logp, central([&](double x) { return kiln::ppo_policy_loss(x, old, adv, clip).loss; }, logp), 1e-6)
          << "adv " << adv << " logp " << logp;
      EXPECT_NEAR(t.ratio, std::exp(logp - old), 1e-15);
    }
  EXPECT_TRUE(kiln::ppo_policy_loss(-1.5, -2.0, 1.0, 0.2).clipped);
  EXPECT_FALSE(kiln::ppo_policy_loss(-1.5, -2.0, -1.0, 0.2).clipped);
  for (double v : {0.1, 0.45, 0.9, -0.3})
    for (double clip : {0.0, 0.2}) {
      const kiln::ValueTerms t = kiln::ppo_value_loss(v, 0.4, 1.0, clip);
      EXPECT_NEAR(t.d_value, central([&](double x) { return kiln::ppo_value_loss(x, 0.4, 1.0, clip).loss; }, v), 1e-6)
          << "v " << v << " clip " << clip;
    }
}

TEST(RlLosses, KlEstimatorsAndTheAdaptiveCoefficient) {
  EXPECT_DOUBLE_EQ(kiln::kl_estimate(-1.0, -1.5, "k1"), 0.5);
  EXPECT_DOUBLE_EQ(kiln::kl_estimate(-1.0, -1.5, "k2"), 0.125);
  for (double d : {-2.0, -0.1, 0.0, 0.3, 3.0}) EXPECT_GE(kiln::kl_estimate(-1.0, -1.0 - d, "k3"), 0.0);
  EXPECT_EQ(kiln::kl_estimate(-1.25, -1.25, "k3"), 0.0);
  EXPECT_THROW(kiln::kl_estimate(0, 0, "k4"), kiln::Error);
  kiln::KlController kl{0.1, 6.0, 1000.0};
  kl.update(12.0, 100);  // twice the target: +20% x 100/1000
  EXPECT_NEAR(kl.coef, 0.1 * 1.02, 1e-12);
  kl.update(3.0, 100);  // half: -20% x 0.1
  EXPECT_NEAR(kl.coef, 0.1 * 1.02 * 0.98, 1e-12);
  kiln::KlController fixed{0.1, 0.0, 1000.0};
  fixed.update(50.0, 100);
  EXPECT_EQ(fixed.coef, 0.1);
}

TEST(PreferenceWorld, GoldRuleRanksCorrectnessThenBrevity) {
  EXPECT_TRUE(kiln::gold_correct("fig", "fig"));
  EXPECT_TRUE(kiln::gold_correct("fig", "fig, I think."));
  EXPECT_FALSE(kiln::gold_correct("fig", "figs"));
  EXPECT_FALSE(kiln::gold_correct("fig", "plum"));
  EXPECT_DOUBLE_EQ(kiln::gold_reward("fig", "fig"), 1.0);
  EXPECT_NEAR(kiln::gold_reward("fig", "fig - hope that helps!"), 1.0 - 0.02 * 19, 1e-12);
  EXPECT_DOUBLE_EQ(kiln::gold_reward("fig", "owl"), 0.0);
  EXPECT_DOUBLE_EQ(kiln::gold_reward("x", std::string(500, 'y')), -1.0);
  const fs::path dir = fs::temp_directory_path() / ("kiln_world_" + std::to_string(::getpid()));
  kiln::WorldOptions o;
  o.pairs = 200;
  o.val_pairs = 20;
  o.sft = 50;
  o.prompts = o.val_prompts = 10;
  kiln::write_preference_world(dir.string(), o);
  std::ifstream gold(dir / "prefs_train.jsonl"), length(dir / "prefs_length_train.jsonl");
  std::string a, b;
  int n = 0;
  while (std::getline(gold, a) && std::getline(length, b)) {
    const auto g = nlohmann::json::parse(a), l = nlohmann::json::parse(b);
    const std::string answer = g["answer"];
    EXPECT_GT(kiln::gold_reward(answer, g["chosen"]), kiln::gold_reward(answer, g["rejected"])) << a;
    EXPECT_GT(l["chosen"].get<std::string>().size(), l["rejected"].get<std::string>().size()) << b;
    ++n;
  }
  EXPECT_EQ(n, 200);
  // Label noise swaps about that share of the training pairs, never the held-out ones.
  o.label_noise = 0.25;
  kiln::write_preference_world((dir / "noisy").string(), o);
  std::ifstream noisy(dir / "noisy" / "prefs_train.jsonl");
  int swapped = 0;
  while (std::getline(noisy, a)) {
    const auto g = nlohmann::json::parse(a);
    swapped += g["gold_chosen"].get<double>() < g["gold_rejected"].get<double>();
  }
  EXPECT_GT(swapped, 30);
  EXPECT_LT(swapped, 70);
  // Margins, when asked for, are the gold difference scaled; held-out pairs carry none.
  o.label_noise = 0.0;
  o.margin_scale = 2.0;
  kiln::write_preference_world((dir / "margins").string(), o);
  std::ifstream with_margins(dir / "margins" / "prefs_train.jsonl");
  while (std::getline(with_margins, a)) {
    const auto g = nlohmann::json::parse(a);
    EXPECT_NEAR(g["margin"].get<double>(), 2.0 * (g["gold_chosen"].get<double>() - g["gold_rejected"].get<double>()), 1e-12);
  }
  std::ifstream held_out(dir / "margins" / "prefs_val.jsonl");
  std::getline(held_out, a);
  EXPECT_FALSE(nlohmann::json::parse(a).contains("margin"));
  fs::remove_all(dir);
}

// ---- the stages ---------------------------------------------------------------------------------

namespace {

class RlhfTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fixture_ = new kiln::testing::RlhfFixture(fs::temp_directory_path() / ("kiln_rlhf_" + std::to_string(::getpid())));
    fs::remove_all(fixture_->dir());
    fixture_->build();
  }
  static void TearDownTestSuite() {
    fs::remove_all(fixture_->dir());
    delete fixture_;
  }
  static const kiln::testing::RlhfFixture& fx() { return *fixture_; }

  static kiln::TrainResult train(const kiln::ExperimentConfig& c, kiln::TrainOptions options = {}) {
    options.quiet = true;
    return kiln::Trainer(c, options).run();
  }
  static std::vector<nlohmann::json> metrics(const kiln::ExperimentConfig& c) {
    std::ifstream in(c.train.run_dir + "/metrics.jsonl");
    std::vector<nlohmann::json> out;
    std::string line;
    while (std::getline(in, line))
      if (auto j = nlohmann::json::parse(line); j.contains("loss")) out.push_back(j);
    return out;
  }
  // A model of the config's shape, with the weights of `run` (a scalar head when it has one).
  static std::unique_ptr<kiln::Gpt> load(const kiln::ExperimentConfig& c, const std::string& run, bool score_head) {
    kiln::GptShape shape = kiln::GptShape::from_config(c.model, 257);
    shape.score_head = score_head;
    auto model = std::make_unique<kiln::Gpt>(shape);
    model->init_weights(c.train.seed);
    load_model(*model, kiln::resolve_checkpoint(run) + "/model.safetensors", {"score.weight"});
    return model;
  }

  static kiln::testing::RlhfFixture* fixture_;
};
kiln::testing::RlhfFixture* RlhfTest::fixture_ = nullptr;

// Central differences of `loss` for a few elements of each of several parameters, against the
// gradient buffer (fp32 model: 2% or 2e-4).
void expect_model_gradient(kiln::Gpt& model, const std::vector<float>& grads, const std::function<double()>& loss,
                           const std::vector<std::string>& names) {
  float* w = model.parameter_buffer().f32();
  for (const std::string& name : names) {
    const kiln::Parameter& p = model.parameter(name);
    const std::int64_t at = p.value.f32() - w, n = p.value.numel();
    for (std::int64_t k = 0; k < 4; ++k) {
      const std::int64_t i = at + (k * 7919) % n;
      const float saved = w[i];
      const float eps = 1e-2f;
      w[i] = saved + eps;
      const double up = loss();
      w[i] = saved - eps;
      const double down = loss();
      w[i] = saved;
      const double fd = (up - down) / (2.0 * eps);
      EXPECT_NEAR(grads[i], fd, 2e-4 + 2e-2 * std::abs(fd)) << name << " element " << i - at;
    }
  }
}

}  // namespace

TEST_F(RlhfTest, RewardGradientThroughTheModelMatchesFiniteDifferences) {
  kiln::ExperimentConfig c = fx().reward_config("unused");
  c.reward.center = 0.1f;
  kiln::RewardStage stage(c, 0, 1);
  auto model = load(c, fx().reward_run(), true);
  const kiln::PairBatch pb = stage.train_data().batch(stage.train_data().step_pairs(0, c.train.micro_batch, 1, 0, 1));
  model->zero_grad();
  kiln::StepContext ctx;
  const kiln::StepLoss step = stage.accumulate_gradients(*model, ctx);
  const kiln::Tensor& g = model->gradient_buffer();
  const std::vector<float> grads(g.f32(), g.f32() + g.numel());
  auto loss = [&] {
    double sum = 0.0;
    const auto s = stage.scores(*model, pb);
    for (std::size_t j = 0; j < s.size(); ++j) sum += kiln::bradley_terry(s[j].first, s[j].second, pb.margins[j], 0.1).loss;
    return sum / static_cast<double>(s.size());
  };
  EXPECT_NEAR(step.loss_sum / static_cast<double>(step.tokens), loss(), 1e-6);
  expect_model_gradient(*model, grads, loss, {"score.weight", "transformer.h.1.mlp.c_proj.weight", "transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"});
}

TEST_F(RlhfTest, RewardScoresDoNotDependOnPaddingOrPacking) {
  const kiln::ExperimentConfig c = fx().reward_config("unused");
  kiln::RewardStage stage(c, 0, 1);
  auto model = load(c, fx().reward_run(), true);
  const std::vector<std::size_t> ids = {0, 1, 2, 3, 4, 5};
  const kiln::PairBatch packed = stage.train_data().batch(ids);
  ASSERT_LT(packed.batch.batch, 12) << "the pairs should share rows";
  const auto scores = stage.scores(*model, packed);
  // Each response alone in its own row, padded to the row's end, and in rows of another length.
  std::vector<std::vector<std::int32_t>> alone;
  for (std::size_t i : ids)
    for (const kiln::Example* e : {&stage.train_data().pair(i).chosen, &stage.train_data().pair(i).rejected})
      alone.emplace_back(e->ids.begin(), e->ids.end());
  kiln::ScalarHead head(*model);
  for (int seq_len : {128, 96}) {
    const std::vector<double> single = kiln::last_token_scores(*model, head, alone, seq_len, 3);
    for (std::size_t j = 0; j < ids.size(); ++j) {
      EXPECT_NEAR(single[2 * j], scores[j].first, 1e-5 * (1 + std::abs(scores[j].first))) << "pair " << j;
      EXPECT_NEAR(single[2 * j + 1], scores[j].second, 1e-5 * (1 + std::abs(scores[j].second))) << "pair " << j;
    }
  }
}

TEST_F(RlhfTest, RewardRunStoresItsScoreStatistics) {
  const kiln::SafetensorsFile file(kiln::resolve_checkpoint(fx().reward_run()) + "/model.safetensors");
  ASSERT_TRUE(file.metadata().count("kiln_score_mean") && file.metadata().count("kiln_score_std"));
  const kiln::ScoreNorm norm = kiln::read_score_norm(fx().reward_run());
  ASSERT_TRUE(norm.stored);
  // The statistics of every response of the held-out pairs, recomputed.
  const kiln::ExperimentConfig c = fx().reward_config("unused");
  kiln::RewardStage stage(c, 0, 1);
  auto model = load(c, fx().reward_run(), true);
  kiln::StepContext ctx;
  const auto meta = stage.model_metadata(*model, ctx);
  EXPECT_NEAR(std::stod(meta.at("kiln_score_mean")), norm.mean, 1e-4);
  EXPECT_NEAR(std::stod(meta.at("kiln_score_std")), norm.std, 1e-4);
  EXPECT_GT(norm.std, 0.0);
}

// With data.val_prompts the stored statistics are those of the reference policy's responses, so
// that policy scores 0 on average with a standard deviation of 1 (Ziegler et al.'s normalisation),
// whatever the decoding batch.
TEST_F(RlhfTest, RewardNormalisedByTheReferencePolicyScoresItZeroWithDeviationOne) {
  kiln::ExperimentConfig c = fx().reward_config("reward_norm");
  c.data.val_prompts = fx().world("prompts_train.jsonl");
  c.train.max_steps = 2;
  train(c);
  const kiln::ScoreNorm norm = kiln::read_score_norm(c.train.run_dir);
  ASSERT_TRUE(norm.stored);
  ASSERT_GT(norm.std, 0.0);
  const kiln::SafetensorsFile file(kiln::resolve_checkpoint(c.train.run_dir) + "/model.safetensors");
  EXPECT_NE(file.metadata().at("kiln_score_samples").find("prompts_train.jsonl"), std::string::npos);
  auto policy = load(c, fx().sft_run(), false);
  auto reward = load(c, c.train.run_dir, true);
  const auto tokenizer = kiln::make_tokenizer("byte", "");
  const auto prompts = kiln::load_prompts(c.data.val_prompts, *tokenizer, c.train.seq_len, c.reward.norm_max_new_tokens);
  const kiln::PolicyScores s =
      kiln::score_policy(*policy, *tokenizer, prompts, c.reward.norm_max_new_tokens, c.train.seq_len, 3, 0, 1,
                         [](double*, std::int64_t) {}, reward.get(), norm, c.reward.norm_temperature, c.train.seed);
  EXPECT_NEAR(s.proxy, 0.0, 1e-4);
  EXPECT_NEAR(s.proxy_std, 1.0, 1e-4);
  // Other samples of the same policy (another seed) do not score exactly 0 and 1.
  const kiln::PolicyScores other =
      kiln::score_policy(*policy, *tokenizer, prompts, c.reward.norm_max_new_tokens, c.train.seq_len, 3, 0, 1,
                         [](double*, std::int64_t) {}, reward.get(), norm, c.reward.norm_temperature, c.train.seed + 1);
  EXPECT_GT(std::abs(other.proxy) + std::abs(other.proxy_std - 1.0), 1e-3);
}

TEST_F(RlhfTest, DpoAtTheReferenceLosesLog2AndItsGradientMatchesFiniteDifferences) {
  const kiln::ExperimentConfig c = fx().dpo_config("unused");
  kiln::DpoStage stage(c, 0, 1);
  auto policy = load(c, fx().sft_run(), false);
  auto reference = load(c, fx().sft_run(), false);
  stage.attach({{"reference", reference.get()}});
  const std::vector<std::size_t> ids = stage.train_data().step_pairs(0, c.train.micro_batch, 1, 0, 1);
  const kiln::PairBatch pb = stage.train_data().batch(ids);
  const auto ref = kiln::DpoStage::sequence_logprobs(*reference, pb);
  policy->zero_grad();
  kiln::StepContext ctx;
  const kiln::StepLoss step = stage.accumulate_gradients(*policy, ctx);
  // Policy = reference: h = 0 for every pair, so the loss is log 2 (closed form) ...
  EXPECT_NEAR(step.loss_sum / static_cast<double>(step.tokens), std::log(2.0), 1e-12);
  const kiln::Tensor& g = policy->gradient_buffer();
  const std::vector<float> grads(g.f32(), g.f32() + g.numel());
  // ... and the gradient is that of the DPO loss of the summed log-probabilities.
  auto loss = [&] {
    const auto s = kiln::DpoStage::sequence_logprobs(*policy, pb);
    double sum = 0.0;
    for (std::size_t j = 0; j < s.size(); ++j)
      sum += kiln::dpo_loss(s[j].first, s[j].second, ref[j].first, ref[j].second, c.dpo.beta, 0.0, false).loss;
    return sum / static_cast<double>(s.size());
  };
  expect_model_gradient(*policy, grads, loss, {"transformer.h.1.mlp.c_proj.weight", "transformer.h.0.attn.c_attn.weight", "transformer.wte.weight", "transformer.ln_f.weight"});
}

TEST_F(RlhfTest, DpoWithPrecomputedReferenceMatchesLive) {
  kiln::ExperimentConfig live = fx().dpo_config("dpo_live"), pre = fx().dpo_config("dpo_pre");
  pre.dpo.reference = "precomputed";
  const kiln::TrainResult a = train(live), b = train(pre);
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (std::size_t i = 0; i < a.losses.size(); ++i) EXPECT_NEAR(a.losses[i], b.losses[i], 1e-5) << "step " << i + 1;
  EXPECT_NEAR(a.losses.front(), std::log(2.0), 1e-12);  // the policy starts at the reference
}

TEST_F(RlhfTest, PpoFirstMinibatchHasRatioOneAndKlZero) {
  kiln::ExperimentConfig c = fx().ppo_config("ppo_first");
  c.train.max_steps = 4;
  train(c);
  const auto m = metrics(c);
  ASSERT_EQ(m.size(), 4u);
  // The policy is the reference at the first rollout: every KL is exactly 0, and the
  // log-probabilities training recomputes (other rows, other micro-batches) equal the rollout's
  // bit for bit, so the first minibatch's ratios are exactly 1 (nothing clipped).
  EXPECT_EQ(m[0]["kl"].get<double>(), 0.0);
  EXPECT_EQ(m[0]["logprob_diff"].get<double>(), 0.0);
  EXPECT_EQ(m[0]["approx_kl"].get<double>(), 0.0);
  EXPECT_EQ(m[0]["clipfrac"].get<double>(), 0.0);
  EXPECT_LT(m[0]["logprob_decode_diff"].get<double>(), 1e-4);  // the decoder's own, to fp32 rounding
  // After an update the policy has moved.
  EXPECT_GT(m[1]["logprob_diff"].get<double>(), 0.0);
  for (const char* key : {"reward", "proxy", "gold", "entropy", "length", "value_explained_var", "value_loss", "value_grad_norm"})
    EXPECT_TRUE(m[0].contains(key)) << key;
}

TEST_F(RlhfTest, EveryStageResumesBitExactly) {
  for (const std::string& stage : {"reward", "dpo", "ppo"}) {
    auto config = [&](const std::string& run) {
      kiln::ExperimentConfig c = stage == "reward" ? fx().reward_config(run)
                                 : stage == "dpo"  ? fx().dpo_config(run)
                                                   : fx().ppo_config(run);
      c.train.max_steps = 6;
      c.checkpoint.every = 3;
      return c;
    };
    const kiln::TrainResult whole = train(config(stage + "_whole"));
    kiln::TrainOptions stop;
    stop.stop_after = 3;
    train(config(stage + "_resumed"), stop);
    kiln::TrainOptions resume;
    resume.resume = "auto";
    const kiln::TrainResult rest = train(config(stage + "_resumed"), resume);
    ASSERT_EQ(rest.losses.size(), 3u) << stage;
    for (int i = 0; i < 3; ++i) EXPECT_EQ(rest.losses[i], whole.losses[3 + i]) << stage << " step " << 4 + i;
    const auto a = metrics(config(stage + "_whole")), b = metrics(config(stage + "_resumed"));
    ASSERT_EQ(a.size(), b.size());
    for (std::size_t i = 3; i < a.size(); ++i)
      for (const char* key : {"value_loss", "accuracy", "reward"})
        if (a[i].contains(key)) EXPECT_EQ(a[i][key], b[i][key]) << stage << " " << key << " step " << i + 1;
    if (stage == "ppo")
      EXPECT_TRUE(fs::exists(kiln::resolve_checkpoint(config(stage + "_whole").train.run_dir) + "/value.safetensors"));
  }
}

TEST_F(RlhfTest, BadInputNamesTheRecordOrTheKey) {
  const fs::path bad = fx().dir() / "bad";
  fs::create_directories(bad);
  std::ofstream(bad / "missing.jsonl") << "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n"
                                        << "{\"prompt\": \"a\", \"chosen\": \"b\"}\n";
  std::ofstream(bad / "same.jsonl") << "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"b\"}\n";
  std::ofstream(bad / "long.jsonl") << nlohmann::json{{"prompt", std::string(125, 'x')}}.dump() << "\n";
  kiln::ExperimentConfig c = fx().reward_config("bad_run");
  c.data.preferences = (bad / "missing.jsonl").string();
  EXPECT_NE(error_of([&] { kiln::RewardStage(c, 0, 1); }).find("missing.jsonl:2"), std::string::npos);
  EXPECT_NE(error_of([&] { kiln::RewardStage(c, 0, 1); }).find("rejected"), std::string::npos);
  c.data.preferences = (bad / "same.jsonl").string();
  EXPECT_NE(error_of([&] { kiln::RewardStage(c, 0, 1); }).find("same.jsonl:1: 'chosen' and 'rejected' are the same"),
            std::string::npos);
  kiln::ExperimentConfig p = fx().ppo_config("bad_ppo");
  p.data.prompts = (bad / "long.jsonl").string();
  EXPECT_NE(error_of([&] { kiln::PpoStage(p, 0, 1); }).find("long.jsonl:1: the prompt is 125 tokens, which leaves no room"),
            std::string::npos);
  // A reward model that is a language model (no scalar head).
  p = fx().ppo_config("bad_ppo");
  p.roles.reward = fx().sft_run();
  EXPECT_NE(error_of([&] { kiln::Trainer t(p, {}); }).find("has no scalar head (score.weight)"), std::string::npos);
  // A role that reads other tokens.
  const fs::path other = fx().dir() / "gpt2_reward";
  fs::copy(kiln::resolve_checkpoint(fx().reward_run()), other);
  std::ifstream in(other / "config.yaml");
  std::string yaml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  std::ofstream(other / "config.yaml") << std::regex_replace(yaml, std::regex("tokenizer: \"byte\""), "tokenizer: \"gpt2\"");
  p.roles.reward = other.string();
  const std::string tokenizer_error = error_of([&] { kiln::Trainer t(p, {}); });
  EXPECT_NE(tokenizer_error.find("data.tokenizer=gpt2 but this run reads data.tokenizer=byte"), std::string::npos)
      << tokenizer_error;
  // Config keys a stage needs, or does not read.
  kiln::ExperimentConfig d = fx().dpo_config("bad_dpo");
  d.data.preferences = "";
  EXPECT_NE(error_of([&] { kiln::parse_config(kiln::to_yaml(d), "dpo.yaml"); }).find("set data.preferences"),
            std::string::npos);
  kiln::ExperimentConfig r = fx().reward_config("bad_reward");
  r.roles.reward = fx().reward_run();
  EXPECT_NE(error_of([&] { kiln::parse_config(kiln::to_yaml(r), "reward.yaml"); }).find("roles.reward and roles.value are read by train.stage=ppo"),
            std::string::npos);
  r.roles.reward = "";
  r.roles.reference = fx().sft_run();
  EXPECT_NE(error_of([&] { kiln::parse_config(kiln::to_yaml(r), "reward.yaml"); }).find("set data.val_prompts, or roles.reference"),
            std::string::npos);
  r.roles.reference = r.train.init_from = "";
  r.data.val_prompts = fx().world("prompts_val.jsonl");
  EXPECT_NE(error_of([&] { kiln::parse_config(kiln::to_yaml(r), "reward.yaml"); }).find("set roles.reference (or train.init_from)"),
            std::string::npos);
}

TEST_F(RlhfTest, PpoPtxAddsTheSftLossOfTheMixture) {
  kiln::ExperimentConfig plain = fx().ppo_config("ppo_plain"), ptx = fx().ppo_config("ppo_ptx");
  plain.train.max_steps = ptx.train.max_steps = 2;
  ptx.ppo.ptx_coef = 0.5f;
  ptx.data.mixture = fx().world("mixture_sft.yaml");
  const kiln::TrainResult a = train(plain), b = train(ptx);
  const auto m = metrics(ptx);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_GT(m[0]["ptx_loss"].get<double>(), 0.0);
  EXPECT_FALSE(metrics(plain)[0].contains("ptx_loss"));
  // The same rollout and first policy loss; the SFT term moves the policy differently.
  EXPECT_EQ(a.losses[0], b.losses[0]);
  EXPECT_NE(a.losses[1], b.losses[1]);
}
