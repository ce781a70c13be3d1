// kiln::TensorParallel (the model's view of its tensor-parallel group) over a Communicator.
// Counts what it moves and how long the model waited, for the step log and the benchmark.
#pragma once

#include <chrono>

#include "core/model/tensor_parallel.h"
#include "parallel/communicator.h"

namespace kiln {

class TensorParallelGroup : public TensorParallel {
 public:
  explicit TensorParallelGroup(Communicator& group) : group_(group) {}
  int size() const override { return group_.size(); }
  int rank() const override { return group_.rank(); }
  void all_reduce_sum(float* data, std::int64_t n) override { reduce(data, n, ReduceOp::sum); }
  void all_reduce_max(float* data, std::int64_t n) override { reduce(data, n, ReduceOp::max); }

  // Bytes reduced and seconds spent in reductions since the last call; resets both.
  std::pair<double, double> take_stats() {
    const auto stats = std::make_pair(bytes_, seconds_);
    bytes_ = seconds_ = 0.0;
    return stats;
  }

 private:
  void reduce(float* data, std::int64_t n, ReduceOp op) {
    const auto start = std::chrono::steady_clock::now();
    group_.all_reduce(data, n, op);
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    bytes_ += static_cast<double>(n) * sizeof(float);
  }

  Communicator& group_;
  double bytes_ = 0.0, seconds_ = 0.0;
};

}  // namespace kiln
