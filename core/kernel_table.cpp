// Kernel tables per device.
#include "core/kernel_table.h"

namespace kiln {

namespace {
const KernelTable kCpuKernels{
    cpu::matmul,           cpu::matmul_bf16,        cpu::linear_forward,     cpu::linear_backward,
    cpu::layernorm_forward, cpu::layernorm_backward, cpu::gelu_forward,
    cpu::gelu_backward,    cpu::attention_forward,  cpu::attention_backward, cpu::attention_decode,
    cpu::softmax_cross_entropy, cpu::cross_entropy_local_max, cpu::cross_entropy_local_sums,
    cpu::cross_entropy_local_grad, cpu::embedding_forward, cpu::embedding_backward,
    cpu::add,              cpu::accumulate,         cpu::adamw_update,
    cpu::sum_squares,
};
}  // namespace

const KernelTable& kernels_for(Device device) {
  KILN_CHECK(device == Device::cpu, "this build of kiln has no ", device_name(device),
             " kernels; rebuild with CUDA (nvcc on PATH) or run on the cpu");
  return kCpuKernels;
}

}  // namespace kiln
