// Scaling-law fits (scaling_law.h).
#include "core/scaling/scaling_law.h"

#include <lbfgs.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "kernels/error.h"

namespace kiln::scaling {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Least squares for up to 3 unknowns: minimise |y - X c|^2 over the columns in `use`. Solves the
// normal equations by Gaussian elimination with partial pivoting; false when singular.
template <int K>
bool least_squares(const std::vector<std::array<double, K>>& x, const std::vector<double>& y,
                   const std::array<bool, K>& use, std::array<double, K>& c) {
  std::array<int, K> col{};
  int m = 0;
  for (int k = 0; k < K; ++k)
    if (use[k]) col[m++] = k;
  double g[K][K + 1] = {};
  for (std::size_t i = 0; i < y.size(); ++i)
    for (int r = 0; r < m; ++r) {
      for (int s = 0; s < m; ++s) g[r][s] += x[i][col[r]] * x[i][col[s]];
      g[r][m] += x[i][col[r]] * y[i];
    }
  for (int p = 0; p < m; ++p) {
    int best = p;
    for (int r = p + 1; r < m; ++r)
      if (std::fabs(g[r][p]) > std::fabs(g[best][p])) best = r;
    if (std::fabs(g[best][p]) < 1e-300) return false;
    for (int s = 0; s <= m; ++s) std::swap(g[p][s], g[best][s]);
    for (int r = 0; r < m; ++r) {
      if (r == p) continue;
      const double f = g[r][p] / g[p][p];
      for (int s = p; s <= m; ++s) g[r][s] -= f * g[p][s];
    }
  }
  c.fill(0.0);
  for (int r = 0; r < m; ++r) c[col[r]] = g[r][m] / g[r][r];
  return true;
}

// A line y = slope x + intercept by least squares, with R^2.
struct Line {
  double slope = 0, intercept = 0, r2 = 0;
};
Line fit_line(const std::vector<double>& x, const std::vector<double>& y) {
  std::vector<std::array<double, 2>> rows;
  for (double v : x) rows.push_back({v, 1.0});
  std::array<double, 2> c{};
  KILN_CHECK(least_squares<2>(rows, y, {true, true}, c), "a power-law fit needs at least 2 distinct points");
  double mean = 0, total = 0, residual = 0;
  for (double v : y) mean += v / y.size();
  for (std::size_t i = 0; i < y.size(); ++i) {
    total += (y[i] - mean) * (y[i] - mean);
    const double e = y[i] - c[0] * x[i] - c[1];
    residual += e * e;
  }
  return {c[0], c[1], total > 0 ? 1.0 - residual / total : 1.0};
}

PowerLaw fit_power_law(const std::vector<double>& x, const std::vector<double>& y) {
  std::vector<double> lx, ly;
  for (std::size_t i = 0; i < x.size(); ++i) {
    lx.push_back(std::log(x[i]));
    ly.push_back(std::log(y[i]));
  }
  const Line line = fit_line(lx, ly);  // log y = -alpha log x + alpha log x_c
  PowerLaw law;
  law.alpha = -line.slope;
  law.x_c = law.alpha != 0 ? std::exp(line.intercept / law.alpha) : 0.0;
  law.r2 = line.r2;
  law.points = static_cast<int>(x.size());
  return law;
}

bool same(double a, double b) { return std::fabs(a - b) <= 1e-9 * std::max(std::fabs(a), std::fabs(b)); }

// For each distinct value of key(run), the run with the largest other(run).
std::vector<int> best_per(const std::vector<RunPoint>& runs, double RunPoint::*key, double RunPoint::*other) {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(runs.size()); ++i) {
    auto it = std::find_if(out.begin(), out.end(), [&](int j) { return same(runs[j].*key, runs[i].*key); });
    if (it == out.end())
      out.push_back(i);
    else if (runs[i].*other > runs[*it].*other || (same(runs[i].*other, runs[*it].*other) && runs[i].loss < runs[*it].loss))
      *it = i;
  }
  return out;
}

std::optional<PowerLaw> law_over(const std::vector<RunPoint>& runs, const std::vector<int>& idx, double RunPoint::*x) {
  if (idx.size() < 2) return std::nullopt;
  std::vector<double> xs, ys;
  for (int i : idx) {
    xs.push_back(runs[i].*x);
    ys.push_back(runs[i].loss);
  }
  return fit_power_law(xs, ys);
}

// --- Approach 3 ------------------------------------------------------------------------------

struct HuberProblem {
  std::vector<double> log_n, log_d, log_l;
  double delta;
};

// The summed Huber loss of log-loss residuals and its gradient; x = (a, b, e, alpha, beta).
lbfgsfloatval_t huber_objective(void* instance, const lbfgsfloatval_t* x, lbfgsfloatval_t* g, int, lbfgsfloatval_t) {
  const auto& p = *static_cast<const HuberProblem*>(instance);
  std::fill(g, g + 5, 0.0);
  double f = 0;
  for (std::size_t i = 0; i < p.log_l.size(); ++i) {
    const double u1 = x[0] - x[3] * p.log_n[i], u2 = x[1] - x[4] * p.log_d[i], u3 = x[2];
    const double m = std::max({u1, u2, u3});
    const double e1 = std::exp(u1 - m), e2 = std::exp(u2 - m), e3 = std::exp(u3 - m), s = e1 + e2 + e3;
    const double r = m + std::log(s) - p.log_l[i];
    double dr;
    if (std::fabs(r) <= p.delta) {
      f += 0.5 * r * r;
      dr = r;
    } else {
      f += p.delta * (std::fabs(r) - 0.5 * p.delta);
      dr = r > 0 ? p.delta : -p.delta;
    }
    const double w1 = e1 / s, w2 = e2 / s, w3 = e3 / s;
    g[0] += dr * w1;
    g[1] += dr * w2;
    g[2] += dr * w3;
    g[3] -= dr * w1 * p.log_n[i];
    g[4] -= dr * w2 * p.log_d[i];
  }
  return f;
}

Chinchilla to_chinchilla(const double* x, double objective) {
  Chinchilla c;
  c.A = std::exp(x[0]);
  c.B = std::exp(x[1]);
  c.E = std::exp(x[2]);
  c.alpha = x[3];
  c.beta = x[4];
  c.objective = objective;
  return c;
}

// --- variable projection ---------------------------------------------------------------------

// The best E, A, B >= 0 for fixed exponents, in least squares on L; the sum of squares.
double project(const std::vector<RunPoint>& runs, double alpha, double beta, Chinchilla* out) {
  std::vector<std::array<double, 3>> x;
  std::vector<double> y;
  double sx = 0, sy = 0;
  for (const RunPoint& r : runs) {
    sx = std::max(sx, std::pow(r.params, -alpha));
    sy = std::max(sy, std::pow(r.tokens, -beta));
  }
  for (const RunPoint& r : runs) {  // columns scaled to at most 1, for conditioning
    x.push_back({1.0, std::pow(r.params, -alpha) / sx, std::pow(r.tokens, -beta) / sy});
    y.push_back(r.loss);
  }
  double best = kInf;
  std::array<double, 3> best_c{};
  // The nonnegative optimum is the unconstrained optimum over some subset of the columns whose
  // coefficients are all >= 0 (the KKT conditions): try every subset, keep the best feasible.
  for (int mask = 1; mask < 8; ++mask) {
    std::array<double, 3> c{};
    if (!least_squares<3>(x, y, {(mask & 1) != 0, (mask & 2) != 0, (mask & 4) != 0}, c)) continue;
    if (c[0] < 0 || c[1] < 0 || c[2] < 0) continue;
    double sse = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      const double e = y[i] - c[0] * x[i][0] - c[1] * x[i][1] - c[2] * x[i][2];
      sse += e * e;
    }
    if (sse < best) {
      best = sse;
      best_c = c;
    }
  }
  if (out != nullptr) {
    out->E = best_c[0];
    out->A = best_c[1] / sx;
    out->B = best_c[2] / sy;
    out->alpha = alpha;
    out->beta = beta;
    out->objective = best;
  }
  return best;
}

}  // namespace

double PowerLaw::operator()(double x) const { return std::pow(x_c / x, alpha); }

double Chinchilla::loss(double n, double d) const { return E + A / std::pow(n, alpha) + B / std::pow(d, beta); }

std::pair<double, double> Chinchilla::optimal(double flops) const {
  const double g = std::pow(alpha * A / (beta * B), 1.0 / (alpha + beta));
  const double n = g * std::pow(flops / 6.0, a());
  return {n, flops / 6.0 / n};
}

void check_run(const RunPoint& r) {
  const auto bad = [](double v) { return !std::isfinite(v) || v <= 0; };
  KILN_CHECK(!bad(r.params), "run '", r.name, "': parameters ", r.params, " must be a positive number");
  KILN_CHECK(!bad(r.tokens), "run '", r.name, "': tokens ", r.tokens, " must be a positive number");
  KILN_CHECK(!bad(r.flops), "run '", r.name, "': flops ", r.flops, " must be a positive number");
  KILN_CHECK(!bad(r.loss), "run '", r.name, "': loss ", r.loss, " must be a positive, finite number");
}

void check_runs(const std::vector<RunPoint>& runs) {
  for (const RunPoint& r : runs) check_run(r);
  std::vector<double> ns, ds;
  for (const RunPoint& r : runs) {
    if (std::none_of(ns.begin(), ns.end(), [&](double v) { return same(v, r.params); })) ns.push_back(r.params);
    if (std::none_of(ds.begin(), ds.end(), [&](double v) { return same(v, r.tokens); })) ds.push_back(r.tokens);
  }
  KILN_CHECK(runs.size() >= 5 && ns.size() >= 2 && ds.size() >= 2, "a fit of L(N, D) = E + A/N^alpha + B/D^beta needs "
             "at least 5 finished runs with at least 2 model sizes and 2 token counts (5 unknowns); there are ",
             runs.size(), " run(s) with ", ns.size(), " size(s) and ", ds.size(), " token count(s)");
}

KaplanFits fit_kaplan(const std::vector<RunPoint>& runs) {
  KaplanFits out;
  // L(N): the largest token count shared by 3 or more sizes, else the most tokens of each size.
  for (const RunPoint& r : runs) {
    std::vector<int> shared;
    for (int i = 0; i < static_cast<int>(runs.size()); ++i)
      if (same(runs[i].tokens, r.tokens) &&
          std::none_of(shared.begin(), shared.end(), [&](int j) { return same(runs[j].params, runs[i].params); }))
        shared.push_back(i);
    if (shared.size() >= 3 && r.tokens > out.of_params_tokens) {
      out.of_params_tokens = r.tokens;
      out.of_params = law_over(runs, shared, &RunPoint::params);
    }
  }
  if (out.of_params_tokens == 0)
    out.of_params = law_over(runs, best_per(runs, &RunPoint::params, &RunPoint::tokens), &RunPoint::params);
  out.of_tokens = law_over(runs, best_per(runs, &RunPoint::tokens, &RunPoint::params), &RunPoint::tokens);
  std::vector<int> order(runs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return runs[x].flops < runs[y].flops; });
  double best = kInf;
  for (int i : order)
    if (runs[i].loss < best) {
      best = runs[i].loss;
      out.frontier.push_back(i);
    }
  out.of_compute = law_over(runs, out.frontier, &RunPoint::flops);
  return out;
}

Chinchilla fit_chinchilla_huber(const std::vector<RunPoint>& runs, const HuberOptions& options) {
  HuberProblem problem;
  problem.delta = options.delta;
  for (const RunPoint& r : runs) {
    problem.log_n.push_back(std::log(r.params));
    problem.log_d.push_back(std::log(r.tokens));
    problem.log_l.push_back(std::log(r.loss));
  }
  lbfgs_parameter_t param;
  lbfgs_parameter_init(&param);
  param.epsilon = 1e-10;  // the summed Huber gradient is small by nature (|psi| <= delta per run)
  param.max_iterations = 1000;
  std::vector<std::array<double, 5>> starts;
  for (double al : options.alphas)
    for (double be : options.betas)
      for (double e : options.es)
        for (double a : options.as)
          for (double b : options.bs) starts.push_back({a, b, e, al, be});
  for (const Chinchilla& c : options.extra_starts)
    starts.push_back({std::log(c.A), std::log(c.B), std::log(c.E), c.alpha, c.beta});
  Chinchilla best;
  best.objective = kInf;
  lbfgsfloatval_t* x = lbfgs_malloc(5);
  for (const auto& start : starts) {
    std::copy(start.begin(), start.end(), x);
    lbfgsfloatval_t f = 0;
    lbfgs(5, x, &f, huber_objective, nullptr, &problem, &param);  // any stop leaves the best point found
    double g[5];
    f = huber_objective(&problem, x, g, 5, 0);  // the objective at the point returned
    if (std::isfinite(f) && f < best.objective && std::all_of(x, x + 5, [](double v) { return std::isfinite(v); }))
      best = to_chinchilla(x, f);
  }
  lbfgs_free(x);
  KILN_CHECK(std::isfinite(best.objective), "the Huber fit of L(N, D) found no finite optimum from ", starts.size(),
             " starts");
  return best;
}

Chinchilla fit_chinchilla_varpro(const std::vector<RunPoint>& runs) {
  double best_a = 0, best_b = 0, best = kInf;
  const auto search = [&](double a0, double a1, double b0, double b1, double step) {
    for (double a = a0; a <= a1 + 1e-12; a += step)
      for (double b = b0; b <= b1 + 1e-12; b += step) {
        if (a <= 0 || b <= 0) continue;
        const double sse = project(runs, a, b, nullptr);
        if (sse < best) {
          best = sse;
          best_a = a;
          best_b = b;
        }
      }
  };
  search(0.02, 2.0, 0.02, 2.0, 0.02);
  search(best_a - 0.02, best_a + 0.02, best_b - 0.02, best_b + 0.02, 1e-3);
  search(best_a - 1e-3, best_a + 1e-3, best_b - 1e-3, best_b + 1e-3, 1e-4);
  Chinchilla out;
  project(runs, best_a, best_b, &out);
  return out;
}

Approach2 fit_approach2(const std::vector<RunPoint>& runs) {
  // Groups: the runs' own labels; runs without one are grouped by compute within 10%, unless
  // some runs have labels (a sweep of compute budgets beside token budgets: the token-budget runs
  // share a compute only by chance, so they form no IsoFLOP group).
  std::vector<std::vector<int>> groups;
  std::vector<std::string> names;
  std::map<std::string, int> by_label;
  const bool labelled = std::any_of(runs.begin(), runs.end(), [](const RunPoint& r) { return !r.group.empty(); });
  for (int i = 0; i < static_cast<int>(runs.size()); ++i) {
    const RunPoint& r = runs[i];
    if (labelled && r.group.empty()) continue;
    if (!r.group.empty()) {
      auto [it, fresh] = by_label.emplace(r.group, static_cast<int>(groups.size()));
      if (fresh) {
        groups.emplace_back();
        names.push_back(r.group);
      }
      groups[it->second].push_back(i);
      continue;
    }
    bool placed = false;
    for (std::size_t g = 0; g < groups.size() && !placed; ++g)
      if (names[g].rfind("C~", 0) == 0 && std::fabs(std::log(runs[groups[g][0]].flops / r.flops)) < std::log(1.1)) {
        groups[g].push_back(i);
        placed = true;
      }
    if (!placed) {
      groups.push_back({i});
      char label[32];
      std::snprintf(label, sizeof label, "C~%.2g", r.flops);
      names.push_back(label);
    }
  }
  Approach2 out;
  std::vector<double> log_c, log_n, log_d;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    std::vector<double> ns;
    for (int i : groups[g])
      if (std::none_of(ns.begin(), ns.end(), [&](double v) { return same(v, runs[i].params); })) ns.push_back(runs[i].params);
    if (ns.size() < 3) continue;
    std::vector<std::array<double, 3>> x;
    std::vector<double> y;
    double flops = 0, t_min = kInf, t_max = -kInf;
    for (int i : groups[g]) {
      const double t = std::log(runs[i].params);
      x.push_back({1.0, t, t * t});
      y.push_back(runs[i].loss);
      flops += runs[i].flops / groups[g].size();
      t_min = std::min(t_min, t);
      t_max = std::max(t_max, t);
    }
    std::array<double, 3> c{};
    if (!least_squares<3>(x, y, {true, true, true}, c) || c[2] <= 0) {  // no minimum
      out.without_minimum.push_back(names[g]);
      continue;
    }
    IsoFlopGroup group;
    group.name = names[g];
    group.flops = flops;
    group.p0 = c[0];
    group.p1 = c[1];
    group.p2 = c[2];
    const double t = -c[1] / (2 * c[2]);
    group.inside = t >= t_min && t <= t_max;
    group.n_opt = std::exp(t);
    group.d_opt = flops / 6.0 / group.n_opt;
    group.loss_min = c[0] + c[1] * t + c[2] * t * t;
    out.groups.push_back(group);
    log_c.push_back(std::log(flops));
    log_n.push_back(t);
    log_d.push_back(std::log(group.d_opt));
  }
  std::sort(out.groups.begin(), out.groups.end(), [](const IsoFlopGroup& x, const IsoFlopGroup& y) { return x.flops < y.flops; });
  if (out.groups.size() >= 2) {
    const Line n = fit_line(log_c, log_n), d = fit_line(log_c, log_d);
    out.a = n.slope;
    out.log_kn = n.intercept;
    out.b = d.slope;
    out.log_kd = d.intercept;
    out.fitted = true;
  }
  return out;
}

Interval percentile_interval(std::vector<double> values, double level) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  const auto at = [&](double q) {
    const double pos = q * (values.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(pos));
    const std::size_t hi = std::min(lo + 1, values.size() - 1);
    return values[lo] + (pos - lo) * (values[hi] - values[lo]);
  };
  return {at((1 - level) / 2), at(1 - (1 - level) / 2)};
}

Bootstrap bootstrap_chinchilla(const std::vector<RunPoint>& runs, const Chinchilla& full, int samples,
                               std::uint64_t seed, double delta) {
  Bootstrap out;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::size_t> pick(0, runs.size() - 1);
  HuberOptions options;  // a small grid of starts, and the full fit's optimum
  options.delta = delta;
  options.alphas = {0.2, 1.0};
  options.betas = {0.2, 1.0};
  options.es = {-0.5, 0.5};
  options.as = {5, 15};
  options.bs = {5, 15};
  options.extra_starts = {full};
  for (int s = 0; s < samples; ++s) {
    std::vector<RunPoint> resample;
    std::set<double> ns, ds;
    for (int tries = 0; tries < 100 && (ns.size() < 2 || ds.size() < 2); ++tries) {
      resample.clear();
      ns.clear();
      ds.clear();
      for (std::size_t i = 0; i < runs.size(); ++i) {
        resample.push_back(runs[pick(rng)]);
        ns.insert(resample.back().params);
        ds.insert(resample.back().tokens);
      }
    }
    out.fits.push_back(fit_chinchilla_huber(resample, options));
  }
  out.samples = samples;
  out.E = out.of([](const Chinchilla& c) { return c.E; });
  out.A = out.of([](const Chinchilla& c) { return c.A; });
  out.B = out.of([](const Chinchilla& c) { return c.B; });
  out.alpha = out.of([](const Chinchilla& c) { return c.alpha; });
  out.beta = out.of([](const Chinchilla& c) { return c.beta; });
  out.a = out.of([](const Chinchilla& c) { return c.a(); });
  out.b = out.of([](const Chinchilla& c) { return c.b(); });
  return out;
}

}  // namespace kiln::scaling
