// kiln sweep (sweep.h).
#include "launch/sweep.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "core/checkpoint/atomic_file.h"
#include "core/config.h"
#include "core/eval/corpus_tasks.h"
#include "core/eval/task.h"
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

std::string shortest(double v) {  // 4e+06 -> "4e6", 2.5e+07 -> "2.5e7", 250000 -> "2.5e5", 5120 -> "5120"
  char buf[32];
  std::snprintf(buf, sizeof buf, v >= 1e5 && v < 1e6 ? "%.5e" : "%g", v);
  if (v >= 1e5 && v < 1e6) {  // %g keeps 6 digits here: the exponent form, trailing zeros cut
    std::string t = buf;
    const auto e = t.find('e');
    std::string mantissa = t.substr(0, e);
    while (mantissa.back() == '0') mantissa.pop_back();
    if (mantissa.back() == '.') mantissa.pop_back();
    std::snprintf(buf, sizeof buf, "%se%s", mantissa.c_str(), t.c_str() + e + 1);
  }
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
                                    "max_flops", "head_size", "data_parallel", "eval"};
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    KILN_CHECK(known.count(key) == 1, path, ":", kv.first.Mark().line + 1, ": unknown key '", key,
               "'; a sweep has base, run_dir, results, models, tokens and/or flops, overrides, max_flops, head_size, "
               "data_parallel, eval");
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
  KILN_CHECK(root["tokens"] || root["flops"], path, ": give 'tokens' (a grid of token budgets), 'flops' (compute "
             "budgets, each model at tokens = C / 6N), or both");
  std::vector<std::string> common;
  if (root["overrides"]) {
    KILN_CHECK(root["overrides"].IsSequence(), path, ": 'overrides' is a list of section.key=value strings");
    for (const YAML::Node& o : root["overrides"]) common.push_back(o.as<std::string>());
  }
  sweep.overrides = common;
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
  // Token budgets first, then compute budgets; each budget over every shape.
  std::vector<std::pair<bool, double>> budgets;  // (by compute, the budget)
  for (const bool by_flops : {false, true})
    if (const YAML::Node list = root[by_flops ? "flops" : "tokens"])
      for (double b : numbers(list, path, by_flops ? "flops" : "tokens")) budgets.emplace_back(by_flops, b);
  std::set<std::string> names;
  for (const auto& [by_flops, budget] : budgets)
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
      p.token_budget = by_flops ? 0.0 : budget;
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
  if (const YAML::Node e = root["eval"]) {
    const int line = e.Mark().line + 1;
    KILN_CHECK(e.IsMap(), path, ":", line, ": 'eval' is a map, e.g. {corpus_probes: true, num_fewshot: [0, 1, 2, 4, 8]}");
    for (const auto& kv : e) {
      const std::string key = kv.first.as<std::string>();
      KILN_CHECK(key == "tasks" || key == "corpus_probes" || key == "num_fewshot" || key == "limit" || key == "batch", path,
                 ":", kv.first.Mark().line + 1, ": unknown key 'eval.", key,
                 "'; eval has tasks, corpus_probes, num_fewshot, limit, batch");
    }
    try {
      if (e["tasks"]) {
        KILN_CHECK(e["tasks"].IsSequence(), path, ":", line, ": 'eval.tasks' is a list of task files");
        for (const YAML::Node& t : e["tasks"]) {
          const std::string file = (here / t.as<std::string>()).lexically_normal().string();
          KILN_CHECK(fs::is_regular_file(file), path, ":", t.Mark().line + 1, ": task file '", file, "' does not exist");
          sweep.eval.tasks.push_back(file);
        }
      }
      sweep.eval.corpus_probes = e["corpus_probes"] && e["corpus_probes"].as<bool>();
      if (e["num_fewshot"])
        for (const YAML::Node& k : e["num_fewshot"]) sweep.eval.num_fewshot.push_back(k.as<int>());
      sweep.eval.limit = e["limit"] ? e["limit"].as<int>() : 0;
      sweep.eval.batch = e["batch"] ? e["batch"].as<int>() : 16;
    } catch (const YAML::Exception& x) {
      throw Error(message(path, ":", x.mark.line + 1, ": 'eval' holds a value of the wrong kind (", x.msg, ")"));
    }
    for (int k : sweep.eval.num_fewshot) KILN_CHECK(k >= 0, path, ":", line, ": eval.num_fewshot values must be 0 or more");
    KILN_CHECK(sweep.eval.limit >= 0 && sweep.eval.batch >= 1, path, ":", line, ": eval.limit must be 0 or more and "
               "eval.batch 1 or more");
    KILN_CHECK(sweep.eval.enabled(), path, ":", line, ": 'eval' names no tasks: give tasks, corpus_probes: true, or both");
  }
  return sweep;
}

namespace {

// What each point is evaluated on, and a hash of everything that decides its scores.
struct EvalPlan {
  std::vector<std::string> files;
  std::string hash;
};

// The corpus probes are written to run_dir/icl-tasks, or with dry_run to a folder removed again
// (a dry run writes nothing), and the plan then names files that are gone: it is for the hash.
EvalPlan plan_eval(const Sweep& sweep, bool dry_run) {
  EvalPlan plan;
  if (!sweep.eval.enabled()) return plan;
  plan.files = sweep.eval.tasks;
  std::string scratch;
  if (sweep.eval.corpus_probes) {
    const ExperimentConfig base = load_config(sweep.base, sweep.overrides);
    CorpusTaskOptions probes;
    probes.inputs = {base.data.corpus};
    probes.separator = base.data.separator;
    probes.jsonl_field = base.data.jsonl_field;
    KILN_CHECK(!base.data.corpus.empty(), sweep.base, ": eval.corpus_probes needs data.corpus (the text the probes are "
               "made from); this config reads token shards");
    std::string dir = sweep.run_dir + "/icl-tasks";
    if (dry_run) {
      char templ[] = "/tmp/kiln-sweep-XXXXXX";
      KILN_CHECK(::mkdtemp(templ) != nullptr, "cannot create a scratch folder in /tmp: ", std::strerror(errno));
      dir = scratch = templ;
    }
    for (const std::string& f : write_corpus_tasks(dir, probes))
      if (f.size() > 10 && f.compare(f.size() - 10, 10, ".eval.yaml") == 0) plan.files.push_back(f);
  }
  std::string joined;
  for (const std::string& file : plan.files) {
    joined += read_file(file);
    for (const EvalTask& task : load_eval_tasks(file)) {  // checks every task before any training
      for (const EvalDoc& d : task.docs) joined += d.record.dump();
      for (const EvalDoc& d : task.fewshot) joined += d.record.dump();
    }
  }
  for (int k : sweep.eval.num_fewshot) joined += message(" k", k);
  joined += message(" limit", sweep.eval.limit);
  plan.hash = hex(fnv1a(joined));
  if (!scratch.empty()) fs::remove_all(scratch);
  return plan;
}

// kiln eval of a point's last checkpoint into run/icl.json; the record gets its spreads over
// templates. Returns the command's status.
int evaluate_point(const Sweep& sweep, const EvalPlan& plan, const SweepPoint& p, const std::string& kiln,
                   const std::string& launcher, json& record) {
  const fs::path run = fs::path(sweep.run_dir) / p.name;
  const fs::path out = run / "icl.json";
  const fs::path log = fs::path(sweep.run_dir) / "logs" / (p.name + ".eval.log");
  std::string command = (launcher.empty() ? "" : launcher + " ") + kiln + " eval '" + run.string() + "'";
  for (const std::string& f : plan.files) command += " '" + f + "'";
  command += message(" --batch ", sweep.eval.batch, " --limit ", sweep.eval.limit);
  if (!sweep.eval.num_fewshot.empty()) {
    command += " --num-fewshot";
    for (int k : sweep.eval.num_fewshot) command += message(" ", k);
  }
  command += " --out '" + out.string() + "' > '" + log.string() + "' 2>&1";
  std::printf("%s: evaluating (log %s)\n", p.name.c_str(), log.c_str());
  std::fflush(stdout);
  const int status = run_shell_command(command);
  if (status != 0) {
    std::printf("%s: evaluation failed (status %d); see %s\n", p.name.c_str(), status, log.c_str());
    return status;
  }
  const json report = json::parse(read_file(out.string()), nullptr, false);
  if (report.is_discarded() || !report.contains("spreads")) {
    std::printf("%s: %s holds no scores; see %s\n", p.name.c_str(), out.c_str(), log.c_str());
    return 1;
  }
  record["eval"] = {{"hash", plan.hash}, {"file", out.string()}, {"spreads", report["spreads"]}};
  return 0;
}

bool stop_status(int status) {
  return WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == kStopExitStatus);
}

}  // namespace

int sweep(const SweepArgs& args) {
  const Sweep sweep = load_sweep(args.sweep);
  double total = 0;
  for (const SweepPoint& p : sweep.points) total += p.flops;
  std::printf("sweep %s: %zu points over %s, %.3g training FLOPs in all (6 N D)\n", args.sweep.c_str(),
              sweep.points.size(), sweep.base.c_str(), total);
  KILN_CHECK(sweep.max_flops <= 0 || total <= sweep.max_flops, args.sweep, ": the sweep needs ", total,
             " FLOPs, over its max_flops of ", sweep.max_flops, "; remove points or raise max_flops");
  // The records so far; a point is finished when one has its name and hash.
  std::vector<json> records;
  std::map<std::string, std::size_t> done;
  if (fs::exists(sweep.results)) {
    std::istringstream in(read_file(sweep.results));
    int line = 0;
    for (std::string text; std::getline(in, text);) {
      ++line;
      json r = json::parse(text, nullptr, false);
      KILN_CHECK(!r.is_discarded() && r.is_object(), sweep.results, ":", line, ": not a JSON record; fix or remove the line");
      if (r.value("finished", false)) done[r.value("name", "") + "/" + r.value("config_hash", "")] = records.size();
      records.push_back(std::move(r));
    }
  }
  auto save = [&] {
    std::string text;
    for (const json& r : records) text += r.dump() + "\n";
    write_file_atomic(sweep.results, text);
  };
  const EvalPlan plan = args.array_out.empty() ? plan_eval(sweep, args.dry_run) : EvalPlan{};
  // Each point: trained and evaluated, trained and to evaluate (evaluation added or changed), or to run.
  auto recorded = [&](const SweepPoint& p) -> json* {
    const auto it = done.find(p.name + "/" + p.hash);
    return it == done.end() ? nullptr : &records[it->second];
  };
  auto evaluated = [&](const json& r) { return plan.files.empty() || (r.contains("eval") && r["eval"].value("hash", "") == plan.hash); };
  std::printf("%-22s %12s %12s %12s %8s  %s\n", "point", "N", "D", "C", "steps", "state");
  std::vector<const SweepPoint*> todo;
  for (const SweepPoint& p : sweep.points) {
    const json* r = recorded(p);
    std::printf("%-22s %12.4g %12.4g %12.4g %8lld  %s\n", p.name.c_str(), p.params, p.tokens, p.flops,
                static_cast<long long>(p.steps), !r ? "to run" : evaluated(*r) ? "recorded" : "to evaluate");
    if (!r) todo.push_back(&p);
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
  for (const SweepPoint& point : sweep.points) {
    const SweepPoint* p = &point;
    if (json* r = recorded(*p)) {
      if (evaluated(*r)) continue;
      const int status = evaluate_point(sweep, plan, *p, kiln, args.launcher, *r);
      if (status == 0) save();
      failed += status != 0;
      if ((stopped = stop_status(status))) break;
      continue;
    }
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
      if ((stopped = stop_status(status))) break;  // asked to stop (preemption): go no further, and say so
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
    if (p->token_budget > 0) record["token_budget"] = p->token_budget;
    std::printf("%s: validation loss %.4f after %.4g tokens, %.0f s\n", p->name.c_str(), outcome.final_val,
                outcome.tokens, wall);
    // Recorded before it is evaluated: a failed evaluation does not lose the run.
    done[p->name + "/" + p->hash] = records.size();
    records.push_back(std::move(record));
    save();
    if (!plan.files.empty()) {
      const int eval_status = evaluate_point(sweep, plan, *p, kiln, args.launcher, records.back());
      if (eval_status == 0) save();
      failed += eval_status != 0;
      if ((stopped = stop_status(eval_status))) break;
    }
  }
  std::size_t complete = 0;
  for (const SweepPoint& p : sweep.points)
    if (const json* r = recorded(p)) complete += evaluated(*r);
  std::printf("%zu of %zu points recorded%s in %s%s\n", complete, sweep.points.size(),
              plan.files.empty() ? "" : " and evaluated", sweep.results.c_str(),
              complete < sweep.points.size() ? "; run kiln sweep again for the rest" : "");
  return stopped ? kStopExitStatus : failed > 0 ? 1 : 0;
}

}  // namespace kiln::cli
