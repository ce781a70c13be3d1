// CPU matrix products: oneDNN's sgemm (fastest of OpenBLAS, BLIS and oneDNN measured on this
// project's 2-core Zen4 machines, see docs/performance.md) and its bf16 matmul primitive.
#include "kernels/matmul.h"

#include "kernels/gelu.h"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace kiln::cpu {

void matmul(float* c, const float* a, const float* b, std::int64_t m, std::int64_t n,
            std::int64_t k, bool trans_a, bool trans_b, float alpha, float beta) {
  const std::int64_t lda = trans_a ? m : k;
  const std::int64_t ldb = trans_b ? k : n;
  dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a,
                                    lda, b, ldb, beta, c, n);
  if (status != dnnl_success)
    throw std::runtime_error("dnnl_sgemm failed with status " + std::to_string(status));
}

namespace {

// One cached oneDNN matmul primitive per shape: src (m, k) bf16 x weights (k, n) bf16 -> f32.
// Transposes are expressed through memory strides, so no data is moved to transpose.
struct Bf16Matmul {
  dnnl::matmul primitive;
  dnnl::memory::desc a_desc, b_desc, c_desc;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

const Bf16Matmul& bf16_matmul_for(std::int64_t m, std::int64_t n, std::int64_t k, bool trans_a,
                                  bool trans_b, float beta) {
  using key_t = std::tuple<std::int64_t, std::int64_t, std::int64_t, bool, bool, bool>;
  static std::map<key_t, Bf16Matmul> cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  key_t key{m, n, k, trans_a, trans_b, beta != 0.0f};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  Bf16Matmul mm;
  mm.a_desc = dnnl::memory::desc(dims{m, k}, dt::bf16, trans_a ? dims{1, m} : dims{k, 1});
  mm.b_desc = dnnl::memory::desc(dims{k, n}, dt::bf16, trans_b ? dims{1, k} : dims{n, 1});
  mm.c_desc = dnnl::memory::desc(dims{m, n}, dt::f32, dims{n, 1});
  dnnl::primitive_attr attr;
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  auto pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(mm.a_desc, mm.b_desc, mm.c_desc), attr,
                                         cpu_engine());
  mm.primitive = dnnl::matmul(pd);
  return cache.emplace(key, std::move(mm)).first->second;
}

// Round-to-nearest-even fp32 -> bf16 (as bits) of n values.
void to_bf16(std::uint16_t* out, const float* in, std::int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, &in[i], 4);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    out[i] = static_cast<std::uint16_t>(bits >> 16);
  }
}

}  // namespace

void matmul_bf16(float* c, const float* a, const float* b, std::int64_t m, std::int64_t n,
                 std::int64_t k, bool trans_a, bool trans_b, float beta) {
  const Bf16Matmul& mm = bf16_matmul_for(m, n, k, trans_a, trans_b, beta);
  // Scratch for the rounded inputs, kept per thread between calls.
  thread_local std::vector<std::uint16_t> a16, b16;
  a16.resize(m * k);
  b16.resize(k * n);
  to_bf16(a16.data(), a, m * k);
  to_bf16(b16.data(), b, k * n);
  dnnl::engine& engine = cpu_engine();
  dnnl::stream stream(engine);
  dnnl::memory a_mem(mm.a_desc, engine, a16.data());
  dnnl::memory b_mem(mm.b_desc, engine, b16.data());
  dnnl::memory c_mem(mm.c_desc, engine, c);
  mm.primitive.execute(stream, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
  stream.wait();
}

void linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                    std::int64_t rows, std::int64_t in_dim, std::int64_t out_dim, bool bf16) {
  float beta = 0.0f;
  if (bias != nullptr) {
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) std::memcpy(out + r * out_dim, bias, out_dim * 4);
    beta = 1.0f;
  }
  if (bf16)
    matmul_bf16(out, inp, weight, rows, out_dim, in_dim, false, false, beta);
  else
    matmul(out, inp, weight, rows, out_dim, in_dim, false, false, 1.0f, beta);
}

void linear_forward_gelu(float* out, float* pre_gelu, const float* inp, const float* weight,
                         const float* bias, std::int64_t rows, std::int64_t in_dim,
                         std::int64_t out_dim, bool bf16) {
  float* pre = pre_gelu != nullptr ? pre_gelu : out;  // without pre_gelu, GELU runs in place
  linear_forward(pre, inp, weight, bias, rows, in_dim, out_dim, bf16);
  gelu_forward(out, pre, rows * out_dim);
}

void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, std::int64_t rows,
                     std::int64_t in_dim, std::int64_t out_dim, bool bf16) {
  if (bf16) {
    if (dinp) matmul_bf16(dinp, dout, weight, rows, in_dim, out_dim, false, true, 0.0f);
    matmul_bf16(dweight, inp, dout, in_dim, out_dim, rows, true, false, 1.0f);
  } else {
    if (dinp) matmul(dinp, dout, weight, rows, in_dim, out_dim, false, true, 1.0f, 0.0f);
    matmul(dweight, inp, dout, in_dim, out_dim, rows, true, false, 1.0f, 1.0f);
  }
  if (dbias == nullptr) return;
  // Column sums with a fixed split of columns over threads: deterministic, no atomics.
#pragma omp parallel for schedule(static)
  for (std::int64_t j0 = 0; j0 < out_dim; j0 += 64) {
    const std::int64_t j1 = j0 + 64 < out_dim ? j0 + 64 : out_dim;
    float acc[64] = {};
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* row = dout + r * out_dim;
      for (std::int64_t j = j0; j < j1; ++j) acc[j - j0] += row[j];
    }
    for (std::int64_t j = j0; j < j1; ++j) dbias[j] += acc[j - j0];
  }
}

}  // namespace kiln::cpu
