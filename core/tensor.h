// The one tensor type: dtype, shape, device tag and shared owning storage.
// A Tensor may be a view into a larger storage (the model keeps all parameters in one buffer
// and hands out views). Only core/kernel_table.cpp looks at device() to pick a kernel twin.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/error.h"

namespace kiln {

enum class DType { f32, bf16 };
enum class Device { cpu, cuda };

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

// Raw bytes on one device, 64-byte aligned, freed when the last Tensor using it goes away.
class Storage {
 public:
  Storage(std::size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() { return data_; }
  const void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t nbytes_ = 0;
  Device device_;
};

using Shape = std::vector<std::int64_t>;
std::int64_t shape_numel(const Shape& shape);
std::string shape_string(const Shape& shape);  // "(4, 256, 768)"

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);

  // A view of numel(shape) elements starting `offset` elements into this tensor's data.
  Tensor view(std::int64_t offset, const Shape& shape) const;
  // The same data seen with another shape of equal numel.
  Tensor reshape(const Shape& shape) const;

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  std::int64_t size(int dim) const;
  int ndim() const { return static_cast<int>(shape_.size()); }
  std::int64_t numel() const { return shape_numel(shape_); }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu; }

  void* raw() { return static_cast<char*>(storage_->data()) + offset_ * dtype_size(dtype_); }
  const void* raw() const {
    return static_cast<const char*>(storage_->data()) + offset_ * dtype_size(dtype_);
  }
  // Typed access to fp32 data; throws if the tensor is not fp32.
  float* f32();
  const float* f32() const;

  void zero_();
  // Same dtype and numel, any devices (a copy to the host waits for the device).
  void copy_from(const Tensor& other);
  // A copy on `device` (always a new storage).
  Tensor to(Device device) const;

 private:
  std::shared_ptr<Storage> storage_;
  std::int64_t offset_ = 0;  // in elements
  Shape shape_;
  DType dtype_ = DType::f32;
};

}  // namespace kiln
