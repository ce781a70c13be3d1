// CUDA elementwise helpers of the residual stream and the fp32 <-> bf16 conversions, all through
// detail::launch_map (kernels/elementwise.h): 128-bit accesses when the pointers allow, fp32
// arithmetic, one rounding per bf16 store.
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/vector_io.cuh"
#include "kernels/elementwise.h"

namespace kiln::cuda {
namespace {

struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Identity {
  __device__ float operator()(float a, float) const { return a; }
};

__nv_bfloat16* nv(bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
const __nv_bfloat16* nv(const bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

}  // namespace

void add(float* out, const float* a, const float* b, std::int64_t n) {
  detail::launch_map<2>(out, a, b, n, Add{});
}

void accumulate(float* out, const float* in, std::int64_t n) {
  detail::launch_map<2>(out, static_cast<const float*>(out), in, n, Add{});
}

void add_bf16(bf16* out, const bf16* a, const bf16* b, std::int64_t n) {
  detail::launch_map<2>(nv(out), nv(a), nv(b), n, Add{});
}

void accumulate_bf16(bf16* out, const bf16* in, std::int64_t n) {
  detail::launch_map<2>(nv(out), nv(static_cast<const bf16*>(out)), nv(in), n, Add{});
}

void convert_f32_to_bf16(bf16* out, const float* in, std::int64_t n) {
  detail::launch_map<1>(nv(out), in, in, n, Identity{});
}

void convert_bf16_to_f32(float* out, const bf16* in, std::int64_t n) {
  detail::launch_map<1>(out, nv(in), nv(in), n, Identity{});
}

}  // namespace kiln::cuda
