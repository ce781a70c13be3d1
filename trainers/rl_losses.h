// The losses and estimators of preference tuning, as plain functions of numbers (no model), each
// returning its value and its derivatives so the stages can hand them to the heads: the reward
// model's Bradley-Terry loss, DPO's and IPO's losses, PPO's clipped policy and value losses, the
// KL penalty's estimators, generalised advantage estimation and the adaptive KL coefficient.
// tests/trainers/test_rl_losses.cpp checks each derivative by finite differences and GAE
// against direct summation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

// -log sigmoid(x), computed without overflow.
double softplus_neg(double x);
double sigmoid(double x);

// Pairwise Bradley-Terry: loss = -log sigmoid(r_chosen - r_rejected - margin)
//                              + center * (r_chosen + r_rejected)^2
// (the centring term keeps scores near 0, InstructGPT's normalisation in loss form).
struct PairLoss {
  double loss, d_chosen, d_rejected;
};
PairLoss bradley_terry(double r_chosen, double r_rejected, double margin, double center);

// DPO on one pair, from the summed log-probabilities of the chosen and rejected responses under
// the policy and the reference. h = (pc - refc) - (pr - refr);
//   sigmoid: loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (eps: label smoothing)
//   ipo:     loss = (h - 1 / (2 beta))^2
// d_chosen and d_rejected are the derivatives with respect to pc and pr; the implicit rewards are
// beta (pc - refc) and beta (pr - refr).
struct DpoTerms {
  double loss, d_chosen, d_rejected, reward_chosen, reward_rejected;
};
DpoTerms dpo_loss(double pc, double pr, double refc, double refr, double beta, double label_smoothing, bool ipo);

// The per-token KL penalty's estimate of KL(policy || reference) from the sampled token's
// log-probabilities (Schulman's estimators): k1 = logp - ref (unbiased, can be negative),
// k2 = (logp - ref)^2 / 2, k3 = exp(ref - logp) - 1 - (ref - logp) (unbiased and >= 0).
double kl_estimate(double logp, double ref, const std::string& estimator);

// PPO's clipped surrogate for one token: ratio = exp(logp - old),
//   loss = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)
// d_logp is its derivative with respect to logp (0 where the clipped branch is taken);
// clipped is whether it was.
struct PolicyTerms {
  double loss, d_logp, ratio;
  bool clipped;
};
PolicyTerms ppo_policy_loss(double logp, double old_logp, double advantage, double clip);

// PPO's clipped value loss for one token: v_clip = old + clip(v - old, -eps, eps),
//   loss = max((v - R)^2, (v_clip - R)^2) / 2      (eps <= 0: the plain (v - R)^2 / 2)
struct ValueTerms {
  double loss, d_value;
  bool clipped;
};
ValueTerms ppo_value_loss(double value, double old_value, double ret, double clip);

// Generalised advantage estimation over one response of T tokens: rewards[t] and values[t]
// (the value of the state before token t), bootstrap 0 after the last token:
//   delta_t = r_t + gamma V_{t+1} - V_t,   A_t = sum_k (gamma lambda)^k delta_{t+k},  R_t = A_t + V_t
void gae(const std::vector<double>& rewards, const std::vector<double>& values, double gamma, double lambda,
         std::vector<double>& advantages, std::vector<double>& returns);

// The adaptive KL coefficient of Ziegler et al. (2019): after a rollout of n sequences whose mean
// KL was kl, coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon. target 0: fixed.
struct KlController {
  double coef = 0.0;
  double target = 0.0;
  double horizon = 10000.0;
  void update(double kl, std::int64_t n);
};

}  // namespace kiln
