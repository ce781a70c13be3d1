// Scaling laws fitted to finished runs (docs/scaling.md): Kaplan et al.'s single-variable power
// laws, Hoffmann et al.'s L(N, D) = E + A/N^alpha + B/D^beta by their Approach 3 (Huber loss on
// log-loss, summed, L-BFGS from a grid of starts) and by variable projection as a check,
// Approach 2 (IsoFLOP minima), bootstrap intervals, and the compute-optimal allocation.
// N is parameters, D training tokens, C training compute with C = 6 N D.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kiln::scaling {

// One finished run: what the fits read.
struct RunPoint {
  std::string name;     // for messages and plots
  double params = 0;    // N
  double tokens = 0;    // D
  double flops = 0;     // C (6 N D unless the record says otherwise)
  double loss = 0;      // final validation loss
  std::string group;    // IsoFLOP group (a sweep's compute budget); "" when none
};

// y = (x_c / x)^alpha: Kaplan et al.'s form, fitted as a line in log-log space.
struct PowerLaw {
  double alpha = 0, x_c = 0;
  double r2 = 0;        // of the line in log space
  int points = 0;
  double operator()(double x) const;
};

// L(N, D) = E + A / N^alpha + B / D^beta.
struct Chinchilla {
  double E = 0, A = 0, B = 0, alpha = 0, beta = 0;
  double objective = 0;  // the fitting objective at the optimum (summed Huber, or sum of squares)
  double loss(double n, double d) const;
  // The compute-optimal exponents: N_opt ~ C^a, D_opt ~ C^b.
  double a() const { return beta / (alpha + beta); }
  double b() const { return alpha / (alpha + beta); }
  // The N and D that minimise loss(N, D) subject to 6 N D = flops.
  std::pair<double, double> optimal(double flops) const;
};

// The Kaplan et al. laws: L(N) over every size trained on the same data (the largest token count
// that 3 or more sizes share: a token-budget sweep), else over the runs with the most tokens for
// each N; L(D) over the runs with the most parameters for each D; and L(C) over the compute
// frontier (runs no run with less compute beats). A law needs at least 2 distinct points; absent
// otherwise.
struct KaplanFits {
  std::optional<PowerLaw> of_params, of_tokens, of_compute;
  double of_params_tokens = 0;  // the token count L(N)'s runs share; 0: the most tokens of each size
  std::vector<int> frontier;  // indices into the runs
};
KaplanFits fit_kaplan(const std::vector<RunPoint>& runs);

// Approach 3 as published: minimise the sum over runs of Huber_delta(log L_hat - log L), with
// log L_hat = LSE(a - alpha log N, b - beta log D, e) (A = exp a, B = exp b, E = exp e), by
// L-BFGS (libLBFGS) from every start of a grid; the best optimum wins.
struct HuberOptions {
  double delta = 1e-3;
  // The grid of starts (Hoffmann et al.'s): alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5,
  // ..., 1}, a, b in {0, 5, ..., 25}.
  std::vector<double> alphas{0, 0.5, 1, 1.5, 2}, betas{0, 0.5, 1, 1.5, 2}, es{-1, -0.5, 0, 0.5, 1},
      as{0, 5, 10, 15, 20, 25}, bs{0, 5, 10, 15, 20, 25};
  std::vector<Chinchilla> extra_starts;  // tried as well (a bootstrap starts from the full fit)
};
Chinchilla fit_chinchilla_huber(const std::vector<RunPoint>& runs, const HuberOptions& options = {});

// Variable projection: for fixed (alpha, beta) the best E, A, B >= 0 in least squares on L are a
// small linear problem solved exactly; alpha and beta are searched on a grid (0.02 apart over
// (0, 2]) and then refined around the best (1e-4 apart).
Chinchilla fit_chinchilla_varpro(const std::vector<RunPoint>& runs);

// Approach 2: in each IsoFLOP group (3 or more sizes), a parabola of loss against log N gives
// the loss-minimising N; then N_opt = k_n C^a and D_opt = k_d C^b are lines in log space. The
// groups are the runs' labels; without labels, runs within 10% in compute. When some runs have a
// label, the runs without one (a token-budget grid beside the compute budgets) are left out.
struct IsoFlopGroup {
  std::string name;
  double flops = 0;       // the group's mean compute
  double n_opt = 0, d_opt = 0, loss_min = 0;
  double p0 = 0, p1 = 0, p2 = 0;  // loss = p0 + p1 log N + p2 (log N)^2
  bool inside = true;     // the minimum lies within the group's sizes
};
struct Approach2 {
  std::vector<IsoFlopGroup> groups;
  double a = 0, b = 0, log_kn = 0, log_kd = 0;  // N_opt = exp(log_kn) C^a, D_opt = exp(log_kd) C^b
  bool fitted = false;    // at least 2 groups with a minimum
  std::vector<std::string> without_minimum;  // groups of 3+ sizes whose parabola opens downward
};
Approach2 fit_approach2(const std::vector<RunPoint>& runs);

// Percentile intervals from refitting Approach 3 on runs resampled with replacement.
struct Interval {
  double lo = 0, hi = 0;
};
struct Bootstrap {
  int samples = 0;
  Interval E, A, B, alpha, beta, a, b;
  std::vector<Chinchilla> fits;  // every resample's fit
  // The interval of a quantity over the resamples' fits.
  template <class F>
  Interval of(F f, double level = 0.95) const;
};
Bootstrap bootstrap_chinchilla(const std::vector<RunPoint>& runs, const Chinchilla& full, int samples,
                               std::uint64_t seed, double delta = 1e-3);

Interval percentile_interval(std::vector<double> values, double level = 0.95);

template <class F>
Interval Bootstrap::of(F f, double level) const {
  std::vector<double> values;
  for (const Chinchilla& fit : fits) values.push_back(f(fit));
  return percentile_interval(std::move(values), level);
}

// Every size, token count, compute and loss of a run positive and finite (errors name the run).
void check_run(const RunPoint& run);
// Checks runs before a fit: each by check_run; the Chinchilla fit needs at least 5 runs with 2
// distinct N and 2 distinct D.
void check_runs(const std::vector<RunPoint>& runs);

}  // namespace kiln::scaling
