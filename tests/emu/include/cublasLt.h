// cuBLASLt on the host emulator of CUDA (tests/emu/cuda_emu.h): the subset kernels/cuda/matmul.cu
// uses, found before the toolkit's header in test_cuda_emu and computed by tests/emu/cuda_emu_blas.cpp.
// Its purpose is to test kiln's own use of cuBLASLt -- the row-major to column-major mapping,
// transposes, leading dimensions, the epilogue it asks for and its fallbacks -- so it is a reference
// of the API's documented semantics (cublasLt.h, the cuBLAS documentation), plus two numeric
// behaviours seen on an H200 that a caller must guard against (split-K parts added in bf16, the
// bias added to a bf16-rounded product); not of NVIDIA's algorithm choice in general:
//  - D = epilogue(alpha op(A) op(B) + beta C), all column-major: a layout (type, rows, cols, ld)
//    describes the stored matrix before its op; op(A) is (m, k), op(B) (k, n), C and D (m, n).
//    beta == 0 reads nothing from C. alpha and beta are host floats (scale type CUDA_R_32F).
//  - Products exact, summed in double in k order, alpha and beta applied in double, rounded once
//    to fp32 (CUBLAS_COMPUTE_32F; no TF32). Split K (few output tiles: see
//    cublasLtReductionScheme_t below) rounds each part's running sum to fp32, or to bf16 where
//    the scheme adds parts in a bf16 output's type. Then the epilogue in fp32: BIAS adds bias[row]
//    (the vector as long as D's rows, broadcast over columns), to the product first rounded to
//    bf16 when D is bf16; GELU applies the tanh form (cuBLASLt
//    does not document which form: the tanh form is what GPT-2 needs and what kiln's test of it
//    asserts); the AUX variants store the GELU input to the aux matrix. bf16 results (D, aux) are
//    rounded to nearest even.
//  - Types: A and B both CUDA_R_32F (then C, D fp32) or both CUDA_R_16BF (C, D fp32 or bf16).
//    The bias has D's type, as cublasLt.h says of BIAS_DATA_TYPE (unset: D's type); another
//    type is CUBLAS_STATUS_NOT_SUPPORTED (the IMMA and fp8 exceptions are not emulated).
//  - Checked as documented, with CUBLAS_STATUS_INVALID_VALUE: attribute sizes, ld >= rows, shapes
//    that agree, a bias / aux pointer for the epilogues that need one, the aux ld (>= D's rows, a
//    multiple of 8), in-place C == D with the same layout, requestedAlgoCount > 0, a workspace at
//    least as large as the algorithm's (which takes all the preference allows).
//  - Checked as misuse (a message, then abort): matrices, bias, aux and workspace outside live
//    device memory (so a wrong ld or shape shows), a pointer less aligned than the heuristic was
//    told (MIN_ALIGNMENT_*, or the bias / aux pointer set when it ran), and an algorithm used for a
//    problem other than the one it was chosen for.
//  - Queued on the given stream, like a kernel (tests/emu/cuda_emu.h).
// Not emulated: other attributes, types and epilogues (an error names them), batches, row-major
// orders, device pointer modes, algorithm selection and timing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda_emu.h"

// Values as in the toolkit's headers.
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
using cudaDataType = cudaDataType_t;

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };

enum cublasLtEpilogue_t {
  CUBLASLT_EPILOGUE_DEFAULT = 1,
  CUBLASLT_EPILOGUE_BIAS = 4,
  CUBLASLT_EPILOGUE_GELU = 32,
  CUBLASLT_EPILOGUE_GELU_AUX = 32 | 128,
  CUBLASLT_EPILOGUE_GELU_BIAS = 32 | 4,
  CUBLASLT_EPILOGUE_GELU_AUX_BIAS = 32 | 128 | 4,
};

enum cublasLtMatmulDescAttributes_t {
  CUBLASLT_MATMUL_DESC_TRANSA = 3,                 // int32_t (cublasOperation_t)
  CUBLASLT_MATMUL_DESC_TRANSB = 4,                 // int32_t
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,               // uint32_t (cublasLtEpilogue_t)
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,           // const void*
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11,  // void*
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12,       // int64_t
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE = 22,  // int32_t (cudaDataType), -1: D's type
  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,        // int32_t (cudaDataType), -1: D's type
};

// How split-K parts are added up. The emulator's heuristic splits K where the output has few
// tiles, and picks the first scheme the preference's mask allows in this order: INPLACE and
// OUTPUT_TYPE (parts added in the output type: each partial sum rounded to bf16 for bf16 outputs,
// as cuBLASLt did on an H200), then COMPUTE_TYPE (fp32 partials, one rounding at the end).
enum cublasLtReductionScheme_t {
  CUBLASLT_REDUCTION_SCHEME_NONE = 0,
  CUBLASLT_REDUCTION_SCHEME_INPLACE = 1,
  CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE = 2,
  CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE = 4,
  CUBLASLT_REDUCTION_SCHEME_MASK = 0x7,
};

enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,    // uint64_t
  CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3,  // uint32_t, default CUBLASLT_REDUCTION_SCHEME_MASK
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,  // uint32_t, default 256
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};

struct cublasLtContext;
struct cublasLtMatmulDescOpaque_t;
struct cublasLtMatrixLayoutOpaque_t;
struct cublasLtMatmulPreferenceOpaque_t;
using cublasLtHandle_t = cublasLtContext*;
using cublasLtMatmulDesc_t = cublasLtMatmulDescOpaque_t*;
using cublasLtMatrixLayout_t = cublasLtMatrixLayoutOpaque_t*;
using cublasLtMatmulPreference_t = cublasLtMatmulPreferenceOpaque_t*;

struct cublasLtMatmulAlgo_t {
  std::uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  std::size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};

const char* cublasLtGetStatusName(cublasStatus_t status);
const char* cublasLtGetStatusString(cublasStatus_t status);
cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute_type,
                                        cudaDataType_t scale_type);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, std::size_t size);
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, std::uint64_t rows,
                                          std::uint64_t cols, std::int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout);
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    std::size_t size);
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned);
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* a,
                              cublasLtMatrixLayout_t a_layout, const void* b, cublasLtMatrixLayout_t b_layout,
                              const void* beta, const void* c, cublasLtMatrixLayout_t c_layout, void* d,
                              cublasLtMatrixLayout_t d_layout, const cublasLtMatmulAlgo_t* algo, void* workspace,
                              std::size_t workspace_bytes, cudaStream_t stream);

// Test hooks, for kiln's fallbacks (tests/emu/test_cublaslt.cpp).
namespace kiln::emu {
// Where the emulated cuBLASLt refuses every epilogue but DEFAULT: nowhere (as documented), in the
// heuristic (no algorithm), or in cublasLtMatmul (CUBLAS_STATUS_NOT_SUPPORTED).
enum class EpilogueRefusal { none, heuristic, launch };
void refuse_cublaslt_epilogues(EpilogueRefusal where);
// The epilogues of the cublasLtMatmul calls that ran since the last call, in order.
std::vector<unsigned> take_cublaslt_epilogues();
}  // namespace kiln::emu
