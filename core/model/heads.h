// Heads on the trunk's hidden states (Gpt::trunk_forward). The language-model head is the
// model's own (logits against the token embedding, tied); ScalarHead is the head of a reward or
// value model: one value per token, read at every token (values) or at one position per sequence
// (a reward at the last real token), on the same trunk.
#pragma once

#include <cstdint>
#include <vector>

#include "core/kernel_table.h"
#include "core/tensor.h"

namespace kiln {

class ScalarHead {
 public:
  // A head on hidden states of `width` on `device`: value = h . w + b, w and b zero.
  ScalarHead(int width, Device device);

  // w ~ N(0, std) from the seed (element i drawn by its index), b = 0.
  void init(std::uint64_t seed, float std);
  // One value per row of hidden (N, width), on the host.
  std::vector<float> forward(const Tensor& hidden);
  // Given dvalues (N, host: the loss's gradient with respect to each value; zero at rows the
  // loss does not read), writes dhidden (N, width) and accumulates the head's gradients.
  void backward(const Tensor& hidden, const std::vector<float>& dvalues, Tensor& dhidden);

  // [w (width) | b], and their gradients: for the optimizer and checkpoints.
  Tensor& values() { return values_; }
  Tensor& grads() { return grads_; }
  void zero_grad() { grads_.zero_(); }

 private:
  int width_;
  Device device_;
  const KernelTable* kernels_;
  Tensor values_, grads_, out_, dout_;
};

}  // namespace kiln
