// kiln::TensorParallel (the model's view of its tensor-parallel group) over a Communicator.
#pragma once

#include "core/model/tensor_parallel.h"
#include "parallel/communicator.h"

namespace kiln {

class TensorParallelGroup : public TensorParallel {
 public:
  explicit TensorParallelGroup(Communicator& group) : group_(group) {}
  int size() const override { return group_.size(); }
  int rank() const override { return group_.rank(); }
  void all_reduce_sum(float* data, std::int64_t n) override { group_.all_reduce(data, n, ReduceOp::sum); }
  void all_reduce_max(float* data, std::int64_t n) override { group_.all_reduce(data, n, ReduceOp::max); }

 private:
  Communicator& group_;
};

}  // namespace kiln
