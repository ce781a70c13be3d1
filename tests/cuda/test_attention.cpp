// CUDA attention against the CPU twin (kernels/cpu/attention.cpp): the fp32 twins and the bf16
// tensor-core path, over dense causal layouts with partial last blocks and every sparse pattern,
// per-head layouts seen from a tensor-parallel shard (first_head != 0), packed documents and
// misaligned buffers; the backward run twice is bit-identical; bad arguments are clear errors.
//
// Tolerances (abs + rel * |ref|, per tensor):
//  - fp32: out and lse 1e-5, gradients 1e-4: both sides compute in fp32 and differ only in the
//    order of sums and in exp/log rounding.
//  - bf16: inputs are rounded to bf16 before the CPU twin sees them, so both start from the same
//    values. out: 1e-2 + 2e-2 relative, since the GPU rounds P to bf16 for the P V product
//    (2^-9 relative per weight) and out itself to bf16; lse stays fp32 (2e-4). Gradients: the
//    backward rounds P and dS to bf16 for its four products and dQ, dK, dV to bf16, errors of
//    about 2^-8 of the terms summed, so an element is judged against 1e-2 of the tensor's
//    largest magnitude plus 5e-2 of its own (the CPU backward is fed the GPU's out and lse).
#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>

#include "kernels/error.h"
#include "core/model/attention_layout.h"
#include "gpu_test.h"
#include "kernels/attention.h"

namespace {

using kiln::bf16;
using kiln::testing::DeviceBuffer;
using kiln::testing::expect_close;

struct Case {
  std::string kind = "dense";
  int block = 64, window = 1, stride = 1, summary = 1, global = 0;
  bool per_head = false;
  int layout_heads = 3;  // heads the layout is built for (per-head: the global head count)
  int first_head = 0;
  std::int64_t b = 2, t = 64, nh = 3, hd = 64;
  std::int64_t nkv = 0;    // key/value heads (0: nh); fewer: grouped-query attention
  bool packed = false;     // segments: several documents per row
  bool misaligned = false; // bf16 buffers offset by one element (scalar load/store path)

  std::string describe() const {
    return kind + " block " + std::to_string(block) + " t " + std::to_string(t) + " hd " +
           std::to_string(hd) + (per_head ? " per-head first " + std::to_string(first_head) : "") +
           (packed ? " packed" : "") + (misaligned ? " misaligned" : "") +
           (nkv > 0 ? " kv heads " + std::to_string(nkv) + " of " + std::to_string(nh) : "");
  }
  std::int64_t kv_heads() const { return nkv > 0 ? nkv : nh; }
  std::int64_t width() const { return (nh + 2 * kv_heads()) * hd; }  // of a q|k|v row
};

std::vector<float> normal(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// Non-decreasing document ids per row, a few random boundaries each.
std::vector<std::int32_t> packed_segments(std::int64_t b, std::int64_t t, unsigned seed) {
  std::mt19937 gen(seed);
  std::vector<std::int32_t> seg(static_cast<std::size_t>(b * t));
  for (std::int64_t bi = 0; bi < b; ++bi) {
    std::int32_t doc = 0;
    for (std::int64_t pos = 0; pos < t; ++pos) {
      if (pos > 0 && gen() % 23 == 0) ++doc;
      seg[bi * t + pos] = doc;
    }
  }
  return seg;
}

// A layout on the host and its device copy (row_ptr, cols, the transpose, segments).
struct Layouts {
  kiln::BlockLayout layout;
  std::vector<int> col_ptr, col_rows;
  std::vector<std::int32_t> segments;
  std::unique_ptr<DeviceBuffer<int>> row_ptr_d, cols_d, col_ptr_d, col_rows_d;
  std::unique_ptr<DeviceBuffer<std::int32_t>> segments_d;

  explicit Layouts(const Case& cs) {
    kiln::AttentionPattern p;
    p.kind = cs.kind;
    p.block = cs.block;
    p.window = cs.window;
    p.stride = cs.stride;
    p.summary = cs.summary;
    p.global = cs.global;
    p.per_head = cs.per_head;
    layout = kiln::build_layout(p, cs.t, cs.layout_heads);
    col_ptr.resize(layout.row_ptr.size());
    col_rows.resize(layout.cols.size());
    kiln::cpu::transpose_block_layout(col_ptr.data(), col_rows.data(), layout.row_ptr.data(),
                                      layout.cols.data(), layout.num_blocks, layout.num_layouts);
    row_ptr_d = std::make_unique<DeviceBuffer<int>>(layout.row_ptr);
    cols_d = std::make_unique<DeviceBuffer<int>>(layout.cols);
    col_ptr_d = std::make_unique<DeviceBuffer<int>>(col_ptr);
    col_rows_d = std::make_unique<DeviceBuffer<int>>(col_rows);
    if (cs.packed) {
      segments = packed_segments(cs.b, cs.t, 7);
      segments_d = std::make_unique<DeviceBuffer<std::int32_t>>(segments);
    }
  }
  kiln::cpu::BlockLayoutView host_view(int first_head) const {
    kiln::cpu::BlockLayoutView v = layout.view(first_head);
    v.segments = segments.empty() ? nullptr : segments.data();
    return v;
  }
  kiln::cpu::BlockLayoutView device_view(int first_head) const {
    kiln::cpu::BlockLayoutView v = layout.view(first_head);
    v.row_ptr = row_ptr_d->get();
    v.cols = cols_d->get();
    v.col_ptr = col_ptr_d->get();
    v.col_rows = col_rows_d->get();
    v.segments = segments_d ? segments_d->get() : nullptr;
    return v;
  }
};

float max_abs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Columns [first, first + n) of each row of a (rows, width) tensor.
std::vector<float> part(const std::vector<float>& qkv, std::int64_t rows, std::int64_t width, std::int64_t first,
                        std::int64_t n) {
  std::vector<float> out(static_cast<std::size_t>(rows * n));
  for (std::int64_t r = 0; r < rows; ++r)
    std::copy_n(qkv.begin() + r * width + first, n, out.begin() + r * n);
  return out;
}

// dq, dk and dv of (rows, c + 2 ckv) gradients, each against its own largest value.
void expect_grads_close(const std::vector<float>& got, const std::vector<float>& ref, std::int64_t rows,
                        std::int64_t c, std::int64_t ckv, double rel_of_max, double rtol) {
  const char* names[3] = {"dq", "dk", "dv"};
  const std::int64_t first[3] = {0, c, c + ckv}, n[3] = {c, ckv, ckv}, width = c + 2 * ckv;
  for (int p = 0; p < 3; ++p) {
    const auto r = part(ref, rows, width, first[p], n[p]);
    expect_close(part(got, rows, width, first[p], n[p]), r, rel_of_max * max_abs(r) + 1e-4, rtol, names[p]);
  }
}

void check_f32(const Case& cs) {
  SCOPED_TRACE(cs.describe());
  const Layouts lay(cs);
  const std::int64_t b = cs.b, t = cs.t, nh = cs.nh, c = nh * cs.hd, kv = cs.nkv;
  const auto qkv = normal(static_cast<std::size_t>(b * t * cs.width()), 1);
  const auto dout = normal(static_cast<std::size_t>(b * t * c), 2);
  std::vector<float> out(b * t * c), lse(b * nh * t), dqkv(qkv.size());
  kiln::cpu::attention_forward(out.data(), lse.data(), qkv.data(), b, t, c, nh, lay.host_view(cs.first_head), kv);

  DeviceBuffer<float> qkv_d(qkv), dout_d(dout), out_d(out.size()), lse_d(lse.size()), dqkv_d(dqkv.size());
  const auto view = lay.device_view(cs.first_head);
  kiln::cuda::attention_forward(out_d.get(), lse_d.get(), qkv_d.get(), b, t, c, nh, view, kv);
  const auto out_gpu = out_d.host(), lse_gpu = lse_d.host();
  expect_close(out_gpu, out, 1e-5, 1e-5, "out");
  expect_close(lse_gpu, lse, 1e-5, 1e-5, "lse");

  kiln::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out_gpu.data(), lse_gpu.data(),
                                b, t, c, nh, lay.host_view(cs.first_head), kv);
  kiln::cuda::attention_backward(dqkv_d.get(), dout_d.get(), qkv_d.get(), out_d.get(), lse_d.get(),
                                 b, t, c, nh, view, kv);
  const auto dqkv_gpu = dqkv_d.host();
  expect_close(dqkv_gpu, dqkv, 1e-4, 1e-4, "dqkv");

  kiln::cuda::attention_backward(dqkv_d.get(), dout_d.get(), qkv_d.get(), out_d.get(), lse_d.get(),
                                 b, t, c, nh, view, kv);
  EXPECT_EQ(std::memcmp(dqkv_d.host().data(), dqkv_gpu.data(), dqkv_gpu.size() * sizeof(float)), 0)
      << "the fp32 backward is not bit-reproducible";
}

// A device copy of bf16 values, at an offset of one element when misaligned.
struct Bf16Buffer {
  DeviceBuffer<bf16> storage;
  int offset;
  Bf16Buffer(const std::vector<bf16>& values, bool misaligned)
      : storage(padded(values, misaligned)), offset(misaligned ? 1 : 0) {}
  static std::vector<bf16> padded(const std::vector<bf16>& values, bool misaligned) {
    std::vector<bf16> v(values.size() + 8, bf16{0});
    std::copy(values.begin(), values.end(), v.begin() + (misaligned ? 1 : 0));
    return v;
  }
  bf16* get() { return storage.get() + offset; }
  std::vector<float> host(std::size_t n) const {
    const auto all = storage.host();
    return kiln::testing::to_float(std::vector<bf16>(all.begin() + offset, all.begin() + offset + n));
  }
};

void check_bf16(const Case& cs) {
  SCOPED_TRACE("bf16 " + cs.describe());
  const Layouts lay(cs);
  const std::int64_t b = cs.b, t = cs.t, nh = cs.nh, c = nh * cs.hd, kv = cs.nkv;
  const auto qkv_bf = kiln::testing::to_bf16(normal(static_cast<std::size_t>(b * t * cs.width()), 3));
  const auto dout_bf = kiln::testing::to_bf16(normal(static_cast<std::size_t>(b * t * c), 4));
  const auto qkv = kiln::testing::to_float(qkv_bf), dout = kiln::testing::to_float(dout_bf);
  const std::size_t n_out = b * t * c, n_qkv = qkv.size();
  std::vector<float> out(n_out), lse(b * nh * t), dqkv(n_qkv);
  kiln::cpu::attention_forward(out.data(), lse.data(), qkv.data(), b, t, c, nh, lay.host_view(cs.first_head), kv);

  Bf16Buffer qkv_d(qkv_bf, cs.misaligned), dout_d(dout_bf, cs.misaligned);
  Bf16Buffer out_d(std::vector<bf16>(n_out), cs.misaligned), dqkv_d(std::vector<bf16>(n_qkv), cs.misaligned);
  DeviceBuffer<float> lse_d(lse.size());
  const auto view = lay.device_view(cs.first_head);
  kiln::cuda::attention_forward_bf16(out_d.get(), lse_d.get(), qkv_d.get(), b, t, c, nh, view, kv);
  const auto out_gpu = out_d.host(n_out), lse_gpu = lse_d.host();
  expect_close(out_gpu, out, 1e-2, 2e-2, "out");
  expect_close(lse_gpu, lse, 2e-4, 2e-4, "lse");

  kiln::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out_gpu.data(), lse_gpu.data(),
                                b, t, c, nh, lay.host_view(cs.first_head), kv);
  kiln::cuda::attention_backward_bf16(dqkv_d.get(), dout_d.get(), qkv_d.get(), out_d.get(), lse_d.get(),
                                      b, t, c, nh, view, kv);
  const auto first = dqkv_d.storage.host();
  expect_grads_close(dqkv_d.host(n_qkv), dqkv, b * t, c, cs.kv_heads() * cs.hd, 1e-2, 5e-2);

  kiln::cuda::attention_backward_bf16(dqkv_d.get(), dout_d.get(), qkv_d.get(), out_d.get(), lse_d.get(),
                                      b, t, c, nh, view, kv);
  const auto second = dqkv_d.storage.host();
  EXPECT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(bf16)), 0)
      << "the bf16 backward is not bit-reproducible";
}

Case dense(int block, std::int64_t t, std::int64_t hd) {
  Case cs;
  cs.block = block;
  cs.t = t;
  cs.hd = hd;
  return cs;
}

Case sparse(const std::string& kind, int block, int window, int stride, std::int64_t t, std::int64_t hd) {
  Case cs = dense(block, t, hd);
  cs.kind = kind;
  cs.window = window;
  cs.stride = stride;
  return cs;
}

Case per_head_fixed(int block, int stride, std::int64_t t, std::int64_t hd) {
  Case cs = sparse("fixed", block, 1, stride, t, hd);
  cs.per_head = true;
  cs.layout_heads = 4;  // a shard holding global heads 1..3 of 4
  cs.first_head = 1;
  return cs;
}

Case packed(Case cs) {
  cs.packed = true;
  return cs;
}

// nh query heads sharing nkv key/value heads; per-head layouts are built for the nh heads.
Case grouped(Case cs, std::int64_t nh, std::int64_t nkv) {
  cs.nh = nh;
  cs.nkv = nkv;
  if (cs.per_head) {
    cs.layout_heads = static_cast<int>(nh);
    cs.first_head = 0;
  }
  return cs;
}

}  // namespace

TEST(CudaAttention, F32DenseCausalWithPartialLastBlocks) {
  KILN_REQUIRE_GPU();
  check_f32(dense(16, 1, 16));
  check_f32(dense(32, 17, 64));
  check_f32(dense(64, 100, 16));
  check_f32(dense(128, 257, 64));
  check_f32(dense(16, 257, 16));
}

TEST(CudaAttention, F32SparsePatternsPerHeadLayoutsAndPackedDocuments) {
  KILN_REQUIRE_GPU();
  check_f32(sparse("local", 16, 2, 1, 96, 64));
  check_f32(sparse("strided", 32, 2, 3, 256, 16));
  check_f32(sparse("fixed", 16, 1, 4, 128, 64));
  check_f32(per_head_fixed(16, 4, 128, 16));
  check_f32(packed(dense(16, 100, 64)));
  Case local_global = sparse("local", 32, 1, 1, 128, 16);
  local_global.global = 1;
  check_f32(packed(local_global));
}

TEST(CudaAttention, Bf16DenseCausalWithPartialLastBlocks) {
  KILN_REQUIRE_GPU();
  check_bf16(dense(16, 1, 64));
  check_bf16(dense(32, 17, 128));
  check_bf16(dense(64, 100, 64));
  check_bf16(dense(128, 257, 128));
  check_bf16(dense(64, 257, 64));   // 128-query tiles over two layout rows
  check_bf16(dense(16, 300, 128));  // eight layout rows per tile
}

TEST(CudaAttention, Bf16SparsePatternsPerHeadLayoutsAndPackedDocuments) {
  KILN_REQUIRE_GPU();
  check_bf16(sparse("local", 16, 3, 1, 256, 128));
  check_bf16(sparse("strided", 32, 2, 3, 256, 64));
  check_bf16(sparse("fixed", 16, 1, 4, 128, 64));
  check_bf16(per_head_fixed(64, 2, 512, 128));
  check_bf16(per_head_fixed(16, 4, 256, 64));
  check_bf16(packed(dense(16, 300, 64)));
  check_bf16(packed(sparse("local", 128, 1, 1, 256, 128)));
}

TEST(CudaAttention, Bf16OtherHeadSizesAndMisalignedBuffers) {
  KILN_REQUIRE_GPU();
  for (std::int64_t hd : {32, 48, 80, 96}) check_bf16(dense(64, 100, hd));
  Case odd = dense(32, 77, 64);
  odd.misaligned = true;
  check_bf16(odd);
  Case odd_sparse = packed(sparse("strided", 16, 2, 2, 128, 128));
  odd_sparse.misaligned = true;
  check_bf16(odd_sparse);
}

// Grouped-query attention (key/value heads read in place by their query heads; the dK/dV pass
// sums a key/value head's query heads in order): GQA, multi-query, per-head sparse layouts
// sharing a key/value head, packed documents.
TEST(CudaAttention, F32GroupedKeyValueHeads) {
  KILN_REQUIRE_GPU();
  check_f32(grouped(dense(16, 37, 16), 4, 2));
  check_f32(grouped(dense(32, 64, 64), 4, 1));
  check_f32(grouped(per_head_fixed(16, 2, 64, 16), 4, 2));
  check_f32(grouped(packed(dense(16, 100, 16)), 6, 3));
}

TEST(CudaAttention, Bf16GroupedKeyValueHeads) {
  KILN_REQUIRE_GPU();
  check_bf16(grouped(dense(16, 37, 64), 4, 2));
  check_bf16(grouped(dense(64, 100, 128), 4, 1));
  check_bf16(grouped(per_head_fixed(16, 2, 128, 64), 4, 2));
  check_bf16(grouped(packed(dense(16, 100, 64)), 6, 3));
}

TEST(CudaAttention, DecodeMatchesCpuWithAndWithoutKeyMasks) {
  KILN_REQUIRE_GPU();
  std::mt19937 gen(11);
  for (std::int64_t hd : {16, 64})
    for (std::int64_t n : {1, 37, 300, 1000}) {
      SCOPED_TRACE("hd " + std::to_string(hd) + " n " + std::to_string(n));
      for (std::int64_t nkv : {0, 2, 1}) {  // one key/value head per query head, grouped, multi-query
      const std::int64_t nh = nkv == 0 ? 3 : 4, c = nh * hd, ckv = (nkv == 0 ? nh : nkv) * hd;
      const auto q = normal(c, 5), k = normal(n * ckv, 6), v = normal(n * ckv, 7);
      std::vector<std::uint8_t> mask(nh * n);
      for (std::int64_t h = 0; h < nh; ++h)
        for (std::int64_t j = 0; j < n; ++j) mask[h * n + j] = j == n - 1 || gen() % 3 != 0;
      DeviceBuffer<float> q_d(q), k_d(k), v_d(v), out_d(c);
      DeviceBuffer<std::uint8_t> mask_d(mask);
      for (bool masked : {false, true}) {
        std::vector<float> out(c);
        kiln::cpu::attention_decode(out.data(), q.data(), k.data(), v.data(), n, c, nh,
                                    masked ? mask.data() : nullptr, nkv);
        kiln::cuda::attention_decode(out_d.get(), q_d.get(), k_d.get(), v_d.get(), n, c, nh,
                                     masked ? mask_d.get() : nullptr, nkv);
        expect_close(out_d.host(), out, 1e-5, 1e-5, masked ? "masked out" : "out");
      }
      }
    }
}

TEST(CudaAttention, BadArgumentsAreClearErrorsAndEmptyInputsLaunchNothing) {
  KILN_REQUIRE_GPU();
  Case cs = dense(16, 32, 64);
  const Layouts lay(cs);
  auto view = lay.device_view(0);
  DeviceBuffer<bf16> qkv(2 * 32 * 3 * 120), out(2 * 32 * 120), dqkv(2 * 32 * 3 * 120);
  DeviceBuffer<float> lse(2 * 3 * 32);
  try {  // hd = 40
    kiln::cuda::attention_forward_bf16(out.get(), lse.get(), qkv.get(), 2, 32, 120, 3, view);
    FAIL() << "hd 40 was accepted";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("hd=40"), std::string::npos) << e.what();
  }
  auto no_transpose = view;
  no_transpose.col_ptr = nullptr;
  no_transpose.col_rows = nullptr;
  DeviceBuffer<bf16> qkv64(2 * 32 * 3 * 192), out64(2 * 32 * 192), dqkv64(2 * 32 * 3 * 192);
  try {
    kiln::cuda::attention_backward_bf16(dqkv64.get(), out64.get(), qkv64.get(), out64.get(),
                                        lse.get(), 2, 32, 192, 3, no_transpose);
    FAIL() << "a layout without col_ptr was accepted";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("col_ptr"), std::string::npos) << e.what();
  }
  DeviceBuffer<float> f(2 * 32 * 3 * 192);
  try {
    kiln::cuda::attention_backward(f.get(), f.get(), f.get(), f.get(), lse.get(), 2, 32, 192, 3,
                                   no_transpose);
    FAIL() << "a layout without col_ptr was accepted (fp32)";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("col_ptr"), std::string::npos) << e.what();
  }
  // Size 0: nothing to do, no error.
  kiln::cuda::attention_forward_bf16(out64.get(), lse.get(), qkv64.get(), 0, 32, 192, 3, view);
  kiln::cuda::attention_backward_bf16(dqkv64.get(), out64.get(), qkv64.get(), out64.get(), lse.get(),
                                      0, 32, 192, 3, view);
  kiln::cuda::attention_forward(f.get(), lse.get(), f.get(), 0, 32, 192, 3, view);
  kiln::cuda::attention_backward(f.get(), f.get(), f.get(), f.get(), lse.get(), 0, 32, 192, 3, view);
  kiln::cuda::attention_decode(f.get(), f.get(), f.get(), f.get(), 0, 192, 3, nullptr);
  kiln::device::synchronize();
}
