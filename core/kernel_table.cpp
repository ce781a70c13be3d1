// Kernel tables per device.
#include "core/kernel_table.h"

namespace kiln {

namespace {
const KernelTable kCpuKernels{
    cpu::matmul,           cpu::matmul_bf16,        cpu::linear_forward,     cpu::linear_forward_gelu,
    cpu::linear_backward,  cpu::layernorm_forward,   cpu::residual_layernorm_forward,
    cpu::layernorm_backward, cpu::gelu_forward,
    cpu::gelu_backward,    cpu::attention_forward,  cpu::attention_backward, cpu::attention_decode,
    cpu::softmax_cross_entropy, cpu::cross_entropy_local_max, cpu::cross_entropy_local_sums,
    cpu::cross_entropy_local_grad, cpu::embedding_forward, cpu::embedding_backward,
    cpu::add,              cpu::accumulate,         cpu::adamw_update,
    cpu::sum_squares,
    cpu::rmsnorm_forward, cpu::rmsnorm_backward, cpu::residual_rmsnorm_forward, cpu::rope_forward,
    cpu::rope_backward, cpu::swiglu_forward, cpu::swiglu_backward,
};

#ifdef KILN_WITH_CUDA
const Bf16Kernels kCudaBf16Kernels{
    cuda::embedding_forward_bf16, cuda::embedding_backward_bf16, cuda::layernorm_forward_bf16,
    cuda::residual_layernorm_forward_bf16, cuda::layernorm_backward_bf16, cuda::linear_forward_bf16,
    cuda::linear_forward_gelu_bf16, cuda::linear_backward_bf16, cuda::gelu_backward_bf16,
    cuda::attention_forward_bf16, cuda::attention_backward_bf16, cuda::softmax_cross_entropy_bf16,
    cuda::matmul_bf16_inputs, cuda::convert_f32_to_bf16, cuda::convert_bf16_to_f32,
    cuda::adamw_update_bf16_copy, cuda::rmsnorm_forward_bf16, cuda::rmsnorm_backward_bf16,
    cuda::residual_rmsnorm_forward_bf16, cuda::rope_forward_bf16, cuda::rope_backward_bf16,
    cuda::swiglu_forward_bf16, cuda::swiglu_backward_bf16,
};

// The CUDA twins, name for name (kernels/cuda/*.cu); pointers are device memory.
const KernelTable kCudaKernels{
    cuda::matmul,           cuda::matmul_bf16,        cuda::linear_forward,     cuda::linear_forward_gelu,
    cuda::linear_backward,  cuda::layernorm_forward,   cuda::residual_layernorm_forward,
    cuda::layernorm_backward, cuda::gelu_forward,
    cuda::gelu_backward,    cuda::attention_forward,  cuda::attention_backward, cuda::attention_decode,
    cuda::softmax_cross_entropy, cuda::cross_entropy_local_max, cuda::cross_entropy_local_sums,
    cuda::cross_entropy_local_grad, cuda::embedding_forward, cuda::embedding_backward,
    cuda::add,              cuda::accumulate,         cuda::adamw_update,
    cuda::sum_squares,
    cuda::rmsnorm_forward, cuda::rmsnorm_backward, cuda::residual_rmsnorm_forward, cuda::rope_forward,
    cuda::rope_backward, cuda::swiglu_forward, cuda::swiglu_backward,
    &kCudaBf16Kernels,
};
#endif
}  // namespace

const KernelTable& kernels_for(Device device) {
#ifdef KILN_WITH_CUDA
  if (device == Device::cuda) return kCudaKernels;
#endif
  KILN_CHECK(device == Device::cpu, "this build of kiln has no ", device_name(device),
             " kernels; rebuild with CUDA (nvcc on PATH) or run on the cpu");
  return kCpuKernels;
}

}  // namespace kiln
