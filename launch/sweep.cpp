// kiln sweep (sweep.h).
#include "launch/sweep.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <sys/wait.h>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "core/checkpoint/atomic_file.h"
#include "core/config.h"
#include "core/model/spec.h"
#include "kernels/error.h"
#include "trainers/preemption.h"

namespace kiln::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string hex(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string shortest(double v) {  // 4e+06 -> "4e6", 2.5e+07 -> "2.5e7"
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  std::string t = buf;
  const auto e = t.find("e+");
  if (e != std::string::npos) {
    std::size_t digits = e + 2;
    while (digits + 1 < t.size() && t[digits] == '0') ++digits;
    t = t.substr(0, e + 1) + t.substr(digits);
  }
  return t;
}

std::vector<double> numbers(const YAML::Node& node, const std::string& file, const char* key) {
  KILN_CHECK(node.IsSequence() && node.size() > 0, file, ": '", key, "' must be a non-empty list of numbers");
  std::vector<double> out;
  for (const YAML::Node& v : node) {
    double x = 0;
    try {
      x = v.as<double>();
    } catch (const YAML::Exception&) {
      throw Error(message(file, ":", v.Mark().line + 1, ": '", key, "' holds '", v.as<std::string>(""), "', not a number"));
    }
    KILN_CHECK(std::isfinite(x) && x > 0, file, ":", v.Mark().line + 1, ": '", key, "' values must be positive");
    out.push_back(x);
  }
  return out;
}

// The last run's records in metrics.jsonl: final and best validation loss, the last step and its
// token count, and the time the steps took.
struct RunOutcome {
  std::int64_t last_step = 0;
  double tokens = 0, final_val = NAN, best_val = NAN, step_seconds = 0;
};
RunOutcome read_outcome(const fs::path& metrics) {
  RunOutcome out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const json r = json::parse(line, nullptr, false);
    if (r.is_discarded() || !r.is_object()) continue;
    if (r.contains("val_loss") && r["val_loss"].is_number()) {
      out.final_val = r["val_loss"];
      if (!(out.best_val <= out.final_val)) out.best_val = out.final_val;
    } else if (r.contains("loss") && r.contains("step")) {
      out.last_step = r["step"];
      out.tokens = r.value("tokens", 0.0);
      out.step_seconds += r.value("step_s", 0.0);
    }
  }
  return out;
}

}  // namespace

Sweep load_sweep(const std::string& path) {
  KILN_CHECK(fs::is_regular_file(path), "sweep file '", path, "' does not exist; configs/scaling/sweep.yaml is an example");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw Error(message(path, ":", e.mark.line + 1, ": not valid YAML (", e.msg, ")"));
  }
  KILN_CHECK(root.IsMap(), path, ": a sweep is a map with base, models and tokens (or flops)");
  const std::set<std::string> known{"base", "run_dir", "results", "models", "tokens", "flops", "overrides",
                                    "max_flops", "head_size", "data_parallel"};
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    KILN_CHECK(known.count(key) == 1, path, ":", kv.first.Mark().line + 1, ": unknown key '", key,
               "'; a sweep has base, run_dir, results, models, tokens or flops, overrides, max_flops, head_size, "
               "data_parallel");
  }
  Sweep sweep;
  KILN_CHECK(root["base"] && root["base"].IsScalar(), path, ": 'base' (the config every point starts from) is missing");
  const fs::path here = fs::path(path).parent_path();
  sweep.base = (here / root["base"].as<std::string>()).lexically_normal().string();
  const std::string stem = fs::path(path).stem().string();
  sweep.run_dir = root["run_dir"] ? root["run_dir"].as<std::string>() : "runs/" + stem;
  sweep.results = root["results"] ? root["results"].as<std::string>() : sweep.run_dir + "/results.jsonl";
  sweep.max_flops = root["max_flops"] ? root["max_flops"].as<double>() : 0.0;
  const int head_size = root["head_size"] ? root["head_size"].as<int>() : 32;
  const int dp = root["data_parallel"] ? root["data_parallel"].as<int>() : 1;
  KILN_CHECK(head_size > 0 && dp > 0, path, ": head_size and data_parallel must be positive");
  KILN_CHECK(!root["tokens"] != !root["flops"], path, ": give exactly one of 'tokens' (a grid of token budgets) and "
             "'flops' (compute budgets, each model at tokens = C / 6N)");
  std::vector<std::string> common;
  if (root["overrides"]) {
    KILN_CHECK(root["overrides"].IsSequence(), path, ": 'overrides' is a list of section.key=value strings");
    for (const YAML::Node& o : root["overrides"]) common.push_back(o.as<std::string>());
  }
  const ExperimentConfig base = load_config(sweep.base, common);
  const std::string base_text = read_file(sweep.base);
  const std::int64_t tokens_per_step =
      static_cast<std::int64_t>(base.train.micro_batch) * base.train.seq_len * base.train.grad_accum * dp;
  KILN_CHECK(root["models"] && root["models"].IsSequence() && root["models"].size() > 0, path,
             ": 'models' is a list of shapes, e.g. - {n_layer: 2, n_embd: 64}");
  struct Shape {
    int layers, width, heads;
    double params;
  };
  std::vector<Shape> shapes;
  for (const YAML::Node& m : root["models"]) {
    const int line = m.Mark().line + 1;
    KILN_CHECK(m.IsMap() && m["n_layer"] && m["n_embd"], path, ":", line, ": a model needs n_layer and n_embd");
    Shape s{m["n_layer"].as<int>(), m["n_embd"].as<int>(), 0, 0};
    s.heads = m["n_head"] ? m["n_head"].as<int>() : s.width / head_size;
    KILN_CHECK(s.layers > 0 && s.width > 0 && s.heads > 0 && s.width % s.heads == 0, path, ":", line, ": n_layer ",
               s.layers, ", n_embd ", s.width, ", n_head ", s.heads, ": n_embd must be a positive multiple of n_head");
    ModelConfig mc = base.model;
    mc.n_layer = s.layers;
    mc.n_embd = s.width;
    mc.n_head = s.heads;
    s.params = static_cast<double>(GptShape::from_config(mc, 257).non_embedding_params());
    shapes.push_back(s);
  }
  const bool by_flops = static_cast<bool>(root["flops"]);
  const std::vector<double> budgets = numbers(by_flops ? root["flops"] : root["tokens"], path, by_flops ? "flops" : "tokens");
  std::set<std::string> names;
  for (double budget : budgets)
    for (const Shape& s : shapes) {
      SweepPoint p;
      p.n_layer = s.layers;
      p.n_embd = s.width;
      p.n_head = s.heads;
      p.params = s.params;
      p.tokens = by_flops ? budget / (6 * s.params) : budget;
      p.steps = std::max<std::int64_t>(1, std::llround(p.tokens / static_cast<double>(tokens_per_step)));
      p.flops = 6 * p.params * static_cast<double>(p.steps * tokens_per_step);
      p.group = by_flops ? "C=" + shortest(budget) : "";
      p.name = message("L", s.layers, "_W", s.width, "_", by_flops ? "C" + shortest(budget) : "D" + shortest(budget));
      KILN_CHECK(names.insert(p.name).second, path, ": two points are both named ", p.name, "; list each shape once");
      // The schedule ends at the budget: max_steps is the point's, and the warmup at most a fifth of it.
      const int warmup = static_cast<int>(std::min<std::int64_t>(base.optim.warmup_steps, std::max<std::int64_t>(1, p.steps / 5)));
      p.overrides = common;
      for (const std::string& o : {message("model.n_layer=", s.layers), message("model.n_embd=", s.width),
                                   message("model.n_head=", s.heads), message("train.max_steps=", p.steps),
                                   message("optim.warmup_steps=", warmup),
                                   message("train.eval_every=", base.train.eval_every > 0 ? base.train.eval_every : p.steps),
                                   message("train.run_dir=", sweep.run_dir, "/", p.name), std::string("train.resume=auto")})
        p.overrides.push_back(o);
      std::string joined = base_text;
      for (const std::string& o : p.overrides) joined += "\n" + o;
      p.hash = hex(fnv1a(joined));
      sweep.points.push_back(p);
    }
  return sweep;
}

int sweep(const SweepArgs& args) {
  const Sweep sweep = load_sweep(args.sweep);
  double total = 0;
  for (const SweepPoint& p : sweep.points) total += p.flops;
  std::printf("sweep %s: %zu points over %s, %.3g training FLOPs in all (6 N D)\n", args.sweep.c_str(),
              sweep.points.size(), sweep.base.c_str(), total);
  KILN_CHECK(sweep.max_flops <= 0 || total <= sweep.max_flops, args.sweep, ": the sweep needs ", total,
             " FLOPs, over its max_flops of ", sweep.max_flops, "; remove points or raise max_flops");
  // Finished points: a record of the same name and hash.
  std::set<std::string> done;
  std::string existing;
  if (fs::exists(sweep.results)) {
    existing = read_file(sweep.results);
    std::istringstream in(existing);
    int line = 0;
    for (std::string text; std::getline(in, text);) {
      ++line;
      const json r = json::parse(text, nullptr, false);
      KILN_CHECK(!r.is_discarded() && r.is_object(), sweep.results, ":", line, ": not a JSON record; fix or remove the line");
      if (r.value("finished", false)) done.insert(r.value("name", "") + "/" + r.value("config_hash", ""));
    }
  }
  std::printf("%-22s %12s %12s %12s %8s  %s\n", "point", "N", "D", "C", "steps", "state");
  std::vector<const SweepPoint*> todo;
  for (const SweepPoint& p : sweep.points) {
    const bool finished = done.count(p.name + "/" + p.hash) == 1;
    std::printf("%-22s %12.4g %12.4g %12.4g %8lld  %s\n", p.name.c_str(), p.params, p.tokens, p.flops,
                static_cast<long long>(p.steps), finished ? "recorded" : "to run");
    if (!finished) todo.push_back(&p);
  }
  if (args.dry_run) return 0;
  if (!args.array_out.empty()) {
    std::string lines = "# kiln sweep " + args.sweep + ": the unfinished points, one per line, for kiln submit --array\n";
    for (const SweepPoint* p : todo) {
      for (const std::string& o : p->overrides) lines += o + " ";
      lines += "\n";
    }
    write_file_atomic(args.array_out, lines);
    std::printf("wrote %s (%zu points): kiln submit %s --array %s ...; then kiln sweep %s again records them\n",
                args.array_out.c_str(), todo.size(), sweep.base.c_str(), args.array_out.c_str(), args.sweep.c_str());
    return 0;
  }
  const std::string kiln = fs::read_symlink("/proc/self/exe").string();
  fs::create_directories(fs::path(sweep.run_dir) / "logs");
  int failed = 0;
  bool stopped = false;
  std::size_t recorded = sweep.points.size() - todo.size();
  for (const SweepPoint* p : todo) {
    const fs::path run = fs::path(sweep.run_dir) / p->name;
    const fs::path log = fs::path(sweep.run_dir) / "logs" / (p->name + ".log");
    std::string command = (args.launcher.empty() ? "" : args.launcher + " ") + kiln + " train '" + sweep.base + "'";
    for (const std::string& o : p->overrides) command += " '" + o + "'";
    std::printf("%s: training (%lld steps; log %s)\n", p->name.c_str(), static_cast<long long>(p->steps), log.c_str());
    std::fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    const int status = run_shell_command(command + " > '" + log.string() + "' 2>&1");
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const RunOutcome outcome = read_outcome(run / "metrics.jsonl");
    const bool finished = status == 0 && outcome.last_step == p->steps && std::isfinite(outcome.final_val);
    if (!finished) {
      ++failed;
      std::printf("%s: did not finish (status %d, step %lld of %lld); see %s\n", p->name.c_str(), status,
                  static_cast<long long>(outcome.last_step), static_cast<long long>(p->steps), log.c_str());
      if (WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == kStopExitStatus)) {
        stopped = true;  // asked to stop (preemption): go no further, and say so to the caller
        break;
      }
      continue;
    }
    double total_params = 0;
    std::ifstream in(log);
    for (std::string line; std::getline(in, line);)
      if (line.rfind("model:", 0) == 0) {
        const auto at = line.find(" parameters");
        const auto from = line.rfind(", ", at);
        if (at != std::string::npos && from != std::string::npos) total_params = std::atof(line.c_str() + from + 2);
      }
    json record = {{"name", p->name}, {"params", p->params}, {"params_total", total_params},
                   {"tokens", outcome.tokens}, {"flops", 6 * p->params * outcome.tokens},
                   {"final_val_loss", outcome.final_val}, {"best_val_loss", outcome.best_val},
                   {"wall_s", wall}, {"train_s", outcome.step_seconds}, {"config_hash", p->hash},
                   {"n_layer", p->n_layer}, {"n_embd", p->n_embd}, {"n_head", p->n_head}, {"steps", p->steps},
                   {"finished", true}};
    if (!p->group.empty()) record["group"] = p->group;
    existing += record.dump() + "\n";
    write_file_atomic(sweep.results, existing);
    ++recorded;
    std::printf("%s: validation loss %.4f after %.4g tokens, %.0f s\n", p->name.c_str(), outcome.final_val,
                outcome.tokens, wall);
  }
  std::printf("%zu of %zu points recorded in %s%s\n", recorded, sweep.points.size(), sweep.results.c_str(),
              recorded < sweep.points.size() ? "; run kiln sweep again for the rest" : "");
  return stopped ? kStopExitStatus : failed > 0 ? 1 : 0;
}

}  // namespace kiln::cli
