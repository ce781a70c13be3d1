// The scalar head (heads.h): a linear map from the hidden width to 1, through the kernel table.
#include "core/model/heads.h"

#include <cstring>

#include "core/rng.h"
#include "kernels/device.h"

namespace kiln {

ScalarHead::ScalarHead(int width, Device device)
    : width_(width), device_(device), kernels_(&kernels_for(device)),
      values_(Tensor::zeros({width + 1}, DType::f32, device)), grads_(Tensor::zeros({width + 1}, DType::f32, device)) {
  KILN_CHECK(width >= 1, "a scalar head needs a width of at least 1, got ", width);
}

void ScalarHead::init(std::uint64_t seed, float std) {
  std::vector<float> host(width_ + 1, 0.0f);
  const Rng rng(seed, 0x68656164ull);  // stream "head"
  for (int i = 0; i < width_; ++i) host[i] = std * rng.normal(static_cast<std::uint64_t>(i));
  if (device_ == Device::cpu) std::memcpy(values_.f32(), host.data(), host.size() * sizeof(float));
  else device::copy_to_device(values_.f32(), host.data(), host.size() * sizeof(float));
}

std::vector<float> ScalarHead::forward(const Tensor& hidden) {
  KILN_CHECK(hidden.shape().back() == width_, "scalar head of width ", width_, " given hidden states of width ",
             hidden.shape().back());
  const std::int64_t n = hidden.numel() / width_;
  if (!out_.defined() || out_.numel() < n) out_ = Tensor::empty({n}, DType::f32, device_);
  // values (n, 1) = hidden (n, C) @ w (C, 1) + b
  kernels_->linear_forward(out_.f32(), hidden.f32(), values_.f32(), values_.f32() + width_, n, width_, 1, false);
  std::vector<float> out(static_cast<std::size_t>(n));
  if (device_ == Device::cpu) std::memcpy(out.data(), out_.f32(), out.size() * sizeof(float));
  else device::copy_to_host(out.data(), out_.f32(), out.size() * sizeof(float));
  return out;
}

void ScalarHead::backward(const Tensor& hidden, const std::vector<float>& dvalues, Tensor& dhidden) {
  const std::int64_t n = hidden.numel() / width_;
  KILN_CHECK(static_cast<std::int64_t>(dvalues.size()) == n && dhidden.numel() == hidden.numel(),
             "scalar head backward: ", dvalues.size(), " value gradients for ", n, " rows");
  const float* dout = dvalues.data();
  if (device_ != Device::cpu) {
    if (!dout_.defined() || dout_.numel() < n) dout_ = Tensor::empty({n}, DType::f32, device_);
    device::copy_to_device(dout_.f32(), dvalues.data(), dvalues.size() * sizeof(float));
    dout = dout_.f32();
  }
  kernels_->linear_backward(dhidden.f32(), grads_.f32(), grads_.f32() + width_, dout, hidden.f32(), values_.f32(), n,
                            width_, 1, false);
}

}  // namespace kiln
