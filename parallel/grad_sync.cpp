// Bucketed, overlapped gradient all-reduce for data parallelism.
#include "parallel/grad_sync.h"

#include "kernels/error.h"

namespace kiln {

GradientSync::GradientSync(Gpt& model, Communicator& dp, double bucket_mb) : model_(model), dp_(dp) {
  const auto& params = model.parameters();
  const float* base = model.gradient_buffer().f32();
  const auto limit = static_cast<std::int64_t>(bucket_mb * 1024 * 1024 / sizeof(float));
  bucket_of_.assign(params.size(), -1);
  // Walk parameters from the last to the first: backward finishes them roughly in that order,
  // and consecutive parameters are adjacent in the buffer, so each bucket is one range.
  for (std::size_t i = params.size(); i-- > 0;) {
    const std::int64_t offset = params[i].grad.f32() - base, n = params[i].grad.numel();
    if (buckets_.empty() || buckets_.back().size >= limit)
      buckets_.push_back({offset + n, 0, 0, 0});
    Bucket& b = buckets_.back();
    KILN_ASSERT(offset + n == b.offset);  // contiguous, descending
    b.offset = offset;
    b.size += n;
    ++b.num_params;
    bucket_of_[i] = static_cast<int>(buckets_.size()) - 1;
  }
  model_.set_gradient_ready_hook([this](std::size_t first, std::size_t end) { on_ready(first, end); });
}

GradientSync::~GradientSync() { model_.set_gradient_ready_hook({}); }

void GradientSync::arm() {
  armed_ = true;
  for (Bucket& b : buckets_) b.pending = b.num_params;
}

void GradientSync::on_ready(std::size_t first, std::size_t end) {
  if (!armed_) return;
  float* grads = model_.gradient_buffer().f32();
  for (std::size_t i = first; i < end; ++i) {
    Bucket& b = buckets_[bucket_of_[i]];
    if (--b.pending == 0) in_flight_.push_back(dp_.all_reduce_async(grads + b.offset, b.size));
  }
}

void GradientSync::finish() {
  KILN_ASSERT(armed_);
  for (const Bucket& b : buckets_) KILN_ASSERT(b.pending == 0);
  for (auto& handle : in_flight_) handle->wait();
  in_flight_.clear();
  armed_ = false;
}

}  // namespace kiln
