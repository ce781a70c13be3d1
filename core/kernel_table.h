// The one place that picks a kernel twin by device. Model and optimizer code call kernels through
// a KernelTable: kiln::cpu::* on the cpu, kiln::cuda::* (kernels/cuda/, same signatures, device
// pointers) on cuda in builds with nvcc.
#pragma once

#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/llama.h"
#include "kernels/matmul.h"
#include "kernels/optimizer.h"

namespace kiln {

using BlockLayoutView = cpu::BlockLayoutView;
using AdamWStep = cpu::AdamWStep;
using AdamWSegment = cpu::AdamWSegment;

// The bf16 training path (model.dtype: bf16): bf16 activations and weight copies, fp32 master
// weights, gradients of parameters, LayerNorm statistics and losses. CUDA only.
struct Bf16Kernels {
  decltype(&cuda::embedding_forward_bf16) embedding_forward;
  decltype(&cuda::embedding_backward_bf16) embedding_backward;
  decltype(&cuda::layernorm_forward_bf16) layernorm_forward;
  decltype(&cuda::residual_layernorm_forward_bf16) residual_layernorm_forward;
  decltype(&cuda::layernorm_backward_bf16) layernorm_backward;
  decltype(&cuda::linear_forward_bf16) linear_forward;
  decltype(&cuda::linear_forward_gelu_bf16) linear_forward_gelu;
  decltype(&cuda::linear_backward_bf16) linear_backward;
  decltype(&cuda::gelu_backward_bf16) gelu_backward;
  decltype(&cuda::attention_forward_bf16) attention_forward;
  decltype(&cuda::attention_backward_bf16) attention_backward;
  decltype(&cuda::softmax_cross_entropy_bf16) softmax_cross_entropy;
  decltype(&cuda::matmul_bf16_inputs) matmul;
  decltype(&cuda::convert_f32_to_bf16) convert;
  decltype(&cuda::convert_bf16_to_f32) widen;
  decltype(&cuda::adamw_update_bf16_copy) adamw_update_copy;
  decltype(&cuda::rmsnorm_forward_bf16) rmsnorm_forward;
  decltype(&cuda::rmsnorm_backward_bf16) rmsnorm_backward;
  decltype(&cuda::residual_rmsnorm_forward_bf16) residual_rmsnorm_forward;
  decltype(&cuda::rope_forward_bf16) rope_forward;
  decltype(&cuda::rope_backward_bf16) rope_backward;
  decltype(&cuda::swiglu_forward_bf16) swiglu_forward;
  decltype(&cuda::swiglu_backward_bf16) swiglu_backward;
};

struct KernelTable {
  decltype(&cpu::matmul) matmul;
  decltype(&cpu::matmul_bf16) matmul_bf16;
  decltype(&cpu::linear_forward) linear_forward;
  decltype(&cpu::linear_forward_gelu) linear_forward_gelu;
  decltype(&cpu::linear_backward) linear_backward;
  decltype(&cpu::layernorm_forward) layernorm_forward;
  decltype(&cpu::residual_layernorm_forward) residual_layernorm_forward;
  decltype(&cpu::layernorm_backward) layernorm_backward;
  decltype(&cpu::gelu_forward) gelu_forward;
  decltype(&cpu::gelu_backward) gelu_backward;
  decltype(&cpu::attention_forward) attention_forward;
  decltype(&cpu::attention_backward) attention_backward;
  decltype(&cpu::attention_decode) attention_decode;
  decltype(&cpu::softmax_cross_entropy) softmax_cross_entropy;
  decltype(&cpu::cross_entropy_local_max) cross_entropy_local_max;
  decltype(&cpu::cross_entropy_local_sums) cross_entropy_local_sums;
  decltype(&cpu::cross_entropy_local_grad) cross_entropy_local_grad;
  decltype(&cpu::embedding_forward) embedding_forward;
  decltype(&cpu::embedding_backward) embedding_backward;
  decltype(&cpu::add) add;
  decltype(&cpu::accumulate) accumulate;
  decltype(&cpu::adamw_update) adamw_update;
  decltype(&cpu::sum_squares) sum_squares;
  // The LLaMA family (kernels/llama.h).
  decltype(&cpu::rmsnorm_forward) rmsnorm_forward;
  decltype(&cpu::rmsnorm_backward) rmsnorm_backward;
  decltype(&cpu::residual_rmsnorm_forward) residual_rmsnorm_forward;
  decltype(&cpu::rope_forward) rope_forward;
  decltype(&cpu::rope_backward) rope_backward;
  decltype(&cpu::swiglu_forward) swiglu_forward;
  decltype(&cpu::swiglu_backward) swiglu_backward;
  const Bf16Kernels* bf16 = nullptr;  // null where there is no bf16 path (the cpu)
  // Capabilities, asked where kernels are chosen: bf16 activations (model.dtype=bf16).
  bool has_bf16_activations() const { return bf16 != nullptr; }
};

// Throws kiln::Error for a device this build has no kernels for.
const KernelTable& kernels_for(Device device);

}  // namespace kiln
