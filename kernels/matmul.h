// Matrix products for linear layers. Row-major throughout; weights use the Hugging Face GPT-2
// (Conv1D) layout W (in, out), so y = x W + b.
#pragma once

#include <cstdint>

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

// dinp = dout @ weight^T (overwritten); dweight += inp^T @ dout and dbias += column sums of
// dout (accumulated, for gradient accumulation).
// dinp and dbias may be null (not needed).
void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, std::int64_t rows,
                     std::int64_t in_dim, std::int64_t out_dim, bool bf16);

}  // namespace kiln::cpu
