// The scalar head (heads.h): a linear map from the hidden width to 1, through the kernel table.
#include "core/model/heads.h"


#include "kernels/device.h"

namespace kiln {

namespace {
Parameter& score_weight(Gpt& model) {
  KILN_CHECK(model.params().has(Role::score_weight), "this model has no scalar head (its spec has no score_head)");
  return model.params().get(Role::score_weight);
}
}  // namespace

ScalarHead::ScalarHead(Gpt& model) : model_(model), weight_(score_weight(model)) {}

std::vector<float> ScalarHead::forward(const Tensor& hidden) {
  const std::int64_t c = model_.shape().n_embd, n = hidden.numel() / c;
  KILN_CHECK(hidden.shape().back() == c, "scalar head of width ", c, " given hidden states of width ",
             hidden.shape().back());
  const Device device = model_.device();
  if (!out_.defined() || out_.numel() < n) out_ = Tensor::empty({n}, DType::f32, device);
  // values (n, 1) = hidden (n, C) @ w (C, 1): score.weight's (1, C) row is that column.
  kernels_for(device).linear_forward(out_.f32(), hidden.f32(), weight_.value.f32(), nullptr, n, c, 1, false);
  const Tensor values = out_.view(0, {n}).to(Device::cpu);
  return std::vector<float>(values.f32(), values.f32() + n);
}

void ScalarHead::backward(const Tensor& hidden, const std::vector<float>& dvalues, Tensor& dhidden) {
  const std::int64_t c = model_.shape().n_embd, n = hidden.numel() / c;
  KILN_CHECK(static_cast<std::int64_t>(dvalues.size()) == n && dhidden.numel() == hidden.numel(),
             "scalar head backward: ", dvalues.size(), " value gradients for ", n, " rows");
  const Device device = model_.device();
  const float* dout = dvalues.data();
  if (device != Device::cpu) {
    if (!dout_.defined() || dout_.numel() < n) dout_ = Tensor::empty({n}, DType::f32, device);
    device::copy_to_device(dout_.f32(), dvalues.data(), dvalues.size() * sizeof(float));
    dout = dout_.f32();
  }
  kernels_for(device).linear_backward(dhidden.f32(), weight_.grad.f32(), nullptr, dout, hidden.f32(),
                                      weight_.value.f32(), n, c, 1, false);
}

}  // namespace kiln
