// Matrix products for linear layers. Row-major throughout; weights use the Hugging Face GPT-2
// (Conv1D) layout W (in, out), so y = x W + b.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"
#include "kernels/host_device.h"

namespace kiln::cpu {

// c (m, n) = alpha * op(a) * op(b) + beta * c, op(a) (m, k), op(b) (k, n). Calls oneDNN sgemm.
void matmul(float* c, const float* a, const float* b, std::int64_t m, std::int64_t n,
            std::int64_t k, bool trans_a, bool trans_b, float alpha = 1.0f, float beta = 0.0f);

// The same with a and b rounded to bf16 and fp32 accumulation (oneDNN matmul primitive).
// Used when model.matmul is bf16: master weights stay fp32.
void matmul_bf16(float* c, const float* a, const float* b, std::int64_t m, std::int64_t n,
                 std::int64_t k, bool trans_a, bool trans_b, float beta = 0.0f);

// out (rows, out_dim) = inp (rows, in_dim) @ weight (in_dim, out_dim) + bias (out_dim); bias may
// be null.
void linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                    std::int64_t rows, std::int64_t in_dim, std::int64_t out_dim, bool bf16);

// linear_forward followed by GELU (tanh form, kernels/gelu.h): pre_gelu (rows, out_dim) = the
// linear output (what gelu_backward needs), out = gelu(pre_gelu). pre_gelu may be null (not
// kept); bias may be null.
void linear_forward_gelu(float* out, float* pre_gelu, const float* inp, const float* weight,
                         const float* bias, std::int64_t rows, std::int64_t in_dim,
                         std::int64_t out_dim, bool bf16);

// dinp = dout @ weight^T (overwritten); dweight += inp^T @ dout and dbias += column sums of
// dout (accumulated, for gradient accumulation).
// dinp and dbias may be null (not needed).
void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, std::int64_t rows,
                     std::int64_t in_dim, std::int64_t out_dim, bool bf16);

}  // namespace kiln::cpu

namespace kiln {

// Row-major products on a column-major BLAS (cuBLASLt). A row-major (r, c) matrix with row
// stride c is, byte for byte, the column-major (c, r) matrix -- its transpose -- with leading
// dimension c. kiln's c (m, n) = op(a) (m, k) op(b) (k, n) is therefore computed as the
// column-major product c^T (n, m) = op(b)^T (n, k) op(a)^T (k, m): the BLAS's first operand is
// kiln's b, its second is kiln's a, and an operand transposed in kiln's terms is transposed in
// the BLAS's terms too. A bias over kiln's columns (length n) is a bias over the rows of the
// column-major result, which is what cuBLASLt's BIAS epilogue broadcasts.
struct ColumnMajorOperand {
  std::int64_t rows, cols, ld;  // the stored matrix as the BLAS sees it (before its op)
  bool transpose;               // the BLAS's op: transposed (CUBLAS_OP_T) or not
};

struct ColumnMajorGemm {
  std::int64_t m, n, k;       // D (m, n) = op(first) (m, k) op(second) (k, n), column-major
  ColumnMajorOperand first;   // kiln's b
  ColumnMajorOperand second;  // kiln's a
  std::int64_t ldd;           // leading dimension of C and D: kiln's n
};

KILN_HOST_DEVICE ColumnMajorGemm column_major_gemm(std::int64_t m, std::int64_t n, std::int64_t k,
                                                   bool trans_a, bool trans_b) {
  ColumnMajorGemm g{};
  g.m = n;
  g.n = m;
  g.k = k;
  // kiln's b is stored (k, n) row-major = column-major (n, k), ld n: used as is. Transposed, it
  // is stored (n, k) = column-major (k, n), ld k, and the BLAS transposes it back.
  g.first = trans_b ? ColumnMajorOperand{k, n, k, true} : ColumnMajorOperand{n, k, n, false};
  // kiln's a is stored (m, k) = column-major (k, m), ld k: already op(a)^T. Transposed, it is
  // stored (k, m) = column-major (m, k), ld m, and the BLAS transposes it.
  g.second = trans_a ? ColumnMajorOperand{m, k, m, true} : ColumnMajorOperand{k, m, k, false};
  g.ldd = n;
  return g;
}

}  // namespace kiln

namespace kiln::cuda {

// The CUDA twins, on device pointers, through cuBLASLt: one handle and one 32 MiB workspace per
// process (created on first use), matmul descriptors and the heuristic's algorithm cached per
// shape, transposes, types, epilogue and pointer alignments, so steady-state steps run no
// heuristic queries. fp32 products use CUBLAS_COMPUTE_32F without TF32 (they match the CPU to
// fp32 rounding); bf16 products multiply bf16 inputs and accumulate in fp32. Any pointer
// alignment works (the alignments are passed to the heuristic); 16-byte aligned pointers and
// leading dimensions that are multiples of 8 get the fast kernels.
void matmul(float* c, const float* a, const float* b, std::int64_t m, std::int64_t n,
            std::int64_t k, bool trans_a, bool trans_b, float alpha = 1.0f, float beta = 0.0f);
// a and b rounded to bf16 (nearest even) in scratch memory, then a bf16 x bf16 -> fp32 product.
void matmul_bf16(float* c, const float* a, const float* b, std::int64_t m, std::int64_t n,
                 std::int64_t k, bool trans_a, bool trans_b, float beta = 0.0f);
// The bias is added by cuBLASLt's BIAS epilogue.
void linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                    std::int64_t rows, std::int64_t in_dim, std::int64_t out_dim, bool bf16);
// Bias in cuBLASLt's BIAS epilogue, then one GELU kernel (tanhf): cuBLASLt's own GELU is used
// only on the bf16 path, where its undocumented accuracy is below bf16 rounding.
void linear_forward_gelu(float* out, float* pre_gelu, const float* inp, const float* weight,
                         const float* bias, std::int64_t rows, std::int64_t in_dim,
                         std::int64_t out_dim, bool bf16);
// dweight is accumulated by the product (beta = 1); dbias by a two-pass column sum (fixed-order
// partial sums over row chunks, then a fixed-order sum of the partials): bit-identical between
// runs, no atomics.
void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, std::int64_t rows,
                     std::int64_t in_dim, std::int64_t out_dim, bool bf16);

// c (m, n) = op(a) op(b) + beta * c with bf16 a and b, fp32 accumulation, and c stored as bf16
// (c_bf16) or fp32. The tied LM head of bf16 training: logits = x @ wte^T in bf16, dx = dlogits
// @ wte in bf16, and dwte += dlogits^T @ x into the fp32 gradient (beta = 1).
void matmul_bf16_inputs(void* c, bool c_bf16, const bf16* a, const bf16* b, std::int64_t m,
                        std::int64_t n, std::int64_t k, bool trans_a, bool trans_b, float beta);

// The bf16 training path: bf16 activations and weight copies (biases too, as cuBLASLt's
// epilogues want the output's type), fp32 master weights and fp32 gradients. Products accumulate
// in fp32 and the bias is added in fp32; bf16 outputs are rounded once at the end.
//
// out (rows, out_dim) bf16 = inp (rows, in_dim) @ weight (in_dim, out_dim) + bias (out_dim, may
// be null).
void linear_forward_bf16(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias,
                         std::int64_t rows, std::int64_t in_dim, std::int64_t out_dim);
// The same followed by GELU (tanh form): pre_gelu = the linear output (bf16, may be null),
// out = gelu(pre_gelu) computed from the fp32 pre-activation. Fused into cuBLASLt's
// GELU(_AUX)(_BIAS) epilogue when it offers one (with pre_gelu: out_dim a multiple of 8, the
// aux matrix's leading-dimension rule), else the product then one bias+GELU kernel.
void linear_forward_gelu_bf16(bf16* out, bf16* pre_gelu, const bf16* inp, const bf16* weight,
                              const bf16* bias, std::int64_t rows, std::int64_t in_dim,
                              std::int64_t out_dim);
// dinp (rows, in_dim) bf16 = dout @ weight^T (overwritten); dweight (in_dim, out_dim) fp32 +=
// inp^T @ dout; dbias (out_dim) fp32 += column sums of dout. dinp and dbias may be null.
// dweight and dbias are bit-identical between runs.
void linear_backward_bf16(bf16* dinp, float* dweight, float* dbias, const bf16* dout,
                          const bf16* inp, const bf16* weight, std::int64_t rows,
                          std::int64_t in_dim, std::int64_t out_dim);

// Whether bias/GELU go into cuBLASLt's fused epilogues when it offers them (the default) or
// always into a separate kernel after the product. For benchmarks and tests of both paths.
void set_matmul_epilogue_fusion(bool enabled);

}  // namespace kiln::cuda
