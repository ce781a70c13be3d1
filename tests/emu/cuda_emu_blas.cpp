// The emulated cuBLASLt (what and how: tests/emu/include/cublasLt.h): descriptors as plain structs,
// the documented checks, and the product on the host in double with fp32 / bf16 results.
#include <cublasLt.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

struct cublasLtContext {
  int unused = 0;
};

struct cublasLtMatmulDescOpaque_t {
  std::int32_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  std::uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  std::int64_t aux_ld = 0;
  std::int32_t bias_type = -1, aux_type = -1;  // -1: D's type
};

struct cublasLtMatrixLayoutOpaque_t {
  cudaDataType_t type;
  std::uint64_t rows, cols;
  std::int64_t ld;
};

struct cublasLtMatmulPreferenceOpaque_t {
  std::uint64_t max_workspace = 0;
  std::uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D
  std::uint32_t reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
};

namespace {

using kiln::emu::EpilogueRefusal;

constexpr std::uint64_t kAlgoMagic = 0x6b696c6e2d656d75ull;  // "kiln-emu"

struct Hooks {
  std::mutex mutex;
  EpilogueRefusal refusal = EpilogueRefusal::none;
  std::vector<unsigned> epilogues_run;
};
Hooks& hooks() {
  static auto* h = new Hooks;
  return *h;
}

[[noreturn]] void misuse(const char* what) {
  std::fprintf(stderr, "kiln CUDA emulator: cuBLASLt misuse: %s\n", what);
  std::abort();
}

bool has(std::uint32_t epilogue, std::uint32_t part) { return (epilogue & part) == part; }
bool with_bias(std::uint32_t epilogue) { return has(epilogue, CUBLASLT_EPILOGUE_BIAS); }
bool with_gelu(std::uint32_t epilogue) { return has(epilogue, CUBLASLT_EPILOGUE_GELU); }
bool with_aux(std::uint32_t epilogue) { return has(epilogue, CUBLASLT_EPILOGUE_GELU_AUX); }

std::size_t element_bytes(cudaDataType_t type) { return type == CUDA_R_16BF ? 2 : 4; }
bool known_type(std::int64_t type) { return type == CUDA_R_32F || type == CUDA_R_16BF; }

std::uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  if (address == 0) return 256;
  const std::uintptr_t low = address & (~address + 1);
  return low >= 256 ? 256u : static_cast<std::uint32_t>(low);
}

// The problem as the heuristic and cublasLtMatmul both check it.
struct Problem {
  std::int64_t m, n, k;
  cudaDataType_t ab_type, d_type, bias_type, aux_type;
};

// Documented consistency of descriptor and layouts; CUBLAS_STATUS_SUCCESS fills `p`.
cublasStatus_t check_problem(const cublasLtMatmulDescOpaque_t* desc, const cublasLtMatrixLayoutOpaque_t* a,
                             const cublasLtMatrixLayoutOpaque_t* b, const cublasLtMatrixLayoutOpaque_t* c,
                             const cublasLtMatrixLayoutOpaque_t* d, Problem* p) {
  if (!desc || !a || !b || !c || !d) return CUBLAS_STATUS_INVALID_VALUE;
  for (const auto* layout : {a, b, c, d})
    if (layout->ld < 0 || static_cast<std::uint64_t>(layout->ld) < layout->rows) return CUBLAS_STATUS_INVALID_VALUE;
  const bool ta = desc->trans_a == CUBLAS_OP_T, tb = desc->trans_b == CUBLAS_OP_T;
  const std::uint64_t m = ta ? a->cols : a->rows, k = ta ? a->rows : a->cols;
  const std::uint64_t kb = tb ? b->cols : b->rows, n = tb ? b->rows : b->cols;
  if (kb != k || c->rows != m || c->cols != n || d->rows != m || d->cols != n) return CUBLAS_STATUS_INVALID_VALUE;
  if (a->type != b->type || c->type != d->type) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (a->type == CUDA_R_32F && d->type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  const std::uint32_t e = desc->epilogue;
  const auto bias_type = static_cast<cudaDataType_t>(desc->bias_type == -1 ? d->type : desc->bias_type);
  const auto aux_type = static_cast<cudaDataType_t>(desc->aux_type == -1 ? d->type : desc->aux_type);
  if (with_bias(e) && desc->bias == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  // "Bias vector elements are the same type as the elements of output matrix (Dtype)", the
  // exceptions being IMMA and fp8 kernels (cublasLt.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE).
  if (with_bias(e) && bias_type != d->type) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (with_aux(e) && (desc->aux == nullptr || aux_type != d->type || desc->aux_ld % 8 != 0 ||
                      static_cast<std::uint64_t>(desc->aux_ld) < m))
    return CUBLAS_STATUS_INVALID_VALUE;
  *p = Problem{static_cast<std::int64_t>(m), static_cast<std::int64_t>(n), static_cast<std::int64_t>(k), a->type,
               d->type, bias_type, aux_type};
  return CUBLAS_STATUS_SUCCESS;
}

// What an algorithm was chosen for, stored in cublasLtMatmulAlgo_t::data.
std::uint64_t pair(std::uint32_t lo, std::uint32_t hi) { return lo | static_cast<std::uint64_t>(hi) << 32; }

enum AlgoField { kMagic, kShape, kTypes, kAlignAB, kAlignCD, kAlignBiasAux, kWorkspace, kSplitK };

// The split-K choice, a stand-in for cuBLASLt's: an output of fewer 128x128 tiles than half the
// 132 multiprocessors of an H100/H200, with K of 64 or more, is split into up to 8 parts of at
// least 32 (scheme and parts packed into one word: parts in the low half).
std::uint64_t split_k(const Problem& p, std::uint32_t mask, std::uint64_t workspace) {
  const std::int64_t tiles = ((p.m + 127) / 128) * ((p.n + 127) / 128);
  if (tiles >= 66 || p.k < 64) return pair(1, CUBLASLT_REDUCTION_SCHEME_NONE);
  const auto parts = static_cast<std::uint32_t>(std::min<std::int64_t>(8, p.k / 32));
  for (const std::uint32_t scheme : {CUBLASLT_REDUCTION_SCHEME_INPLACE, CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE,
                                     CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE}) {
    if ((mask & scheme) == 0) continue;
    const std::uint64_t needs = scheme == CUBLASLT_REDUCTION_SCHEME_INPLACE ? 0 :
        static_cast<std::uint64_t>(p.m * p.n) * parts *
            (scheme == CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE ? 4 : element_bytes(p.d_type));
    if (needs <= workspace) return pair(parts, scheme);
  }
  return pair(1, CUBLASLT_REDUCTION_SCHEME_NONE);
}
std::uint64_t shape_word(const Problem& p, const cublasLtMatmulDescOpaque_t& desc) {
  return static_cast<std::uint64_t>(p.m) * 0x9e3779b97f4a7c15ull ^ static_cast<std::uint64_t>(p.n) * 0xc2b2ae3d27d4eb4full ^
         static_cast<std::uint64_t>(p.k) * 0x165667b19e3779f9ull ^ static_cast<std::uint64_t>(desc.trans_a) << 1 ^
         static_cast<std::uint64_t>(desc.trans_b);
}
std::uint64_t types_word(const Problem& p, const cublasLtMatmulDescOpaque_t& desc) {
  return static_cast<std::uint64_t>(p.ab_type) | static_cast<std::uint64_t>(p.d_type) << 8 |
         static_cast<std::uint64_t>(p.bias_type) << 16 | static_cast<std::uint64_t>(p.aux_type) << 24 |
         static_cast<std::uint64_t>(desc.epilogue) << 32;
}
bool aligned(const void* p, std::uint64_t word, int half) {
  const auto required = static_cast<std::uint32_t>(half ? word >> 32 : word);
  return alignment_of(p) >= required;
}

// Column-major element (row, col) of a stored matrix as float.
float element(const void* base, cudaDataType_t type, std::int64_t ld, std::int64_t row, std::int64_t col) {
  const std::int64_t i = row + col * ld;
  if (type == CUDA_R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  return static_cast<const float*>(base)[i];
}
void store(void* base, cudaDataType_t type, std::int64_t ld, std::int64_t row, std::int64_t col, float v) {
  const std::int64_t i = row + col * ld;
  if (type == CUDA_R_16BF) static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(base)[i] = v;
}

// The bytes a column-major (rows, cols, ld) matrix spans.
std::size_t span_bytes(std::int64_t rows, std::int64_t cols, std::int64_t ld, cudaDataType_t type) {
  if (rows == 0 || cols == 0) return 0;
  return static_cast<std::size_t>((cols - 1) * ld + rows) * element_bytes(type);
}
void require_device(const void* p, std::size_t bytes, const char* what) {
  if (bytes == 0) return;
  if (!kiln::emu::in_device_memory(p, bytes)) {
    char message[160];
    std::snprintf(message, sizeof message, "%s (%zu bytes from %p) is not inside one device allocation", what, bytes, p);
    misuse(message);
  }
}

double gelu_tanh(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

// op(X) as float, packed so that the k values of one output row (A) or column (B) are contiguous.
template <class T>
void pack_as(float* out, const T* x, std::int64_t ld, bool k_along_columns, std::int64_t outer, std::int64_t k) {
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t i = 0; i < k; ++i) {
      const T v = k_along_columns ? x[o + i * ld] : x[i + o * ld];
      if constexpr (sizeof(T) == 2) out[o * k + i] = __bfloat162float(v);
      else out[o * k + i] = v;
    }
}
std::vector<float> pack(const void* x, const cublasLtMatrixLayoutOpaque_t& layout, bool trans, std::int64_t outer,
                        std::int64_t k, bool x_is_a) {
  // A: op(A)(o, i) is A(o, i) (k along the stored columns), or A(i, o) transposed. B: op(B)(i, o)
  // is B(i, o) (k along the stored rows), or B(o, i) transposed.
  const bool k_along_columns = x_is_a != trans;
  std::vector<float> out(static_cast<std::size_t>(outer * k));
  if (layout.type == CUDA_R_16BF)
    pack_as(out.data(), static_cast<const __nv_bfloat16*>(x), layout.ld, k_along_columns, outer, k);
  else
    pack_as(out.data(), static_cast<const float*>(x), layout.ld, k_along_columns, outer, k);
  return out;
}

// Exact products summed in double, in k order within eight interleaved partial sums.
double dot(const float* a, const float* b, std::int64_t k) {
  double s[8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= k; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += static_cast<double>(a[i + j]) * static_cast<double>(b[i + j]);
  for (; i < k; ++i) s[0] += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

}  // namespace

const char* cublasLtGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
  }
  return "unknown error";
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute_type,
                                        cudaDataType_t scale_type) {
  if (compute_type != CUBLAS_COMPUTE_32F || scale_type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *desc = new cublasLtMatmulDescOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, std::size_t size) {
  if (desc == nullptr || buf == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  // Copies the value when the caller passed exactly the documented type's size.
  auto set = [&](auto& field) {
    if (size != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, buf, size);
    return CUBLAS_STATUS_SUCCESS;
  };
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: status = set(desc->trans_a); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: status = set(desc->trans_b); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: status = set(desc->epilogue); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: status = set(desc->bias); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: status = set(desc->aux); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: status = set(desc->aux_ld); break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: status = set(desc->bias_type); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: status = set(desc->aux_type); break;
    default: misuse("a matmul descriptor attribute the emulator does not know");
  }
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  auto is_op = [](std::int32_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T; };
  if (!is_op(desc->trans_a) || !is_op(desc->trans_b)) return CUBLAS_STATUS_INVALID_VALUE;
  switch (desc->epilogue) {
    case CUBLASLT_EPILOGUE_DEFAULT: case CUBLASLT_EPILOGUE_BIAS: case CUBLASLT_EPILOGUE_GELU:
    case CUBLASLT_EPILOGUE_GELU_AUX: case CUBLASLT_EPILOGUE_GELU_BIAS: case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: break;
    default: misuse("an epilogue the emulator does not know");
  }
  if ((desc->bias_type != -1 && !known_type(desc->bias_type)) || (desc->aux_type != -1 && !known_type(desc->aux_type)))
    misuse("a bias or aux data type the emulator does not know");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, std::uint64_t rows,
                                          std::uint64_t cols, std::int64_t ld) {
  if (!known_type(type)) misuse("a matrix type the emulator does not know");
  *layout = new cublasLtMatrixLayoutOpaque_t{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = new cublasLtMatmulPreferenceOpaque_t;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    std::size_t size) {
  if (pref == nullptr || buf == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
    if (size != sizeof(std::uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&pref->max_workspace, buf, size);
    return CUBLAS_STATUS_SUCCESS;
  }
  if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES && attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
    if (size != sizeof(std::uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&pref->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, size);
    return CUBLAS_STATUS_SUCCESS;
  }
  if (attr == CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK) {
    if (size != sizeof(std::uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&pref->reduction_mask, buf, size);
    if ((pref->reduction_mask & ~static_cast<std::uint32_t>(CUBLASLT_REDUCTION_SCHEME_MASK)) != 0)
      return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
  }
  misuse("a preference attribute the emulator does not know");
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (requested <= 0 || pref == nullptr || results == nullptr || returned == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *returned = 0;
  Problem p{};
  if (const cublasStatus_t status = check_problem(desc, a, b, c, d, &p); status != CUBLAS_STATUS_SUCCESS) return status;
  {
    std::lock_guard<std::mutex> lock(hooks().mutex);
    if (desc->epilogue != CUBLASLT_EPILOGUE_DEFAULT && hooks().refusal == EpilogueRefusal::heuristic)
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  cublasLtMatmulHeuristicResult_t& r = results[0];
  r = cublasLtMatmulHeuristicResult_t{};
  r.algo.data[kMagic] = kAlgoMagic;
  r.algo.data[kShape] = shape_word(p, *desc);
  r.algo.data[kTypes] = types_word(p, *desc);
  r.algo.data[kAlignAB] = pair(pref->align[0], pref->align[1]);
  r.algo.data[kAlignCD] = pair(pref->align[2], pref->align[3]);
  // The bias and aux pointers set now tell the alignment the algorithm may assume.
  r.algo.data[kAlignBiasAux] = pair(with_bias(desc->epilogue) ? alignment_of(desc->bias) : 0,
                                    with_aux(desc->epilogue) ? alignment_of(desc->aux) : 0);
  r.algo.data[kWorkspace] = pref->max_workspace;
  r.algo.data[kSplitK] = split_k(p, pref->reduction_mask, pref->max_workspace);
  r.workspaceSize = pref->max_workspace;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* a,
                              cublasLtMatrixLayout_t a_layout, const void* b, cublasLtMatrixLayout_t b_layout,
                              const void* beta, const void* c, cublasLtMatrixLayout_t c_layout, void* d,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t* algo, void* workspace,
                              std::size_t workspace_bytes, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (alpha == nullptr || beta == nullptr || algo == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  Problem p{};
  if (const cublasStatus_t status = check_problem(desc, a_layout, b_layout, c_layout, d_layout, &p);
      status != CUBLAS_STATUS_SUCCESS)
    return status;
  if (c == d && std::memcmp(c_layout, d_layout, sizeof *c_layout) != 0) return CUBLAS_STATUS_INVALID_VALUE;
  const std::uint64_t* w = algo->data;
  if (w[kMagic] != kAlgoMagic || w[kShape] != shape_word(p, *desc) || w[kTypes] != types_word(p, *desc))
    misuse("an algorithm used for a problem other than the one the heuristic chose it for");
  if (workspace_bytes < w[kWorkspace]) return CUBLAS_STATUS_INVALID_VALUE;
  const std::uint32_t e = desc->epilogue;
  if (!aligned(a, w[kAlignAB], 0) || !aligned(b, w[kAlignAB], 1) || !aligned(c, w[kAlignCD], 0) ||
      !aligned(d, w[kAlignCD], 1) || (with_bias(e) && !aligned(desc->bias, w[kAlignBiasAux], 0)) ||
      (with_aux(e) && !aligned(desc->aux, w[kAlignBiasAux], 1)))
    misuse("a pointer less aligned than the heuristic was told (MIN_ALIGNMENT_* or the bias / aux pointer)");
  {
    std::lock_guard<std::mutex> lock(hooks().mutex);
    if (e != CUBLASLT_EPILOGUE_DEFAULT && hooks().refusal == EpilogueRefusal::launch) return CUBLAS_STATUS_NOT_SUPPORTED;
  }

  float alpha_value, beta_value;
  std::memcpy(&alpha_value, alpha, sizeof alpha_value);
  std::memcpy(&beta_value, beta, sizeof beta_value);
  const std::int64_t m = p.m, n = p.n, k = p.k;
  require_device(a, span_bytes(a_layout->rows, a_layout->cols, a_layout->ld, p.ab_type), "matrix A");
  require_device(b, span_bytes(b_layout->rows, b_layout->cols, b_layout->ld, p.ab_type), "matrix B");
  if (beta_value != 0.0f) require_device(c, span_bytes(m, n, c_layout->ld, p.d_type), "matrix C");
  require_device(d, span_bytes(m, n, d_layout->ld, p.d_type), "matrix D");
  if (with_bias(e)) require_device(desc->bias, static_cast<std::size_t>(m) * element_bytes(p.bias_type), "the bias vector");
  if (with_aux(e)) require_device(desc->aux, span_bytes(m, n, desc->aux_ld, p.aux_type), "the GELU aux matrix");
  require_device(workspace, w[kWorkspace], "the workspace");

  // The product runs when the stream gets there, with the descriptor and layouts of now.
  const auto parts = static_cast<std::int64_t>(static_cast<std::uint32_t>(w[kSplitK]));
  const bool parts_in_output_type = (w[kSplitK] >> 32) == CUBLASLT_REDUCTION_SCHEME_INPLACE ||
                                    (w[kSplitK] >> 32) == CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
  kiln::emu::enqueue(stream, [=, desc = *desc, a_layout = *a_layout, b_layout = *b_layout, c_ld = c_layout->ld,
                      d_ld = d_layout->ld] {
    const std::vector<float> op_a = pack(a, a_layout, desc.trans_a == CUBLAS_OP_T, m, k, true);
    const std::vector<float> op_b = pack(b, b_layout, desc.trans_b == CUBLAS_OP_T, n, k, false);
    // One part's product in double, rounded to what the reduction scheme keeps: fp32, or the
    // output type when the parts are added up there.
    auto keep = [&](double v) {
      const float f = static_cast<float>(v);
      return p.d_type == CUDA_R_16BF && parts_in_output_type ? __bfloat162float(__float2bfloat16_rn(f)) : f;
    };
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t i = 0; i < m; ++i) {
        double v = 0.0;
        if (parts == 1) {
          v = static_cast<double>(alpha_value) * dot(&op_a[i * k], &op_b[j * k], k);
        } else {
          for (std::int64_t part = 0; part < parts; ++part) {
            const std::int64_t first = k * part / parts, last = k * (part + 1) / parts;
            v = keep(v + static_cast<double>(alpha_value) * dot(&op_a[i * k + first], &op_b[j * k + first], last - first));
          }
        }
        if (beta_value != 0.0f) v += static_cast<double>(beta_value) * element(c, p.d_type, c_ld, i, j);
        float x = static_cast<float>(v);
        // A bf16 output's bias epilogue adds the bias to the product rounded to bf16 (as on an H200).
        if (with_bias(e) && p.d_type == CUDA_R_16BF) x = __bfloat162float(__float2bfloat16_rn(x));
        if (with_bias(e)) x += element(desc.bias, p.bias_type, 1, i, 0);
        if (with_aux(e)) store(desc.aux, p.aux_type, desc.aux_ld, i, j, x);
        if (with_gelu(e)) x = static_cast<float>(gelu_tanh(x));
        store(d, p.d_type, d_ld, i, j, x);
      }
  });
  std::lock_guard<std::mutex> lock(hooks().mutex);
  hooks().epilogues_run.push_back(e);
  return CUBLAS_STATUS_SUCCESS;
}

namespace kiln::emu {
void refuse_cublaslt_epilogues(EpilogueRefusal where) {
  std::lock_guard<std::mutex> lock(hooks().mutex);
  hooks().refusal = where;
}
std::vector<unsigned> take_cublaslt_epilogues() {
  std::lock_guard<std::mutex> lock(hooks().mutex);
  std::vector<unsigned> out;
  out.swap(hooks().epilogues_run);
  return out;
}
}  // namespace kiln::emu
