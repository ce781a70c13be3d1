// The model's view of tensor parallelism (Megatron-style): which shard of each split weight it
// holds, and the two reductions a sharded block needs. core declares it, parallel/ implements it
// over the tensor-parallel group's communicator; with one rank there is none.
#pragma once

#include <cstdint>

namespace kiln {

class TensorParallel {
 public:
  virtual ~TensorParallel() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  // In place, over the ranks of the tensor-parallel group.
  virtual void all_reduce_sum(float* data, std::int64_t n) = 0;
  virtual void all_reduce_max(float* data, std::int64_t n) = 0;
};

}  // namespace kiln
