// Preference-tuning losses and estimators (rl_losses.h).
#include "trainers/rl_losses.h"

#include <algorithm>
#include <cmath>

#include "kernels/error.h"

namespace kiln {

double softplus_neg(double x) { return x > 0 ? std::log1p(std::exp(-x)) : -x + std::log1p(std::exp(x)); }

double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

PairLoss bradley_terry(double r_chosen, double r_rejected, double margin, double center) {
  const double d = r_chosen - r_rejected - margin, s = r_chosen + r_rejected;
  const double g = -sigmoid(-d);  // d/dd of -log sigmoid(d)
  return {softplus_neg(d) + center * s * s, g + 2.0 * center * s, -g + 2.0 * center * s};
}

DpoTerms dpo_loss(double pc, double pr, double refc, double refr, double beta, double eps, bool ipo) {
  const double h = (pc - refc) - (pr - refr);
  double loss = 0.0, dh = 0.0;
  if (ipo) {
    const double gap = h - 1.0 / (2.0 * beta);
    loss = gap * gap;
    dh = 2.0 * gap;
  } else {
    const double z = beta * h;
    loss = (1.0 - eps) * softplus_neg(z) + eps * softplus_neg(-z);
    dh = beta * (-(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z));
  }
  return {loss, dh, -dh, beta * (pc - refc), beta * (pr - refr)};
}

double kl_estimate(double logp, double ref, const std::string& estimator) {
  const double d = logp - ref;
  if (estimator == "k1") return d;
  if (estimator == "k2") return 0.5 * d * d;
  KILN_CHECK(estimator == "k3", "unknown KL estimator '", estimator, "'; use k1, k2 or k3");
  return std::expm1(-d) + d;
}

PolicyTerms ppo_policy_loss(double logp, double old_logp, double advantage, double clip) {
  const double ratio = std::exp(logp - old_logp);
  const double clipped_ratio = std::clamp(ratio, 1.0 - clip, 1.0 + clip);
  const double plain = ratio * advantage, cut = clipped_ratio * advantage;
  // -min(plain, cut): the clipped branch carries no gradient when it is the smaller one and the
  // ratio lies outside the interval.
  const bool clipped = cut < plain;
  return {-std::min(plain, cut), clipped ? 0.0 : -plain, ratio, clipped};
}

ValueTerms ppo_value_loss(double value, double old_value, double ret, double clip) {
  const double plain = value - ret;
  if (clip <= 0) return {0.5 * plain * plain, plain, false};
  const double v_clip = old_value + std::clamp(value - old_value, -clip, clip);
  const double cut = v_clip - ret;
  if (cut * cut > plain * plain) {
    // The clipped term is the larger: its derivative is 0 when the clip is active.
    const bool active = std::abs(value - old_value) > clip;
    return {0.5 * cut * cut, active ? 0.0 : cut, active};
  }
  return {0.5 * plain * plain, plain, false};
}

void gae(const std::vector<double>& rewards, const std::vector<double>& values, double gamma, double lambda,
         std::vector<double>& advantages, std::vector<double>& returns) {
  KILN_ASSERT(rewards.size() == values.size());
  const std::size_t n = rewards.size();
  advantages.assign(n, 0.0);
  returns.assign(n, 0.0);
  double next_adv = 0.0, next_value = 0.0;
  for (std::size_t t = n; t-- > 0;) {
    const double delta = rewards[t] + gamma * next_value - values[t];
    next_adv = delta + gamma * lambda * next_adv;
    advantages[t] = next_adv;
    returns[t] = next_adv + values[t];
    next_value = values[t];
  }
}

void KlController::update(double kl, std::int64_t n) {
  if (target <= 0) return;
  const double error = std::clamp(kl / target - 1.0, -0.2, 0.2);
  coef *= 1.0 + error * static_cast<double>(n) / horizon;
}

}  // namespace kiln
