// kiln scaling fit / plan (scaling.h).
#include "launch/scaling.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "core/checkpoint/atomic_file.h"
#include "core/config.h"
#include "core/model/spec.h"
#include "kernels/error.h"

namespace kiln::cli {

namespace fs = std::filesystem;
using nlohmann::json;
using scaling::Chinchilla;
using scaling::Interval;
using scaling::RunPoint;

std::vector<RunPoint> read_results(const std::string& path) {
  std::ifstream in(path);
  KILN_CHECK(in.good(), "results file '", path, "' cannot be read; kiln sweep writes one (results.jsonl in its run folder)");
  std::vector<RunPoint> runs;
  int number = 0, unfinished = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json record;
    try {
      record = json::parse(line);
    } catch (const json::exception& e) {
      throw Error(message(path, ":", number, ": not a JSON record (", e.what(), ")"));
    }
    KILN_CHECK(record.is_object(), path, ":", number, ": a record must be a JSON object");
    const auto number_of = [&](const char* key) {
      KILN_CHECK(record.contains(key) && record[key].is_number(), path, ":", number, ": the record has no number '", key,
                 "' (kiln sweep writes name, params, tokens, flops, final_val_loss, finished)");
      return record[key].get<double>();
    };
    RunPoint r;
    r.name = record.value("name", message("line ", number));
    if (!record.value("finished", false)) {
      std::fprintf(stderr, "kiln: warning: %s:%d: run '%s' did not finish; left out of the fit\n", path.c_str(), number,
                   r.name.c_str());
      ++unfinished;
      continue;
    }
    r.params = number_of("params");
    r.tokens = number_of("tokens");
    r.flops = record.contains("flops") ? number_of("flops") : 6 * r.params * r.tokens;
    r.loss = number_of("final_val_loss");
    r.group = record.value("group", "");
    try {
      scaling::check_run(r);
    } catch (const Error& e) {
      throw Error(message(path, ":", number, ": ", e.what()));
    }
    runs.push_back(r);
  }
  return runs;
}

namespace {

json interval_json(Interval i) { return json::array({i.lo, i.hi}); }

json chinchilla_json(const Chinchilla& c) {
  return {{"E", c.E}, {"A", c.A}, {"B", c.B}, {"alpha", c.alpha}, {"beta", c.beta}, {"a", c.a()}, {"b", c.b()},
          {"objective", c.objective}};
}

Chinchilla chinchilla_of(const json& j) {
  Chinchilla c;
  c.E = j.at("E");
  c.A = j.at("A");
  c.B = j.at("B");
  c.alpha = j.at("alpha");
  c.beta = j.at("beta");
  return c;
}

std::string range(Interval i) { return message("[", i.lo, ", ", i.hi, "]"); }

}  // namespace

int scaling_fit(const ScalingFitArgs& args) {
  const std::vector<RunPoint> runs = read_results(args.results);
  scaling::check_runs(runs);
  KILN_CHECK(args.bootstrap == 0 || args.bootstrap >= 20, "--bootstrap ", args.bootstrap,
             ": use 0 (no intervals) or at least 20 resamples (200 is the default)");
  KILN_CHECK(args.delta > 0 && std::isfinite(args.delta), "--delta must be positive");
  const scaling::KaplanFits kaplan = scaling::fit_kaplan(runs);
  scaling::HuberOptions options;
  options.delta = args.delta;
  const Chinchilla huber = scaling::fit_chinchilla_huber(runs, options);
  const Chinchilla varpro = scaling::fit_chinchilla_varpro(runs);
  const scaling::Approach2 two = scaling::fit_approach2(runs);
  scaling::Bootstrap boot;
  if (args.bootstrap > 0) boot = scaling::bootstrap_chinchilla(runs, huber, args.bootstrap, args.seed, args.delta);

  std::printf("%zu finished runs from %s\n\n", runs.size(), args.results.c_str());
  std::printf("Kaplan et al. (power laws, fitted in log space):\n");
  const auto kaplan_line = [](const char* what, const char* x, const std::optional<scaling::PowerLaw>& law) {
    if (!law) {
      std::printf("  %s: fewer than 2 distinct points\n", what);
      return;
    }
    std::printf("  %s = (%.4g / %s)^%.4f   (%d points, R^2 %.4f)\n", what, law->x_c, x, law->alpha, law->points, law->r2);
  };
  kaplan_line(kaplan.of_params_tokens > 0 ? message("L(N) at D = ", kaplan.of_params_tokens).c_str()
                                          : "L(N) over each size's most tokens", "N", kaplan.of_params);
  kaplan_line("L(D)", "D", kaplan.of_tokens);
  kaplan_line("L(C)", "C", kaplan.of_compute);
  std::printf("\nChinchilla L(N, D) = E + A/N^alpha + B/D^beta\n");
  std::printf("  %-26s %10s %12s %12s %8s %8s %8s %8s\n", "", "E", "A", "B", "alpha", "beta", "a", "b");
  const auto row = [](const char* what, const Chinchilla& c) {
    std::printf("  %-26s %10.4f %12.5g %12.5g %8.4f %8.4f %8.4f %8.4f\n", what, c.E, c.A, c.B, c.alpha, c.beta, c.a(), c.b());
  };
  row("Approach 3 (Huber, L-BFGS)", huber);
  row("variable projection", varpro);
  if (args.bootstrap > 0) {
    std::printf("  95%% intervals (%d resamples of the runs):\n", boot.samples);
    std::printf("    E %s  A %s  B %s\n    alpha %s  beta %s\n    a %s  b %s\n", range(boot.E).c_str(),
                range(boot.A).c_str(), range(boot.B).c_str(), range(boot.alpha).c_str(), range(boot.beta).c_str(),
                range(boot.a).c_str(), range(boot.b).c_str());
  }
  if (huber.alpha <= 0 || huber.beta <= 0)
    std::printf("  warning: alpha %.4g, beta %.4g: a larger model (or more data) did no better in these runs; they are "
                "too short or too few to separate size from data, and no plan can be made from them\n",
                huber.alpha, huber.beta);
  std::printf("  the two fits differ by %.4f in alpha and %.4f in beta\n", std::fabs(huber.alpha - varpro.alpha),
              std::fabs(huber.beta - varpro.beta));
  if (two.fitted) {
    std::printf("\nApproach 2 (IsoFLOP minima, %zu groups): N_opt ~ C^%.4f, D_opt ~ C^%.4f; against Approach 3: "
                "a differs by %+.4f, b by %+.4f\n", two.groups.size(), two.a, two.b, two.a - huber.a(), two.b - huber.b());
    for (const scaling::IsoFlopGroup& g : two.groups)
      std::printf("  %-14s C %.3g: N_opt %.4g, D_opt %.4g, loss %.4f%s\n", g.name.c_str(), g.flops, g.n_opt, g.d_opt,
                  g.loss_min, g.inside ? "" : " (outside the group's sizes: an extrapolation)");
    for (const std::string& name : two.without_minimum)
      std::printf("  %-14s no minimum: the parabola in log N opens downward (add sizes below the best one)\n",
                  name.c_str());
  } else {
    std::printf("\nApproach 2: needs 2 or more IsoFLOP groups of 3 or more sizes (a sweep with `flops:`); %zu found\n",
                two.groups.size());
  }

  json out;
  out["results"] = args.results;
  out["runs"] = runs.size();
  out["huber_delta"] = args.delta;
  out["approach3"] = chinchilla_json(huber);
  out["varpro"] = chinchilla_json(varpro);
  const auto law_json = [](const std::optional<scaling::PowerLaw>& law) {
    return law ? json{{"alpha", law->alpha}, {"x_c", law->x_c}, {"r2", law->r2}, {"points", law->points}} : json();
  };
  out["kaplan"] = {{"L_N", law_json(kaplan.of_params)}, {"L_N_tokens", kaplan.of_params_tokens}, {"L_D", law_json(kaplan.of_tokens)},
                   {"L_C", law_json(kaplan.of_compute)}, {"frontier", kaplan.frontier}};
  if (two.fitted) {
    json groups = json::array();
    for (const scaling::IsoFlopGroup& g : two.groups)
      groups.push_back({{"name", g.name}, {"flops", g.flops}, {"n_opt", g.n_opt}, {"d_opt", g.d_opt},
                        {"loss_min", g.loss_min}, {"p", {g.p0, g.p1, g.p2}}, {"inside", g.inside}});
    out["approach2"] = {{"a", two.a}, {"b", two.b}, {"log_kn", two.log_kn}, {"log_kd", two.log_kd}, {"groups", groups}};
  }
  if (args.bootstrap > 0) {
    json fits = json::array();
    for (const Chinchilla& c : boot.fits) fits.push_back({c.E, c.A, c.B, c.alpha, c.beta});
    out["bootstrap"] = {{"samples", boot.samples}, {"seed", args.seed},
                        {"E", interval_json(boot.E)}, {"A", interval_json(boot.A)}, {"B", interval_json(boot.B)},
                        {"alpha", interval_json(boot.alpha)}, {"beta", interval_json(boot.beta)},
                        {"a", interval_json(boot.a)}, {"b", interval_json(boot.b)}, {"fits", fits}};
  }
  const std::string path = args.out.empty() ? (fs::path(args.results).parent_path() / "fit.json").string() : args.out;
  write_file_atomic(path, out.dump(1) + "\n");
  std::printf("\nwrote %s\n", path.c_str());
  return 0;
}

namespace {

// The shape of the quickstart family (head size `head_size`, width/depth between 32 and 96)
// whose non-embedding parameters are nearest `params` in log.
GptShape shape_near(double params, const ExperimentConfig& base, int head_size) {
  GptShape best;
  double best_gap = INFINITY;
  for (int layers = 1; layers <= 96; ++layers)
    for (int width = head_size; width <= 16384; width += head_size) {
      if (width < 32 * layers || width > 96 * layers) continue;
      ModelConfig m = base.model;
      m.n_layer = layers;
      m.n_embd = width;
      m.n_head = width / head_size;
      m.n_kv_head = 0;
      m.mlp_width = 0;
      const GptShape shape = GptShape::from_config(m, 257);
      const double gap = std::fabs(std::log(static_cast<double>(shape.non_embedding_params()) / params));
      if (gap < best_gap) {
        best_gap = gap;
        best = shape;
      }
    }
  return best;
}

}  // namespace

int scaling_plan(const ScalingPlanArgs& args) {
  const int given = (args.flops > 0) + (args.params > 0) + (args.tokens > 0);
  KILN_CHECK(given == 1, "kiln scaling plan: pass exactly one of --flops C, --params N, --tokens D (a positive number)");
  const json fit = json::parse(read_file(args.fit), nullptr, false);
  KILN_CHECK(!fit.is_discarded() && fit.contains("approach3"), "'", args.fit,
             "' is not a fit of kiln scaling fit (no 'approach3'); run kiln scaling fit RESULTS first");
  const Chinchilla law = chinchilla_of(fit["approach3"]);
  const auto usable = [](const Chinchilla& c) {
    return c.alpha > 1e-6 && c.beta > 1e-6 && c.A > 0 && c.B > 0 && std::isfinite(c.A) && std::isfinite(c.B) &&
           std::isfinite(c.alpha) && std::isfinite(c.beta);
  };
  KILN_CHECK(usable(law), "the fit in '", args.fit, "' has alpha ", law.alpha, ", beta ", law.beta, ", A ", law.A, ", B ",
             law.B, ": a compute-optimal plan needs both terms (A, B > 0, alpha, beta > 0). The runs do not separate "
             "the effects of size and data: add sizes or token budgets to the sweep");
  std::vector<Chinchilla> resamples;
  if (fit.contains("bootstrap"))
    for (const json& f : fit["bootstrap"]["fits"]) {
      const Chinchilla c{f[0], f[1], f[2], f[3], f[4], 0};
      if (usable(c)) resamples.push_back(c);  // the intervals come from the resamples that can plan
    }
  // For one given quantity, the compute-optimal other two (under C = 6 N D): N_opt(C) inverts to
  // C(N) and D_opt(C) to C(D), both monotone, found by bisection in log C.
  const auto plan_of = [&](const Chinchilla& c) -> std::array<double, 3> {
    if (args.flops > 0) {
      const auto [n, d] = c.optimal(args.flops);
      return {args.flops, n, d};
    }
    double lo = std::log(1e3), hi = std::log(1e40);
    for (int i = 0; i < 200; ++i) {
      const double mid = 0.5 * (lo + hi);
      const auto [n, d] = c.optimal(std::exp(mid));
      const bool below = args.params > 0 ? n < args.params : d < args.tokens;
      (below ? lo : hi) = mid;
    }
    const double flops = std::exp(0.5 * (lo + hi));
    const auto [n, d] = c.optimal(flops);
    return {flops, n, d};
  };
  const auto best = plan_of(law);
  std::printf("compute-optimal by the Approach 3 fit (%s):\n", args.fit.c_str());
  std::printf("  compute %.4g FLOPs, parameters %.4g (non-embedding), tokens %.4g (%.1f tokens per parameter), "
              "predicted loss %.4f\n", best[0], best[1], best[2], best[2] / best[1], law.loss(best[1], best[2]));
  if (!resamples.empty()) {
    std::vector<double> cs, ns, ds, ls;
    for (const Chinchilla& c : resamples) {
      const auto p = plan_of(c);
      cs.push_back(p[0]);
      ns.push_back(p[1]);
      ds.push_back(p[2]);
      ls.push_back(c.loss(p[1], p[2]));
    }
    std::printf("  95%% intervals (%zu bootstrap fits): compute %s, parameters %s, tokens %s, loss %s\n", resamples.size(),
                range(scaling::percentile_interval(cs)).c_str(), range(scaling::percentile_interval(ns)).c_str(),
                range(scaling::percentile_interval(ds)).c_str(), range(scaling::percentile_interval(ls)).c_str());
  }
  if (args.base.empty()) return 0;
  const ExperimentConfig base = load_config(args.base);
  const GptShape shape = shape_near(best[1], base, args.head_size);
  const std::int64_t tokens_per_step = static_cast<std::int64_t>(base.train.micro_batch) * base.train.seq_len *
                                       base.train.grad_accum;
  // The shape's N is near N_opt, not equal to it: with --flops the tokens keep the compute at the
  // budget (D = C / 6N); otherwise they are D_opt.
  const double tokens = args.flops > 0 ? args.flops / (6.0 * static_cast<double>(shape.non_embedding_params())) : best[2];
  const auto steps = static_cast<std::int64_t>(std::llround(tokens / static_cast<double>(tokens_per_step)));
  const std::string overrides = message("model.n_layer=", shape.n_layer, " model.n_embd=", shape.n_embd, " model.n_head=",
                                        shape.n_head, " train.max_steps=", steps);
  const double planned_n = static_cast<double>(shape.non_embedding_params());
  const double planned_d = static_cast<double>(steps * tokens_per_step);
  std::printf("  shape: %d layers, width %d, %d heads: %lld non-embedding parameters; %lld steps of %lld tokens "
              "(%.4g tokens, %.4g FLOPs); predicted loss of this run %.4f\n", shape.n_layer, shape.n_embd, shape.n_head,
              static_cast<long long>(planned_n), static_cast<long long>(steps), static_cast<long long>(tokens_per_step),
              planned_d, 6 * planned_n * planned_d, law.loss(planned_n, planned_d));
  std::printf("  kiln train %s %s\n", args.base.c_str(), overrides.c_str());
  if (args.out.empty()) return 0;
  KILN_CHECK(fs::absolute(args.out).parent_path() == fs::absolute(args.base).parent_path(), "--out ", args.out,
             ": write the planned config beside its base (", fs::path(args.base).parent_path().string(),
             "), since paths in a config are relative to its folder; or use the command above");
  YAML::Node node = YAML::LoadFile(args.base);
  node["model"]["n_layer"] = shape.n_layer;
  node["model"]["n_embd"] = shape.n_embd;
  node["model"]["n_head"] = shape.n_head;
  node["train"]["max_steps"] = steps;
  YAML::Emitter emitter;
  emitter << node;
  write_file_atomic(args.out, message("# kiln scaling plan --fit ", args.fit, ": compute ", best[0], " FLOPs, ", best[1],
                                      " parameters, ", best[2], " tokens (", args.base, " with the shape and steps)\n",
                                      emitter.c_str(), "\n"));
  load_config(args.out);  // what it wrote is a valid config
  std::printf("  wrote %s\n", args.out.c_str());
  return 0;
}

}  // namespace kiln::cli
