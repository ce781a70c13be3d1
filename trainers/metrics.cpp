// Console and metrics.jsonl output of a training run.
#include "trainers/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/checkpoint/atomic_file.h"
#include "kernels/error.h"

namespace kiln {

MetricsLog::MetricsLog(const std::string& path, bool console, bool progress_bar,
                       std::int64_t max_steps, int log_every, std::int64_t resume_step)
    : path_(path),
      console_(console),
      progress_bar_(console && progress_bar), max_steps_(max_steps), log_every_(log_every) {
  if (resume_step > 0) {
    // Keep only what the checkpoint we resume from had seen.
    std::ifstream in(path);
    std::string line, kept;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      auto record = nlohmann::json::parse(line, nullptr, false);
      if (!record.is_discarded() && record.value("step", std::int64_t{0}) <= resume_step) kept += line + "\n";
    }
    write_file_atomic(path, kept);
  }
  file_ = std::fopen(path.c_str(), resume_step > 0 ? "a" : "w");
  KILN_CHECK(file_ != nullptr, "cannot open ", path, " for writing: ", std::strerror(errno));
  KILN_CHECK(std::fseek(file_, 0, SEEK_END) == 0 && (size_ = std::ftell(file_)) >= 0, "cannot seek in ", path, ": ",
             std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  clear_bar();
  if (file_) std::fclose(file_);
}

void MetricsLog::append(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  errno = 0;
  if (std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0) {
    size_ += static_cast<std::int64_t>(line.size());
    return;
  }
  // A full disk or a lost mount: the run stops rather than train on without its record. The file
  // is cut back to its last whole record (best effort), and the checkpoints, written atomically,
  // are untouched: the newest one is complete.
  const int err = errno != 0 ? errno : EIO;
  std::clearerr(file_);
  const bool cut = ::ftruncate(fileno(file_), size_) == 0;
  throw Error(message("cannot write ", path_, ": ", std::strerror(err), " (the disk may be full). The run stops here; ",
                      cut ? "the file keeps every record before this one" : "the file may end in a partial record",
                      ", and the newest checkpoint in the run folder is complete: free space and continue with "
                      "kiln train --resume"));
}

void MetricsLog::clear_bar() {
  if (bar_shown_) std::printf("\r\033[K");
  bar_shown_ = false;
}

void MetricsLog::step(const StepRecord& r) {
  nlohmann::json record = {{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                           {"tokens_per_s", r.tokens_per_s}, {"mfu", r.mfu}, {"step_s", r.step_seconds},
                           {"tokens", r.tokens}, {"comm_wait_s", r.comm_wait_s}, {"comm_bytes", r.comm_bytes}};
  for (const auto& [name, value] : r.extra) record[name] = value;
  append(record);
  if (!console_) return;
  if (r.step % log_every_ == 0 || r.step == max_steps_ || r.step == 1) {
    clear_bar();
    std::string extra;
    for (const std::string& name : r.console)
      if (const auto it = r.extra.find(name); it != r.extra.end()) extra += message(" | ", name, " ", it->second);
    std::printf("step %6lld/%lld | loss %.4f | lr %.3e | grad norm %.3f | %8.0f tok/s | MFU %5.1f%%%s\n",
                static_cast<long long>(r.step), static_cast<long long>(max_steps_), r.loss, r.lr,
                r.grad_norm, r.tokens_per_s, 100.0 * r.mfu, extra.c_str());
  }
  if (progress_bar_ && r.step < max_steps_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * r.step / max_steps_);
    const double eta = r.step_seconds * (max_steps_ - r.step);
    std::printf("\r[%s%s] %lld/%lld  eta %.0fs", std::string(filled, '#').c_str(),
                std::string(kWidth - filled, '.').c_str(), static_cast<long long>(r.step),
                static_cast<long long>(max_steps_), eta);
    bar_shown_ = true;
  }
  std::fflush(stdout);
}

void MetricsLog::validation(std::int64_t step, double val_loss, const std::map<std::string, double>& by_task,
                            const std::map<std::string, double>& extra) {
  nlohmann::json record = {{"step", step}, {"val_loss", val_loss}};
  if (!by_task.empty()) record["val_loss_by_task"] = by_task;
  for (const auto& [name, value] : extra) record["val_" + name] = value;
  append(record);
  if (!console_) return;
  clear_bar();
  std::string tasks;
  for (const auto& [name, loss] : by_task) tasks += message(tasks.empty() ? " (" : ", ", name, " ", loss);
  if (!tasks.empty()) tasks += ")";
  for (const auto& [name, value] : extra) tasks += message(" | ", name, " ", value);
  std::printf("step %6lld | validation loss %.4f%s\n", static_cast<long long>(step), val_loss, tasks.c_str());
  std::fflush(stdout);
}

void MetricsLog::evaluation(std::int64_t step, const EvalReport& report) {
  const nlohmann::json j = report.to_json();
  append({{"step", step}, {"eval_scores", j["scores"]}, {"eval_spreads", j["spreads"]}, {"eval_seconds", report.seconds}});
  if (!console_) return;
  clear_bar();
  for (const EvalSpread& s : report.spreads)
    std::printf("step %6lld | eval %s %s k=%d: %.4f (templates %d: min %.4f, max %.4f)\n", static_cast<long long>(step),
                s.task.c_str(), s.metric.c_str(), s.k, s.mean, s.templates, s.min, s.max);
  std::fflush(stdout);
}

void MetricsLog::note(const std::string& text) {
  if (!console_) return;
  clear_bar();
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

}  // namespace kiln
