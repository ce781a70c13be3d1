// kiln sweep (docs/scaling.md): a grid of model shapes x token (or compute) budgets over a base
// config, each point trained to its budget (the LR schedule ends there), one record per finished
// run appended to a results file that kiln scaling fit reads.
#pragma once

#include <string>
#include <vector>

namespace kiln::cli {

struct SweepArgs {
  std::string sweep;            // SWEEP.yaml
  bool dry_run = false;         // list the points and their cost; train nothing
  std::string array_out;        // write the unfinished points as a kiln submit --array file instead
  std::string launcher;         // prefix of each training command, e.g. "mpirun -np 2"
};

// One point of a sweep.
struct SweepPoint {
  std::string name;
  int n_layer = 0, n_embd = 0, n_head = 0;
  double tokens = 0;            // the budget asked for
  std::int64_t steps = 0;       // steps of the base's batch that reach it
  double params = 0;            // non-embedding parameters
  double flops = 0;             // 6 N D with D = steps x tokens per step
  std::string group;            // the compute budget it belongs to (a `flops:` point)
  double token_budget = 0;      // the token budget it belongs to (a `tokens:` point)
  std::vector<std::string> overrides;  // what `kiln train BASE` is given
  std::string hash;             // of the base config's text and the overrides
};

// The evaluation of each finished point (`eval:` in the sweep): kiln eval of its last checkpoint.
struct SweepEval {
  std::vector<std::string> tasks;   // task files (paths as given, relative to the sweep file)
  bool corpus_probes = false;       // also the in-context probes of the base's corpus (kiln tasks --corpus)
  std::vector<int> num_fewshot;     // replaces the tasks' k when given
  int limit = 0;                    // documents per task (0: all)
  int batch = 16;
  bool enabled() const { return corpus_probes || !tasks.empty(); }
};

struct Sweep {
  std::string base;             // the base config's path
  std::string run_dir;          // each point trains in run_dir/<name>
  std::string results;          // run_dir/results.jsonl unless given
  std::vector<std::string> overrides;  // the sweep's own, for every point
  std::vector<SweepPoint> points;
  double max_flops = 0;         // 0: no budget
  SweepEval eval;
};

// Reads and checks a sweep file (errors name the file and key) and lays out its points.
Sweep load_sweep(const std::string& path);

int sweep(const SweepArgs& args);

}  // namespace kiln::cli
