// Data-parallel gradient averaging, overlapped with backward. The gradient buffer is cut into
// buckets of about parallel.bucket_mb, each a contiguous run of whole parameters taken in the
// order backward finishes them (last block first). During the last backward pass of a step, the
// model's gradient-ready hook counts parameters into their buckets; a full bucket is handed to
// the communicator's worker thread at once, and backward goes on computing while it is summed.
// finish() waits for the rest. Every rank calls the same collectives in the same order.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/model/gpt.h"
#include "parallel/communicator.h"

namespace kiln {

class GradientSync {
 public:
  GradientSync(Gpt& model, Communicator& dp, double bucket_mb);
  ~GradientSync();

  // The next backward pass is the step's last: its finished buckets are all-reduced as they
  // complete. (Earlier passes of a step only accumulate locally.)
  void arm();
  // Waits until every bucket has been summed over the data-parallel ranks.
  void finish();

  int num_buckets() const { return static_cast<int>(buckets_.size()); }

 private:
  struct Bucket {
    std::int64_t offset, size;  // elements of the gradient buffer
    int pending;                // parameters not yet final in the current pass
    int num_params;
  };
  void on_ready(std::size_t first, std::size_t end);

  Gpt& model_;
  Communicator& dp_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;  // parameter index -> bucket
  std::vector<std::unique_ptr<CommHandle>> in_flight_;
  bool armed_ = false;
};

}  // namespace kiln
