// The one place that picks a kernel twin by device. Model and optimizer code call kernels through
// a KernelTable, so adding a backend (kernels/cuda/) means filling one more table here.
#pragma once

#include "core/tensor.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/optimizer.h"

namespace kiln {

using BlockLayoutView = cpu::BlockLayoutView;
using AdamWStep = cpu::AdamWStep;
using AdamWSegment = cpu::AdamWSegment;

struct KernelTable {
  decltype(&cpu::matmul) matmul;
  decltype(&cpu::matmul_bf16) matmul_bf16;
  decltype(&cpu::linear_forward) linear_forward;
  decltype(&cpu::linear_backward) linear_backward;
  decltype(&cpu::layernorm_forward) layernorm_forward;
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
};

// Throws kiln::Error for a device this build has no kernels for.
const KernelTable& kernels_for(Device device);

}  // namespace kiln
