// CUDA GELU (tanh form) forward and backward, fp32 and bf16, through detail::launch_map
// (kernels/elementwise.h). tanh(u) = 1 - 2 / (exp(2u) + 1) as in the CPU twin: exact at both
// tails (exp overflowing to inf gives 1, underflowing to 0 gives -1).
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/vector_io.cuh"
#include "kernels/elementwise.h"
#include "kernels/gelu.h"

namespace kiln::cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;

// 2 * rcp_rn(y) is the correctly rounded 2 / y (doubling is exact), as the CPU's division, for
// less than a full division costs; rcp(inf) = 0.
__device__ __forceinline__ float tanh_via_exp(float u) {
  return 1.0f - 2.0f * __frcp_rn(expf(2.0f * u) + 1.0f);
}

struct GeluForward {
  __device__ float operator()(float x, float) const {
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanh_via_exp(u));
  }
};

// op(inp, dout) = gelu'(inp) * dout.
struct GeluBackward {
  __device__ float operator()(float x, float dout) const {
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    const float t = tanh_via_exp(u);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
    const float grad = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    return grad * dout;
  }
};

__nv_bfloat16* nv(bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
const __nv_bfloat16* nv(const bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

}  // namespace

void gelu_forward(float* out, const float* inp, std::int64_t n) {
  detail::launch_map<1>(out, inp, inp, n, GeluForward{});
}

void gelu_backward(float* dinp, const float* inp, const float* dout, std::int64_t n) {
  detail::launch_map<2>(dinp, inp, dout, n, GeluBackward{});
}

void gelu_forward_bf16(bf16* out, const bf16* inp, std::int64_t n) {
  detail::launch_map<1>(nv(out), nv(inp), nv(inp), n, GeluForward{});
}

void gelu_backward_bf16(bf16* dinp, const bf16* inp, const bf16* dout, std::int64_t n) {
  detail::launch_map<2>(nv(dinp), nv(inp), nv(dout), n, GeluBackward{});
}

}  // namespace kiln::cuda
