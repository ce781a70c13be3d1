// Tensor and Storage: allocation, views and typed access.
#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "kernels/device.h"

namespace kiln {

std::size_t dtype_size(DType dtype) { return dtype == DType::f32 ? 4 : 2; }
const char* dtype_name(DType dtype) { return dtype == DType::f32 ? "f32" : "bf16"; }
const char* device_name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

Storage::Storage(std::size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device == Device::cuda) {
    data_ = device::alloc(nbytes);  // the caching allocator; an Error says why it failed
    return;
  }
  std::size_t rounded = (nbytes + 63) / 64 * 64;
  data_ = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  KILN_CHECK(data_ != nullptr, "out of host memory allocating ", nbytes,
             " bytes; use a smaller model or batch");
}

Storage::~Storage() {
  if (device_ == Device::cuda)
    device::free(data_);
  else
    std::free(data_);
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_string(const Shape& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + ")";
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (auto d : shape) KILN_CHECK(d >= 0, "negative dimension in shape ", shape_string(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::view(std::int64_t offset, const Shape& shape) const {
  KILN_ASSERT(defined());
  KILN_ASSERT(offset >= 0 && offset + shape_numel(shape) <= numel());
  Tensor t = *this;
  t.offset_ = offset_ + offset;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  KILN_CHECK(shape_numel(shape) == numel(), "cannot reshape ", shape_string(shape_), " to ",
             shape_string(shape), ": element counts differ");
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

std::int64_t Tensor::size(int dim) const {
  if (dim < 0) dim += ndim();
  KILN_ASSERT(dim >= 0 && dim < ndim());
  return shape_[dim];
}

float* Tensor::f32() {
  KILN_CHECK(dtype_ == DType::f32, "expected an f32 tensor, got ", dtype_name(dtype_));
  return static_cast<float*>(raw());
}

const float* Tensor::f32() const {
  KILN_CHECK(dtype_ == DType::f32, "expected an f32 tensor, got ", dtype_name(dtype_));
  return static_cast<const float*>(raw());
}

void Tensor::zero_() {
  if (device() == Device::cuda)
    device::fill_zero(raw(), nbytes());
  else
    std::memset(raw(), 0, nbytes());
}

void Tensor::copy_from(const Tensor& other) {
  KILN_CHECK(other.numel() == numel() && other.dtype() == dtype_, "copy_from: shape ",
             shape_string(other.shape()), " ", dtype_name(other.dtype()), " into ",
             shape_string(shape_), " ", dtype_name(dtype_));
  const bool from_gpu = other.device() == Device::cuda, to_gpu = device() == Device::cuda;
  if (from_gpu && to_gpu)
    device::copy_on_device(raw(), other.raw(), nbytes());
  else if (to_gpu)
    device::copy_to_device(raw(), other.raw(), nbytes());
  else if (from_gpu)
    device::copy_to_host(raw(), other.raw(), nbytes());
  else
    std::memcpy(raw(), other.raw(), nbytes());
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

}  // namespace kiln
