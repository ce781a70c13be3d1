// CPU block-sparse causal attention (forward and backward) with online softmax.
// Tiles are BK x BK (queries x keys) and the head size HD is a template parameter where it is a
// common one (64, 128), so inner loops have constant trip counts and stay in vector registers.
#include "kernels/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "kernels/cpu/fast_math.h"

namespace kiln::cpu {

namespace {

// c: the query width nh * hd; nkv key/value heads (dividing nh), each serving nh / nkv
// consecutive query heads; a q|k|v row is c + 2 * nkv * hd wide.
struct Dims {
  std::int64_t b, t, c, nh, hd, nkv;
  Dims(std::int64_t b, std::int64_t t, std::int64_t c, std::int64_t nh, std::int64_t kv_heads)
      : b(b), t(t), c(c), nh(nh), hd(c / nh), nkv(kv_heads > 0 ? kv_heads : nh) {
    KILN_CHECK(nh > 0 && c % nh == 0, "attention: c=", c, " is not a multiple of nh=", nh);
    KILN_CHECK(nh % nkv == 0, "attention: ", nkv, " key/value heads do not divide ", nh, " query heads");
  }
  std::int64_t width() const { return c + 2 * nkv * hd; }  // of a q|k|v row
  std::int64_t group() const { return nh / nkv; }          // query heads per key/value head
  // Row pos of head h of part 0 (q: query head h) or 1, 2 (k, v: key/value head h).
  const float* head(const float* qkv, std::int64_t bi, std::int64_t part, std::int64_t h,
                    std::int64_t pos) const {
    return qkv + (bi * t + pos) * width() + (part == 0 ? 0 : c + (part - 1) * nkv * hd) + h * hd;
  }
};

// Sixteen floats as one value (GCC vector extension): accumulators declared with it stay in
// vector registers, which plain float arrays do not. The compiler lowers it to whatever vector
// width the target has, so nothing here requires AVX-512.
typedef float Vec16 __attribute__((vector_size(64)));

inline Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, Vec16 v) { std::memcpy(p, &v, sizeof v); }

// s (nq, BK) = q (nq, hd) . kt[:, 0:BK], where kt is (hd, ld) and zero beyond the real keys.
// Two query rows at a time share each load of kt: 2 x BK/16 accumulators in registers.
template <int BK, int HD>
inline void scores(float* s, const float* q, const float* kt, std::int64_t ld, int nq,
                   int hd_runtime) {
  static_assert(BK % 16 == 0);
  constexpr int kVecs = BK / 16;
  const int hd = HD > 0 ? HD : hd_runtime;
  int i = 0;
  for (; i + 1 < nq; i += 2) {
    Vec16 a0[kVecs] = {}, a1[kVecs] = {};
    const float* q0 = q + i * hd;
    const float* q1 = q0 + hd;
    for (int d = 0; d < hd; ++d) {
      const float* k = kt + d * ld;
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) {
        const Vec16 kv = load16(k + 16 * v);
        a0[v] += q0[d] * kv;
        a1[v] += q1[d] * kv;
      }
    }
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) {
      store16(s + i * BK + 16 * v, a0[v]);
      store16(s + (i + 1) * BK + 16 * v, a1[v]);
    }
  }
  if (i < nq) {
    Vec16 a0[kVecs] = {};
    for (int d = 0; d < hd; ++d) {
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) a0[v] += q[i * hd + d] * load16(kt + d * ld + 16 * v);
    }
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) store16(s + i * BK + 16 * v, a0[v]);
  }
}

// dst (hd) = dst * keep + sum_{j < n} coef[j * stride] * rows[j * hd + 0:hd]. With a constant HD
// the accumulators stay in registers for the whole sum; two sets halve the dependency chains.
template <int HD>
inline void accumulate_rows(float* dst, float keep, const float* coef, int stride,
                            const float* rows, int n, int hd_runtime) {
  if constexpr (HD > 0) {
    static_assert(HD % 16 == 0);
    constexpr int kVecs = HD / 16;
    Vec16 a[kVecs], b[kVecs] = {};
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) a[v] = load16(dst + 16 * v) * keep;
    int j = 0;
    for (; j + 1 < n; j += 2) {
      const float c0 = coef[j * stride], c1 = coef[(j + 1) * stride];
      const float* r0 = rows + j * HD;
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) {
        a[v] += c0 * load16(r0 + 16 * v);
        b[v] += c1 * load16(r0 + HD + 16 * v);
      }
    }
    if (j < n) {
      const float c0 = coef[j * stride];
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) a[v] += c0 * load16(rows + j * HD + 16 * v);
    }
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) store16(dst + 16 * v, a[v] + b[v]);
  } else {
    for (int d = 0; d < hd_runtime; ++d) dst[d] *= keep;
    for (int j = 0; j < n; ++j) {
      const float c = coef[j * stride];
      for (int d = 0; d < hd_runtime; ++d) dst[d] += c * rows[j * hd_runtime + d];
    }
  }
}

// One head's q, k or v for the whole sequence, copied contiguous and zero-padded to t_pad rows:
// (t_pad, hd), or transposed (hd, t_pad).
void gather_head(float* dst, const Dims& dm, const float* src_qkv, std::int64_t bi, int part,
                 std::int64_t h, std::int64_t t_pad, bool transpose, float scale = 1.0f) {
  const std::int64_t hd = dm.hd;
  std::fill(dst, dst + t_pad * hd, 0.0f);
  for (std::int64_t pos = 0; pos < dm.t; ++pos) {
    const float* src = dm.head(src_qkv, bi, part, h, pos);
    if (transpose)
      for (std::int64_t d = 0; d < hd; ++d) dst[d * t_pad + pos] = src[d] * scale;
    else
      for (std::int64_t d = 0; d < hd; ++d) dst[pos * hd + d] = src[d] * scale;
  }
}

// Forward for one (batch, head) and the query blocks part, part + parts, part + 2 parts, ...
// of the layout (interleaved, so causal rows of different lengths balance across tasks).
template <int BK, int HD>
void forward_head(float* out, float* lse, const float* qkv, const Dims& dm, std::int64_t bi,
                  std::int64_t h, int part, int parts, const BlockLayoutView& layout,
                  std::vector<float>& scratch) {
  const int hd = HD > 0 ? HD : static_cast<int>(dm.hd);
  const std::int64_t t_pad = static_cast<std::int64_t>(layout.num_blocks) * BK;
  scratch.resize(static_cast<std::size_t>(3 * t_pad * hd + BK * hd + BK * BK + 2 * BK));
  float* q_all = scratch.data();          // (t_pad, hd), scaled by 1/sqrt(hd)
  float* kt_all = q_all + t_pad * hd;     // (hd, t_pad)
  float* v_all = kt_all + t_pad * hd;     // (t_pad, hd)
  float* acc = v_all + t_pad * hd;        // (BK, hd)
  float* s = acc + BK * hd;               // (BK, BK)
  float* row_max = s + BK * BK;           // (BK)
  float* row_sum = row_max + BK;          // (BK)
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  gather_head(q_all, dm, qkv, bi, 0, h, t_pad, false, scale);
  gather_head(kt_all, dm, qkv, bi, 1, h / dm.group(), t_pad, true);
  gather_head(v_all, dm, qkv, bi, 2, h / dm.group(), t_pad, false);
  const int* rows = layout.rows_of(h);
  const std::int32_t* seg = layout.segments ? layout.segments + bi * dm.t : nullptr;
  for (int qb = part; qb < layout.num_blocks; qb += parts) {
    const std::int64_t q0 = static_cast<std::int64_t>(qb) * BK;
    const int nq = static_cast<int>(std::min<std::int64_t>(BK, dm.t - q0));
    std::fill(acc, acc + BK * hd, 0.0f);
    std::fill(row_max, row_max + BK, -INFINITY);
    std::fill(row_sum, row_sum + BK, 0.0f);
    for (int idx = rows[qb]; idx < rows[qb + 1]; ++idx) {
      const std::int64_t k0 = static_cast<std::int64_t>(layout.cols[idx]) * BK;
      const int nk = static_cast<int>(std::min<std::int64_t>(BK, dm.t - k0));
      if (seg && seg[k0 + nk - 1] < seg[q0]) continue;  // only earlier documents: block-diagonal
      scores<BK, HD>(s, q_all + q0 * hd, kt_all + k0, t_pad, nq, hd);
      for (int i = 0; i < nq; ++i) {
        float* si = s + i * BK;
        // Keys allowed for this query: index < nk and position <= query position.
        const int limit = static_cast<int>(std::min<std::int64_t>(nk, q0 + i - k0 + 1));
        if (limit <= 0) continue;
        if (seg) {  // keys of other documents are invisible
          const std::int32_t own = seg[q0 + i];
          for (int j = 0; j < limit; ++j)
            if (seg[k0 + j] != own) si[j] = -INFINITY;
        }
        float m = row_max[i];
#pragma omp simd reduction(max : m)
        for (int j = 0; j < BK; ++j) m = std::max(m, j < limit ? si[j] : -INFINITY);
        if (m == -INFINITY) continue;  // nothing visible yet
        const float correction = fast_exp(row_max[i] - m);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < BK; ++j) {
          const float p = j < limit ? fast_exp(si[j] - m) : 0.0f;
          si[j] = p;
          sum += p;
        }
        row_sum[i] = row_sum[i] * correction + sum;
        row_max[i] = m;
        accumulate_rows<HD>(acc + i * hd, correction, si, 1, v_all + k0 * hd, limit, hd);
      }
    }
    for (int i = 0; i < nq; ++i) {
      float* o = out + (bi * dm.t + q0 + i) * dm.c + h * hd;
      const float inv = row_sum[i] > 0.0f ? 1.0f / row_sum[i] : 0.0f;
      for (int d = 0; d < hd; ++d) o[d] = acc[i * hd + d] * inv;
      lse[(bi * dm.nh + h) * dm.t + q0 + i] =
          row_sum[i] > 0.0f ? row_max[i] + std::log(row_sum[i]) : INFINITY;
    }
  }
}

template <int BK, int HD>
void forward_impl(float* out, float* lse, const float* qkv, const Dims& dm,
                  const BlockLayoutView& layout) {
  // Threads over heads x query blocks: with fewer (batch, head) pairs than about twice the
  // threads (long sequences, small batches), each pair's query blocks are split in parts.
  const std::int64_t heads = dm.b * dm.nh;
  const int threads = omp_get_max_threads();
  const int parts = static_cast<int>(std::clamp<std::int64_t>((2 * threads + heads - 1) / heads, 1, layout.num_blocks));
  const std::int64_t tasks = heads * parts;
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < tasks; ++task) {
      const std::int64_t pair = task / parts;
      forward_head<BK, HD>(out, lse, qkv, dm, pair / dm.nh, pair % dm.nh, static_cast<int>(task % parts), parts,
                           layout, scratch);
    }
  }
}

// Backward for one (batch, key/value head): the query heads it serves in order, each over its
// query block rows in order; dq, dk, dv accumulated in per-task buffers, so no two threads ever
// write the same element and the sums' order is fixed.
template <int BK, int HD>
void backward_head(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, const Dims& dm, std::int64_t bi, std::int64_t g,
                   const BlockLayoutView& layout, std::vector<float>& scratch) {
  const int hd = HD > 0 ? HD : static_cast<int>(dm.hd);
  const std::int64_t t = dm.t, t_pad = static_cast<std::int64_t>(layout.num_blocks) * BK;
  scratch.assign(static_cast<std::size_t>(7 * t_pad * hd + BK * hd + 3 * BK * BK + 2 * t_pad), 0.0f);
  float* q_all = scratch.data();         // (t_pad, hd) scaled
  float* k_all = q_all + t_pad * hd;     // (t_pad, hd)
  float* kt_all = k_all + t_pad * hd;    // (hd, t_pad)
  float* vt_all = kt_all + t_pad * hd;   // (hd, t_pad)
  float* do_all = vt_all + t_pad * hd;   // (t_pad, hd)
  float* dk_all = do_all + t_pad * hd;   // (t_pad, hd)
  float* dv_all = dk_all + t_pad * hd;   // (t_pad, hd)
  float* dq = dv_all + t_pad * hd;       // (BK, hd)
  float* p = dq + BK * hd;               // (BK, BK)
  float* dp = p + BK * BK;               // (BK, BK)
  float* ds = dp + BK * BK;              // (BK, BK)
  float* delta = ds + BK * BK;           // (t_pad) rowsum(dout * out)
  float* row_lse = delta + t_pad;        // (t_pad)
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  gather_head(k_all, dm, qkv, bi, 1, g, t_pad, false);
  gather_head(kt_all, dm, qkv, bi, 1, g, t_pad, true);
  gather_head(vt_all, dm, qkv, bi, 2, g, t_pad, true);
  const std::int32_t* seg = layout.segments ? layout.segments + bi * t : nullptr;
  for (std::int64_t h = g * dm.group(); h < (g + 1) * dm.group(); ++h) {
    gather_head(q_all, dm, qkv, bi, 0, h, t_pad, false, scale);
    for (std::int64_t pos = 0; pos < t; ++pos) {
      const std::int64_t row = (bi * t + pos) * dm.c + h * hd;
      float dsum = 0.0f;
      for (int d = 0; d < hd; ++d) {
        do_all[pos * hd + d] = dout[row + d];
        dsum += dout[row + d] * out[row + d];
      }
      delta[pos] = dsum;
      row_lse[pos] = lse[(bi * dm.nh + h) * t + pos];
    }
    const int* rows = layout.rows_of(h);
    for (int qb = 0; qb < layout.num_blocks; ++qb) {
      const std::int64_t q0 = static_cast<std::int64_t>(qb) * BK;
      const int nq = static_cast<int>(std::min<std::int64_t>(BK, t - q0));
      const float* q = q_all + q0 * hd;
      const float* d_o = do_all + q0 * hd;
      std::fill(dq, dq + BK * hd, 0.0f);
      for (int idx = rows[qb]; idx < rows[qb + 1]; ++idx) {
        const std::int64_t k0 = static_cast<std::int64_t>(layout.cols[idx]) * BK;
        const int nk = static_cast<int>(std::min<std::int64_t>(BK, t - k0));
        if (seg && seg[k0 + nk - 1] < seg[q0]) continue;  // only earlier documents: block-diagonal
        scores<BK, HD>(p, q, kt_all + k0, t_pad, nq, hd);     // scaled scores
        scores<BK, HD>(dp, d_o, vt_all + k0, t_pad, nq, hd);  // dP = dO V^T
        for (int i = 0; i < nq; ++i) {
          const int limit = static_cast<int>(std::min<std::int64_t>(nk, q0 + i - k0 + 1));
          const float li = row_lse[q0 + i], di = delta[q0 + i];
#pragma omp simd
          for (int j = 0; j < BK; ++j) {
            const float pij = j < limit ? fast_exp(p[i * BK + j] - li) : 0.0f;
            p[i * BK + j] = pij;
            ds[i * BK + j] = pij * (dp[i * BK + j] - di);
          }
          if (seg) {
            const std::int32_t own = seg[q0 + i];
            for (int j = 0; j < limit; ++j)
              if (seg[k0 + j] != own) p[i * BK + j] = ds[i * BK + j] = 0.0f;
          }
        }
        for (int j = 0; j < nk; ++j) {
          accumulate_rows<HD>(dv_all + (k0 + j) * hd, 1.0f, p + j, BK, d_o, nq, hd);
          accumulate_rows<HD>(dk_all + (k0 + j) * hd, 1.0f, ds + j, BK, q, nq, hd);
        }
        for (int i = 0; i < nq; ++i)
          accumulate_rows<HD>(dq + i * hd, 1.0f, ds + i * BK, 1, k_all + k0 * hd, nk, hd);
      }
      for (int i = 0; i < nq; ++i) {
        float* dst = dqkv + (bi * t + q0 + i) * dm.width() + h * hd;
        for (int d = 0; d < hd; ++d) dst[d] = dq[i * hd + d] * scale;
      }
    }
  }
  for (std::int64_t pos = 0; pos < t; ++pos) {
    float* dk = dqkv + (bi * t + pos) * dm.width() + dm.c + g * hd;
    float* dv = dk + dm.nkv * hd;
    for (int d = 0; d < hd; ++d) {
      dk[d] = dk_all[pos * hd + d];
      dv[d] = dv_all[pos * hd + d];
    }
  }
}

template <int BK, int HD>
void backward_impl(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, const Dims& dm, const BlockLayoutView& layout) {
  const std::int64_t tasks = dm.b * dm.nkv;
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < tasks; ++task)
      backward_head<BK, HD>(dqkv, dout, qkv, out, lse, dm, task / dm.nkv, task % dm.nkv, layout,
                            scratch);
  }
}

// Calls fn.template operator()<BK, HD>() for the layout's block size and the head size.
template <class Fn>
void dispatch(int block, std::int64_t hd, Fn&& fn) {
  auto with_block = [&]<int BK>() {
    if (hd == 64)
      fn.template operator()<BK, 64>();
    else if (hd == 128)
      fn.template operator()<BK, 128>();
    else
      fn.template operator()<BK, 0>();
  };
  switch (block) {
    case 16: with_block.template operator()<16>(); break;
    case 32: with_block.template operator()<32>(); break;
    case 64: with_block.template operator()<64>(); break;
    case 128: with_block.template operator()<128>(); break;
    default:
      throw std::invalid_argument("attention block size " + std::to_string(block) +
                                  " is not supported; use 16, 32, 64 or 128");
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh, const BlockLayoutView& layout, std::int64_t kv_heads) {
  const Dims dm(b, t, c, nh, kv_heads);
  dispatch(layout.block, dm.hd, [&]<int BK, int HD>() {
    forward_impl<BK, HD>(out, lse, qkv, dm, layout);
  });
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, std::int64_t b, std::int64_t t, std::int64_t c,
                        std::int64_t nh, const BlockLayoutView& layout, std::int64_t kv_heads) {
  const Dims dm(b, t, c, nh, kv_heads);
  dispatch(layout.block, dm.hd, [&]<int BK, int HD>() {
    backward_impl<BK, HD>(dqkv, dout, qkv, out, lse, dm, layout);
  });
}

void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      std::int64_t n, std::int64_t c, std::int64_t nh, const std::uint8_t* key_mask,
                      std::int64_t kv_heads) {
  const Dims dm(1, n, c, nh, kv_heads);
  const std::int64_t hd = dm.hd, ckv = dm.nkv * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for schedule(static)
  for (std::int64_t h = 0; h < nh; ++h) {
    std::vector<float> p(n);
    float m = -INFINITY;
    for (std::int64_t j = 0; j < n; ++j) {
      if (key_mask && !key_mask[h * n + j]) {
        p[j] = -INFINITY;
        continue;
      }
      float s = 0.0f;
      const float* k = k_cache + j * ckv + h / dm.group() * hd;
      for (std::int64_t d = 0; d < hd; ++d) s += q[h * hd + d] * k[d];
      p[j] = s * scale;
      m = std::max(m, p[j]);
    }
    float sum = 0.0f;
    for (std::int64_t j = 0; j < n; ++j) sum += (p[j] = p[j] == -INFINITY ? 0.0f : fast_exp(p[j] - m));
    float* o = out + h * hd;
    for (std::int64_t d = 0; d < hd; ++d) o[d] = 0.0f;
    for (std::int64_t j = 0; j < n; ++j) {
      const float w = p[j] / sum;
      const float* v = v_cache + j * ckv + h / dm.group() * hd;
      for (std::int64_t d = 0; d < hd; ++d) o[d] += w * v[d];
    }
  }
}

void transpose_block_layout(int* col_ptr, int* col_rows, const int* row_ptr, const int* cols,
                            int num_blocks, int num_layouts) {
  const std::int64_t stride = static_cast<std::int64_t>(num_blocks) + 1;
  std::vector<int> next(static_cast<std::size_t>(num_blocks));
  for (int l = 0; l < num_layouts; ++l) {
    const int* rows = row_ptr + l * stride;
    int* ptr = col_ptr + l * stride;
    // Counts per column, then offsets starting where this layout's rows start in cols.
    std::fill(ptr, ptr + stride, 0);
    for (int i = 0; i < num_blocks; ++i)
      for (int idx = rows[i]; idx < rows[i + 1]; ++idx) {
        const int j = cols[idx];
        KILN_CHECK(j >= 0 && j < num_blocks, "block layout ", l, ": row ", i, " lists block ", j,
                   ", outside the layout's ", num_blocks, " blocks");
        ++ptr[j + 1];
      }
    ptr[0] = rows[0];
    for (int j = 0; j < num_blocks; ++j) ptr[j + 1] += ptr[j];
    // Rows in ascending order, so every column's list comes out ascending.
    std::copy(ptr, ptr + num_blocks, next.begin());
    for (int i = 0; i < num_blocks; ++i)
      for (int idx = rows[i]; idx < rows[i + 1]; ++idx) col_rows[next[cols[idx]]++] = i;
  }
}

}  // namespace kiln::cpu
