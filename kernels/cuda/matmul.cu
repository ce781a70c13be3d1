// CUDA matrix products through cuBLASLt (kernels/matmul.h): one handle per process, a 32 MiB
// workspace from the caching allocator per call (so release_cached returns it too), a cache of matmul descriptors + heuristic algorithms per problem, the row-major to
// column-major mapping of column_major_gemm, fused bias/GELU epilogues where cuBLASLt offers
// them (else a separate bias+GELU kernel), and a deterministic column sum for bias gradients.
#include <cublasLt.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "kernels/cuda/runtime.h"
#include "kernels/device.h"
#include "kernels/matmul.h"

namespace kiln::cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Element-wise kernels: fp32 -> bf16 rounding, scaling by beta, the unfused bias+GELU epilogue.


// GELU, tanh form, as kernels/cpu/gelu.cpp.
__device__ __forceinline__ float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

constexpr int kElementwiseThreads = 256;

// Grid for a grid-stride loop over n elements: enough blocks to fill the device, never more
// than the elements need.
unsigned elementwise_blocks(std::int64_t n) {
  const std::int64_t blocks = ceil_div(n, kElementwiseThreads);
  return static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
}

__global__ void round_to_bf16_kernel(__nv_bfloat16* out, const float* in, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void scale_kernel(float* x, float beta, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] *= beta;
}

// The epilogue after an unfused product, on (rows, cols) row-major: v = product + bias[col] (bias
// may be null); pre (when given) = v; out = gelu ? gelu(v) : v, each rounded once to T. The fp32
// product may be out or pre itself (updated in place). Blocks over rows, threads over columns.
template <class T>
__global__ void bias_gelu_kernel(T* out, T* pre, const float* product, const T* bias,
                                 std::int64_t rows, std::int64_t cols, bool gelu) {
  for (std::int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* out_row = out + r * cols;
    T* pre_row = pre != nullptr ? pre + r * cols : nullptr;
    const float* product_row = product + r * cols;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float v = product_row[c];
      if (bias != nullptr) v += as_float(bias[c]);
      if (pre_row != nullptr) pre_row[c] = from_float<T>(v);
      out_row[c] = from_float<T>(gelu ? gelu_tanh(v) : v);
    }
  }
}

void round_to_bf16(__nv_bfloat16* out, const float* in, std::int64_t n) {
  if (n == 0) return;
  KILN_LAUNCH(elementwise_blocks(n), kElementwiseThreads, 0, round_to_bf16_kernel)(out, in, n);
  KILN_CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// Deterministic column sums: out[c] += sum over rows of x[r, c], for the bias gradient. Pass 1:
// block (32 columns x 8 row lanes) per (column tile, row chunk) sums its chunk in a fixed order
// into partial[chunk, c]. Pass 2: one thread per column adds the partials in chunk order.

constexpr int kSumColumns = 32;
constexpr int kSumLanes = 8;
constexpr std::int64_t kMaxSumChunks = 128;

template <class T>
__global__ void column_sum_partials_kernel(float* partial, const T* x, std::int64_t rows,
                                           std::int64_t cols, std::int64_t rows_per_chunk) {
  __shared__ float sums[kSumLanes][kSumColumns + 1];
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * kSumColumns + threadIdx.x;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.y) * rows_per_chunk;
  const std::int64_t last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
  float acc = 0.0f;
  if (col < cols)
    for (std::int64_t r = first + threadIdx.y; r < last; r += kSumLanes) acc += as_float(x[r * cols + col]);
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float s = 0.0f;
#pragma unroll
    for (int lane = 0; lane < kSumLanes; ++lane) s += sums[lane][threadIdx.x];
    partial[static_cast<std::int64_t>(blockIdx.y) * cols + col] = s;
  }
}

__global__ void column_sum_finish_kernel(float* out, const float* partial, std::int64_t chunks,
                                         std::int64_t cols) {
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float s = 0.0f;
  for (std::int64_t c = 0; c < chunks; ++c) s += partial[c * cols + col];
  out[col] += s;
}

template <class T>
void accumulate_column_sums(float* out, const T* x, std::int64_t rows, std::int64_t cols) {
  if (rows == 0 || cols == 0) return;
  // At least 64 rows per chunk, at most kMaxSumChunks chunks: a function of the shape only, so
  // the summation order (and the result) is the same on every call.
  std::int64_t chunks = ceil_div(rows, 64);
  if (chunks > kMaxSumChunks) chunks = kMaxSumChunks;
  const std::int64_t rows_per_chunk = ceil_div(rows, chunks);
  chunks = ceil_div(rows, rows_per_chunk);
  Workspace partial(static_cast<std::size_t>(chunks * cols) * sizeof(float));
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kSumColumns)), static_cast<unsigned>(chunks));
  KILN_LAUNCH(grid, dim3(kSumColumns, kSumLanes), 0, column_sum_partials_kernel<T>)(
      partial.as<float>(), x, rows, cols, rows_per_chunk);
  KILN_CUDA_LAUNCH_CHECK();
  KILN_LAUNCH(static_cast<unsigned>(ceil_div(cols, 256)), 256, 0, column_sum_finish_kernel)(
      out, partial.as<float>(), chunks, cols);
  KILN_CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt: handle, workspace, plan cache.

void check_cublas(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw Error(message("cuBLASLt error ", cublasLtGetStatusName(status), " (",
                      cublasLtGetStatusString(status), ") in ", what, " at ", file, ":", line));
}
#define KILN_CUBLAS_CHECK(call) check_cublas((call), #call, __FILE__, __LINE__)

constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

// Epilogue parts; the combinations map onto cublasLtEpilogue_t in to_cublas.
constexpr unsigned kBias = 1, kGelu = 2, kAux = 4;

cublasLtEpilogue_t to_cublas(unsigned epilogue) {
  switch (epilogue) {
    case kBias: return CUBLASLT_EPILOGUE_BIAS;
    case kGelu: return CUBLASLT_EPILOGUE_GELU;
    case kGelu | kAux: return CUBLASLT_EPILOGUE_GELU_AUX;
    case kGelu | kBias: return CUBLASLT_EPILOGUE_GELU_BIAS;
    case kGelu | kBias | kAux: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    default: return CUBLASLT_EPILOGUE_DEFAULT;
  }
}

// The largest power of two dividing the address, capped at 256 (cuBLASLt's default assumption).
std::uint32_t alignment_of(const void* ptr) {
  const auto address = reinterpret_cast<std::uintptr_t>(ptr);
  if (address == 0) return 256;
  const std::uintptr_t low = address & (~address + 1);
  return low >= 256 ? 256u : static_cast<std::uint32_t>(low);
}

// One product in kiln's row-major terms: c (m, n) = alpha op(a) op(b) + beta c, then the
// epilogue: + bias (n, fp32), then GELU; pre_gelu (m, n, c's type) receives the GELU input.
struct Gemm {
  void* c = nullptr;
  cudaDataType_t c_type = CUDA_R_32F;
  const void* a = nullptr;
  const void* b = nullptr;
  cudaDataType_t ab_type = CUDA_R_32F;
  std::int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f, beta = 0.0f;
  const void* bias = nullptr;  // (n), of c_type: cuBLASLt's bias has D's type (cublasLt.h)
  bool gelu = false;
  void* pre_gelu = nullptr;
};

struct PlanKey {
  std::int64_t m, n, k;
  bool trans_a, trans_b;
  int ab_type, c_type;
  unsigned epilogue;
  std::uint32_t align_a, align_b, align_c, align_bias, align_aux;
  bool operator==(const PlanKey& o) const {
    return m == o.m && n == o.n && k == o.k && trans_a == o.trans_a && trans_b == o.trans_b &&
           ab_type == o.ab_type && c_type == o.c_type && epilogue == o.epilogue &&
           align_a == o.align_a && align_b == o.align_b && align_c == o.align_c &&
           align_bias == o.align_bias && align_aux == o.align_aux;
  }
};

struct PlanKeyHash {
  std::size_t operator()(const PlanKey& key) const {
    std::size_t h = 0;
    auto mix = [&h](std::uint64_t v) { h ^= std::hash<std::uint64_t>{}(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    for (std::uint64_t v : {static_cast<std::uint64_t>(key.m), static_cast<std::uint64_t>(key.n),
                            static_cast<std::uint64_t>(key.k),
                            std::uint64_t{key.trans_a} * 2 + std::uint64_t{key.trans_b},
                            static_cast<std::uint64_t>(key.ab_type) << 32 | static_cast<std::uint32_t>(key.c_type),
                            std::uint64_t{key.epilogue}, std::uint64_t{key.align_a},
                            std::uint64_t{key.align_b}, std::uint64_t{key.align_c},
                            std::uint64_t{key.align_bias}, std::uint64_t{key.align_aux}})
      mix(v);
    return h;
  }
};

// A matmul descriptor, the layouts of cuBLAS's A (kiln's b), B (kiln's a) and C = D, and the
// heuristic's algorithm. Kept for the life of the process (never destroyed).
struct Plan {
  bool usable = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t first = nullptr, second = nullptr, result = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct Lt {
  std::mutex mutex;  // plans and descriptor attributes are shared state
  cublasLtHandle_t handle = nullptr;
  std::unordered_map<PlanKey, Plan, PlanKeyHash> plans;
};

Lt& lt() {
  static Lt* instance = [] {
    auto* created = new Lt;  // never destroyed: outlives static destructors that may still queue work
    KILN_CUBLAS_CHECK(cublasLtCreate(&created->handle));
    return created;
  }();
  return *instance;
}

std::atomic<bool> g_fuse_epilogues{true};

template <class T>
void set_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)));
}

PlanKey key_for(const Gemm& g, unsigned epilogue) {
  return PlanKey{g.m, g.n, g.k, g.trans_a, g.trans_b, static_cast<int>(g.ab_type),
                 static_cast<int>(g.c_type), epilogue, alignment_of(g.a), alignment_of(g.b),
                 alignment_of(g.c), (epilogue & kBias) ? alignment_of(g.bias) : 0u,
                 (epilogue & kAux) ? alignment_of(g.pre_gelu) : 0u};
}

// Builds the descriptor and layouts for g's problem and asks the heuristic for one algorithm.
// Not usable (descriptors released) when cuBLASLt has none: an epilogue then falls back to the
// separate kernel. Caller holds lt().mutex.
Plan make_plan(const Gemm& g, unsigned epilogue, const PlanKey& key) {
  const ColumnMajorGemm cm = column_major_gemm(g.m, g.n, g.k, g.trans_a, g.trans_b);
  Plan plan;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA,
                static_cast<std::int32_t>(cm.first.transpose ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB,
                static_cast<std::int32_t>(cm.second.transpose ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<std::uint32_t>(to_cublas(epilogue)));
  if (epilogue & kBias) {
    set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<std::int32_t>(g.c_type));
    set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  }
  if (epilogue & kAux) {
    set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.pre_gelu);
    set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, static_cast<std::int64_t>(cm.ldd));
  }
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.first, g.ab_type, cm.first.rows, cm.first.cols, cm.first.ld));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.second, g.ab_type, cm.second.rows, cm.second.cols, cm.second.ld));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.result, g.c_type, cm.m, cm.n, cm.ldd));

  cublasLtMatmulPreference_t preference = nullptr;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  auto prefer = [&](cublasLtMatmulPreferenceAttributes_t attribute, auto value) {
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value)));
  };
  prefer(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<std::uint64_t>(kWorkspaceBytes));
  prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b);  // cuBLAS's A is kiln's b
  prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
  prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
  prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c);
  // Split-K parts are summed in fp32 (the compute type) or not split at all. cuBLASLt otherwise
  // may add them up in the output type: with bf16 outputs, each part rounded to bf16 put errors
  // of 2-3% into 7x768x2050 and 33x65x129 products on an H200 (its first run, CudaLinearBf16).
  prefer(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, static_cast<std::uint32_t>(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(lt().handle, plan.desc, plan.first, plan.second, plan.result,
                                     plan.result, preference, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(preference);
  if (status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    plan.usable = true;
    plan.algo = result.algo;
    return plan;
  }
  cublasLtMatrixLayoutDestroy(plan.first);
  cublasLtMatrixLayoutDestroy(plan.second);
  cublasLtMatrixLayoutDestroy(plan.result);
  cublasLtMatmulDescDestroy(plan.desc);
  return Plan{};
}

// Runs g with the given epilogue through a cached plan. False (nothing queued) when cuBLASLt has
// no algorithm for it or refuses it at launch. Caller holds lt().mutex.
bool try_launch(const Gemm& g, unsigned epilogue) {
  Lt& state = lt();
  const PlanKey key = key_for(g, epilogue);
  auto it = state.plans.find(key);
  if (it == state.plans.end()) it = state.plans.emplace(key, make_plan(g, epilogue, key)).first;
  Plan& plan = it->second;
  if (!plan.usable) return false;
  // Per-call pointers (the plan was chosen for pointers of the same alignments).
  if (epilogue & kBias) set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (epilogue & kAux) set_attribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.pre_gelu);
  const Workspace workspace(kWorkspaceBytes);  // the same cached block every call
  const cublasStatus_t status =
      cublasLtMatmul(state.handle, plan.desc, &g.alpha, g.b, plan.first, g.a, plan.second, &g.beta,
                     g.c, plan.result, g.c, plan.result, &plan.algo, workspace.as<void>(),
                     kWorkspaceBytes, stream());
  if (status == CUBLAS_STATUS_SUCCESS) return true;
  if (epilogue == 0) check_cublas(status, "cublasLtMatmul", __FILE__, __LINE__);
  plan.usable = false;  // an epilogue cuBLASLt refuses: use the separate kernel from now on
  return false;
}

std::int64_t element_size(cudaDataType_t type) { return type == CUDA_R_16BF ? 2 : 4; }

// The product alone when the epilogue is not fused: zero (k == 0), or cuBLASLt with bias in its
// BIAS epilogue when `bias` is set. Returns whether the bias was added. Caller holds lt().mutex.
bool run_product(const Gemm& g) {
  const std::int64_t count = g.m * g.n;
  if (g.k == 0) {  // op(a) op(b) is zero
    if (g.beta == 0.0f) {
      device::fill_zero(g.c, static_cast<std::size_t>(count * element_size(g.c_type)));
    } else if (g.beta != 1.0f) {
      KILN_LAUNCH(elementwise_blocks(count), kElementwiseThreads, 0, scale_kernel)(static_cast<float*>(g.c), g.beta, count);
      KILN_CUDA_LAUNCH_CHECK();
    }
    return false;
  }
  if (g.bias != nullptr && g_fuse_epilogues.load() && try_launch(g, kBias)) return true;
  Gemm plain = g;
  plain.bias = nullptr;
  if (!try_launch(plain, 0))
    throw Error(message("cuBLASLt has no algorithm for the product (", g.m, " x ", g.k, ") x (",
                        g.k, " x ", g.n, "), trans_a=", g.trans_a, " trans_b=", g.trans_b,
                        " with pointers aligned to ", alignment_of(g.a), "/", alignment_of(g.b),
                        "/", alignment_of(g.c), " bytes"));
  return false;
}

// c = alpha op(a) op(b) + beta c [+ bias] [then GELU, pre_gelu = its input]. GELU is fused only
// for bf16 outputs: cuBLASLt does not document its GELU's accuracy, and fp32 results must match
// the CPU to fp32 rounding, so fp32 products take bias from the BIAS epilogue and GELU from
// bias_gelu_kernel (tanhf).
void run_gemm(const Gemm& g) {
  if (g.m == 0 || g.n == 0) return;
  const unsigned epilogue = (g.bias != nullptr ? kBias : 0u) | (g.gelu ? kGelu : 0u) |
                            (g.gelu && g.pre_gelu != nullptr ? kAux : 0u);
  KILN_ASSERT(epilogue == 0 || g.beta == 0.0f);
  KILN_ASSERT(g.c_type == CUDA_R_32F || g.beta == 0.0f);
  std::lock_guard<std::mutex> lock(lt().mutex);
  // bf16 outputs: bias and GELU in cuBLASLt's epilogue when it offers one. The GELU aux matrix
  // needs a leading dimension divisible by 8 (cublasLt.h).
  const bool bf16_out = g.c_type == CUDA_R_16BF;
  if (bf16_out && epilogue != 0 && g.k > 0 && g_fuse_epilogues.load() &&
      (!(epilogue & kAux) || g.n % 8 == 0) && try_launch(g, epilogue))
    return;

  // The product (+ bias) in fp32, then the kernel: into pre_gelu (when GELU keeps its input) or c
  // when they are fp32, else into fp32 scratch with the bias left to the kernel, so that bf16
  // results are rounded once, as in cuBLASLt's epilogues (a product rounded to bf16 before the
  // bias is added is off by half an ulp of the product, several ulps of a sum that cancels).
  const bool via_scratch = bf16_out && (g.gelu || g.bias != nullptr);
  Workspace scratch(via_scratch ? static_cast<std::size_t>(g.m * g.n) * sizeof(float) : 0);
  Gemm product = g;
  product.gelu = false;
  product.pre_gelu = nullptr;
  if (via_scratch) {
    product.c = scratch.as<float>();
    product.c_type = CUDA_R_32F;
    product.bias = nullptr;  // bf16: not the scratch's type
  } else if (epilogue & kAux) {
    product.c = g.pre_gelu;
  }
  const bool bias_added = run_product(product);
  if (!g.gelu && (g.bias == nullptr || bias_added) && !via_scratch) return;
  const void* bias = bias_added ? nullptr : g.bias;
  const float* product_fp32 = static_cast<const float*>(product.c);
  const unsigned blocks = static_cast<unsigned>(g.m < 65536 ? g.m : 65536);
  if (bf16_out) {
    KILN_LAUNCH(blocks, kElementwiseThreads, 0, bias_gelu_kernel<__nv_bfloat16>)(
        static_cast<__nv_bfloat16*>(g.c), static_cast<__nv_bfloat16*>(g.pre_gelu), product_fp32,
        static_cast<const __nv_bfloat16*>(bias), g.m, g.n, g.gelu);
  } else {
    KILN_LAUNCH(blocks, kElementwiseThreads, 0, bias_gelu_kernel<float>)(
        static_cast<float*>(g.c), static_cast<float*>(g.pre_gelu), product_fp32,
        static_cast<const float*>(bias), g.m, g.n, g.gelu);
  }
  KILN_CUDA_LAUNCH_CHECK();
}

// The fp32-API bf16 products: inputs rounded to bf16 in scratch memory.
struct RoundedBf16 {
  Workspace buffer;
  RoundedBf16(const float* x, std::int64_t n) : buffer(static_cast<std::size_t>(n) * 2) {
    round_to_bf16(buffer.as<__nv_bfloat16>(), x, n);
  }
  const __nv_bfloat16* get() const { return buffer.as<__nv_bfloat16>(); }
};

const __nv_bfloat16* device_bf16(const bf16* x) { return reinterpret_cast<const __nv_bfloat16*>(x); }

// linear_forward and linear_forward_gelu on fp32 tensors; bf16: inputs rounded first.
void linear_forward_fp32_api(float* out, float* pre_gelu, bool gelu, const float* inp,
                             const float* weight, const float* bias, std::int64_t rows,
                             std::int64_t in_dim, std::int64_t out_dim, bool bf16) {
  if (rows == 0 || out_dim == 0) return;
  Gemm g;
  g.c = out, g.c_type = CUDA_R_32F, g.m = rows, g.n = out_dim, g.k = in_dim, g.bias = bias;
  g.gelu = gelu, g.pre_gelu = pre_gelu;
  if (!bf16) {
    g.a = inp, g.b = weight, g.ab_type = CUDA_R_32F;
    run_gemm(g);
    return;
  }
  RoundedBf16 inp16(inp, rows * in_dim), weight16(weight, in_dim * out_dim);
  g.a = inp16.get(), g.b = weight16.get(), g.ab_type = CUDA_R_16BF;
  run_gemm(g);
}

}  // namespace

void set_matmul_epilogue_fusion(bool enabled) { g_fuse_epilogues.store(enabled); }

void matmul(float* c, const float* a, const float* b, std::int64_t m, std::int64_t n,
            std::int64_t k, bool trans_a, bool trans_b, float alpha, float beta) {
  Gemm g;
  g.c = c, g.c_type = CUDA_R_32F, g.a = a, g.b = b, g.ab_type = CUDA_R_32F;
  g.m = m, g.n = n, g.k = k, g.trans_a = trans_a, g.trans_b = trans_b, g.alpha = alpha, g.beta = beta;
  run_gemm(g);
}

void matmul_bf16(float* c, const float* a, const float* b, std::int64_t m, std::int64_t n,
                 std::int64_t k, bool trans_a, bool trans_b, float beta) {
  if (m == 0 || n == 0) return;
  RoundedBf16 a16(a, m * k), b16(b, k * n);
  Gemm g;
  g.c = c, g.c_type = CUDA_R_32F, g.a = a16.get(), g.b = b16.get(), g.ab_type = CUDA_R_16BF;
  g.m = m, g.n = n, g.k = k, g.trans_a = trans_a, g.trans_b = trans_b, g.beta = beta;
  run_gemm(g);
}

void matmul_bf16_inputs(void* c, bool c_bf16, const bf16* a, const bf16* b, std::int64_t m,
                        std::int64_t n, std::int64_t k, bool trans_a, bool trans_b, float beta) {
  if (m == 0 || n == 0) return;
  Gemm g;
  g.c = c, g.c_type = c_bf16 ? CUDA_R_16BF : CUDA_R_32F, g.a = a, g.b = b, g.ab_type = CUDA_R_16BF;
  g.m = m, g.n = n, g.k = k, g.trans_a = trans_a, g.trans_b = trans_b, g.beta = beta;
  run_gemm(g);
}

void linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                    std::int64_t rows, std::int64_t in_dim, std::int64_t out_dim, bool bf16) {
  linear_forward_fp32_api(out, nullptr, false, inp, weight, bias, rows, in_dim, out_dim, bf16);
}

void linear_forward_gelu(float* out, float* pre_gelu, const float* inp, const float* weight,
                         const float* bias, std::int64_t rows, std::int64_t in_dim,
                         std::int64_t out_dim, bool bf16) {
  linear_forward_fp32_api(out, pre_gelu, true, inp, weight, bias, rows, in_dim, out_dim, bf16);
}

void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, std::int64_t rows,
                     std::int64_t in_dim, std::int64_t out_dim, bool bf16) {
  if (rows == 0 || in_dim == 0 || out_dim == 0) return;
  if (bf16) {
    RoundedBf16 dout16(dout, rows * out_dim), inp16(inp, rows * in_dim);
    if (dinp != nullptr) {
      RoundedBf16 weight16(weight, in_dim * out_dim);
      Gemm g;  // dinp (rows, in_dim) = dout (rows, out_dim) @ weight^T
      g.c = dinp, g.c_type = CUDA_R_32F, g.a = dout16.get(), g.b = weight16.get(), g.ab_type = CUDA_R_16BF;
      g.m = rows, g.n = in_dim, g.k = out_dim, g.trans_b = true;
      run_gemm(g);
    }
    Gemm g;  // dweight (in_dim, out_dim) += inp^T @ dout
    g.c = dweight, g.c_type = CUDA_R_32F, g.a = inp16.get(), g.b = dout16.get(), g.ab_type = CUDA_R_16BF;
    g.m = in_dim, g.n = out_dim, g.k = rows, g.trans_a = true, g.beta = 1.0f;
    run_gemm(g);
  } else {
    if (dinp != nullptr) matmul(dinp, dout, weight, rows, in_dim, out_dim, false, true, 1.0f, 0.0f);
    matmul(dweight, inp, dout, in_dim, out_dim, rows, true, false, 1.0f, 1.0f);
  }
  if (dbias != nullptr) accumulate_column_sums(dbias, dout, rows, out_dim);
}

void linear_forward_bf16(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias,
                         std::int64_t rows, std::int64_t in_dim, std::int64_t out_dim) {
  if (rows == 0 || out_dim == 0) return;
  Gemm g;
  g.c = out, g.c_type = CUDA_R_16BF, g.a = device_bf16(inp), g.b = device_bf16(weight), g.ab_type = CUDA_R_16BF;
  g.m = rows, g.n = out_dim, g.k = in_dim, g.bias = device_bf16(bias);
  run_gemm(g);
}

void linear_forward_gelu_bf16(bf16* out, bf16* pre_gelu, const bf16* inp, const bf16* weight,
                              const bf16* bias, std::int64_t rows, std::int64_t in_dim,
                              std::int64_t out_dim) {
  if (rows == 0 || out_dim == 0) return;
  Gemm g;
  g.c = out, g.c_type = CUDA_R_16BF, g.a = device_bf16(inp), g.b = device_bf16(weight), g.ab_type = CUDA_R_16BF;
  g.m = rows, g.n = out_dim, g.k = in_dim, g.bias = device_bf16(bias), g.gelu = true, g.pre_gelu = pre_gelu;
  run_gemm(g);
}

void linear_backward_bf16(bf16* dinp, float* dweight, float* dbias, const bf16* dout,
                          const bf16* inp, const bf16* weight, std::int64_t rows,
                          std::int64_t in_dim, std::int64_t out_dim) {
  if (rows == 0 || in_dim == 0 || out_dim == 0) return;
  if (dinp != nullptr) {
    Gemm g;  // dinp (rows, in_dim) bf16 = dout (rows, out_dim) @ weight^T
    g.c = dinp, g.c_type = CUDA_R_16BF, g.a = device_bf16(dout), g.b = device_bf16(weight), g.ab_type = CUDA_R_16BF;
    g.m = rows, g.n = in_dim, g.k = out_dim, g.trans_b = true;
    run_gemm(g);
  }
  Gemm g;  // dweight (in_dim, out_dim) fp32 += inp^T @ dout
  g.c = dweight, g.c_type = CUDA_R_32F, g.a = device_bf16(inp), g.b = device_bf16(dout), g.ab_type = CUDA_R_16BF;
  g.m = in_dim, g.n = out_dim, g.k = rows, g.trans_a = true, g.beta = 1.0f;
  run_gemm(g);
  if (dbias != nullptr) accumulate_column_sums(dbias, device_bf16(dout), rows, out_dim);
}

}  // namespace kiln::cuda
