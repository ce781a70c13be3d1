// Heads on the trunk's hidden states (Gpt::trunk_forward). The language-model head is the
// model's own (logits against the token embedding, tied); ScalarHead is the head of a reward or
// value model: one value per token, read at every token (values) or at one position per sequence
// (a reward at the last real token), on the same trunk. Its weight is the model's score.weight
// (a spec with score_head), so the optimizer, gradient buckets, ZeRO-1 and checkpoints take it
// with the trunk's parameters.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model/gpt.h"

namespace kiln {

class ScalarHead {
 public:
  // The scalar head of `model` (its spec has score_head); the model must outlive it.
  explicit ScalarHead(Gpt& model);

  // value = h . w, one per row of hidden (N, C), on the host.
  std::vector<float> forward(const Tensor& hidden);
  // Given dvalues (N, host: the loss's gradient with respect to each value; zero at rows the
  // loss does not read), writes dhidden (N, C) and accumulates the head's gradient.
  void backward(const Tensor& hidden, const std::vector<float>& dvalues, Tensor& dhidden);

 private:
  Gpt& model_;
  Parameter& weight_;
  Tensor out_, dout_;
};

}  // namespace kiln
