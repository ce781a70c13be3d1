// kiln scaling fit / kiln scaling plan (docs/scaling.md): scaling laws from a sweep's results.
#pragma once

#include <string>
#include <vector>

#include "core/scaling/scaling_law.h"

namespace kiln::cli {

struct ScalingFitArgs {
  std::string results;          // a results.jsonl of kiln sweep
  std::string out;              // fit.json (default: beside the results)
  int bootstrap = 200;          // resamples for the intervals (0: none)
  std::uint64_t seed = 1;
  double delta = 1e-3;          // Huber's delta, on log-loss
};

struct ScalingPlanArgs {
  std::string fit;              // fit.json of kiln scaling fit
  double flops = 0, params = 0, tokens = 0;  // exactly one
  std::string base;             // a config whose model shape and steps the plan fills in
  std::string out;              // write that config here (beside the base)
  int head_size = 32;           // of the chosen shape
};

// The runs of a results file: one JSON record per line. Records of unfinished runs are left out
// with a warning naming their line; a malformed line or a missing field is an error naming it.
std::vector<scaling::RunPoint> read_results(const std::string& path);

int scaling_fit(const ScalingFitArgs& args);
int scaling_plan(const ScalingPlanArgs& args);

}  // namespace kiln::cli
