// Training output: one console line per logged step (a progress bar in between when stdout is
// a terminal) and every value appended to <run_dir>/metrics.jsonl, one JSON object per line
// (per-rank files rank_<r>.jsonl on request).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/eval/evaluator.h"

namespace kiln {

struct StepRecord {
  std::int64_t step = 0;
  double loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;
  double tokens_per_s = 0.0;
  double mfu = 0.0;           // model FLOPs utilisation, 0..1
  double step_seconds = 0.0;
  std::int64_t tokens = 0;    // tokens processed so far in the run
  double comm_wait_s = 0.0;   // time the step waited for gradient communication (parallel runs)
  double comm_bytes = 0.0;    // gradient bytes this rank handed to collectives in the step
  // The stage's own values (Stage::step_metrics: ppo's reward, KL, ...), logged by name.
  std::map<std::string, double> extra;
  std::vector<std::string> console;  // the names of `extra` the console line shows
};

class MetricsLog {
 public:
  // Appends to `path` (a run's metrics.jsonl); resume_step > 0 first drops records of later
  // steps left by an interrupted run. console=false writes the file only.
  MetricsLog(const std::string& path, bool console, bool progress_bar, std::int64_t max_steps,
             int log_every, std::int64_t resume_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void step(const StepRecord& record);
  // The validation loss, and per task where the stage has tasks (jsonl "val_loss_by_task").
  // `extra`: the stage's other validation values (jsonl "val_<name>"), e.g. reward accuracy.
  void validation(std::int64_t step, double val_loss, const std::map<std::string, double>& by_task = {},
                  const std::map<std::string, double>& extra = {});
  // train.eval_tasks' scores (jsonl "eval_scores", "eval_spreads"; a console line per spread).
  void evaluation(std::int64_t step, const EvalReport& report);
  void note(const std::string& text);  // a console line (not in the jsonl)

 private:
  void append(const nlohmann::json& record);
  void clear_bar();

  std::string path_;
  std::FILE* file_ = nullptr;
  std::int64_t size_ = 0;  // bytes of whole records in the file
  bool console_;
  bool progress_bar_;
  bool bar_shown_ = false;
  std::int64_t max_steps_;
  int log_every_;
};

}  // namespace kiln
