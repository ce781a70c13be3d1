// CPU block-sparse causal attention (forward and backward) with online softmax.
// Tiles are BK x BK (queries x keys) and the head size HD is a template parameter where it is a
// common one (64, 128), so inner loops have constant trip counts and stay in vector registers.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/fast_math.h"

namespace kiln::cpu {

namespace {

struct Dims {
  std::int64_t b, t, c, nh, hd;
  const float* head(const float* qkv, std::int64_t bi, std::int64_t part, std::int64_t h,
                    std::int64_t pos) const {
    return qkv + (bi * t + pos) * 3 * c + part * c + h * hd;
  }
};

// s (nq, BK) = q (nq, hd) . kt (hd, BK), kt zero-padded beyond nk.
template <int BK, int HD>
inline void scores(float* s, const float* q, const float* kt, int nq, int hd_runtime) {
  const int hd = HD > 0 ? HD : hd_runtime;
  for (int i = 0; i < nq; ++i) {
    float acc[BK] = {};
    for (int d = 0; d < hd; ++d) {
      const float qv = q[i * hd + d];
#pragma omp simd
      for (int j = 0; j < BK; ++j) acc[j] += qv * kt[d * BK + j];
    }
    for (int j = 0; j < BK; ++j) s[i * BK + j] = acc[j];
  }
}

// Copies rows pos0..pos0+n of one head's part into dst (n, hd), or transposed into (hd, BK).
template <int BK>
void load_rows(float* dst, const Dims& dm, const float* qkv, std::int64_t bi, int part,
               std::int64_t h, std::int64_t pos0, int n, bool transpose, float scale = 1.0f) {
  const int hd = static_cast<int>(dm.hd);
  if (transpose) {
    std::fill(dst, dst + hd * BK, 0.0f);
    for (int j = 0; j < n; ++j) {
      const float* src = dm.head(qkv, bi, part, h, pos0 + j);
      for (int d = 0; d < hd; ++d) dst[d * BK + j] = src[d] * scale;
    }
  } else {
    for (int j = 0; j < n; ++j) {
      const float* src = dm.head(qkv, bi, part, h, pos0 + j);
      for (int d = 0; d < hd; ++d) dst[j * hd + d] = src[d] * scale;
    }
  }
}

template <int BK, int HD>
void forward_tile_row(float* out, float* lse, const float* qkv, const Dims& dm, std::int64_t bi,
                      std::int64_t h, int qb, const BlockLayoutView& layout,
                      std::vector<float>& scratch) {
  const int hd = HD > 0 ? HD : static_cast<int>(dm.hd);
  const std::int64_t q0 = static_cast<std::int64_t>(qb) * BK;
  const int nq = static_cast<int>(std::min<std::int64_t>(BK, dm.t - q0));
  scratch.resize(static_cast<std::size_t>(4 * BK * hd + BK * BK + 2 * BK));
  float* q = scratch.data();         // (BK, hd), pre-scaled by 1/sqrt(hd)
  float* kt = q + BK * hd;           // (hd, BK)
  float* v = kt + BK * hd;           // (BK, hd)
  float* acc = v + BK * hd;          // (BK, hd)
  float* s = acc + BK * hd;          // (BK, BK)
  float* row_max = s + BK * BK;      // (BK)
  float* row_sum = row_max + BK;     // (BK)
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  load_rows<BK>(q, dm, qkv, bi, 0, h, q0, nq, false, scale);
  std::fill(acc, acc + BK * hd, 0.0f);
  std::fill(row_max, row_max + BK, -INFINITY);
  std::fill(row_sum, row_sum + BK, 0.0f);
  for (int idx = layout.row_ptr[qb]; idx < layout.row_ptr[qb + 1]; ++idx) {
    const std::int64_t k0 = static_cast<std::int64_t>(layout.cols[idx]) * BK;
    const int nk = static_cast<int>(std::min<std::int64_t>(BK, dm.t - k0));
    load_rows<BK>(kt, dm, qkv, bi, 1, h, k0, nk, true);
    load_rows<BK>(v, dm, qkv, bi, 2, h, k0, nk, false);
    scores<BK, HD>(s, q, kt, nq, hd);
    for (int i = 0; i < nq; ++i) {
      float* si = s + i * BK;
      // Keys allowed for this query: index < nk and position <= query position.
      const int limit = static_cast<int>(std::min<std::int64_t>(nk, q0 + i - k0 + 1));
      if (limit <= 0) continue;
      float m = row_max[i];
      for (int j = 0; j < limit; ++j) m = std::max(m, si[j]);
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
      float* ai = acc + i * hd;
      for (int d = 0; d < hd; ++d) ai[d] *= correction;
      for (int j = 0; j < limit; ++j) {
        const float p = si[j];
        const float* vj = v + j * hd;
#pragma omp simd
        for (int d = 0; d < hd; ++d) ai[d] += p * vj[d];
      }
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

template <int BK, int HD>
void forward_impl(float* out, float* lse, const float* qkv, const Dims& dm,
                  const BlockLayoutView& layout) {
  const std::int64_t tasks = dm.b * dm.nh * layout.num_blocks;
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < tasks; ++task) {
      // Longest rows (last query blocks) first for better balance.
      const int qb = layout.num_blocks - 1 - static_cast<int>(task % layout.num_blocks);
      const std::int64_t bh = task / layout.num_blocks;
      forward_tile_row<BK, HD>(out, lse, qkv, dm, bh / dm.nh, bh % dm.nh, qb, layout, scratch);
    }
  }
}

// Backward for one (batch, head): every query block row in order; dq, dk, dv accumulated in
// per-task buffers, so no two threads ever write the same element.
template <int BK, int HD>
void backward_head(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, const Dims& dm, std::int64_t bi, std::int64_t h,
                   const BlockLayoutView& layout, std::vector<float>& scratch) {
  const int hd = HD > 0 ? HD : static_cast<int>(dm.hd);
  const std::int64_t t = dm.t;
  scratch.assign(static_cast<std::size_t>(2 * t * hd + 6 * BK * hd + 3 * BK * BK + 2 * BK), 0.0f);
  float* dk_all = scratch.data();    // (t, hd)
  float* dv_all = dk_all + t * hd;   // (t, hd)
  float* q = dv_all + t * hd;        // (BK, hd) scaled
  float* dq = q + BK * hd;           // (BK, hd)
  float* d_o = dq + BK * hd;         // (BK, hd)
  float* kt = d_o + BK * hd;         // (hd, BK)
  float* vt = kt + BK * hd;          // (hd, BK)
  float* k = vt + BK * hd;           // (BK, hd)
  float* p = k + BK * hd;            // (BK, BK)
  float* dp = p + BK * BK;           // (BK, BK)
  float* ds = dp + BK * BK;          // (BK, BK)
  float* delta = ds + BK * BK;       // (BK) rowsum(dout * out)
  float* row_lse = delta + BK;       // (BK)
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int qb = 0; qb < layout.num_blocks; ++qb) {
    const std::int64_t q0 = static_cast<std::int64_t>(qb) * BK;
    const int nq = static_cast<int>(std::min<std::int64_t>(BK, t - q0));
    load_rows<BK>(q, dm, qkv, bi, 0, h, q0, nq, false, scale);
    std::fill(dq, dq + BK * hd, 0.0f);
    for (int i = 0; i < nq; ++i) {
      const std::int64_t row = (bi * t + q0 + i) * dm.c + h * hd;
      float dsum = 0.0f;
      for (int d = 0; d < hd; ++d) {
        d_o[i * hd + d] = dout[row + d];
        dsum += dout[row + d] * out[row + d];
      }
      delta[i] = dsum;
      row_lse[i] = lse[(bi * dm.nh + h) * t + q0 + i];
    }
    for (int idx = layout.row_ptr[qb]; idx < layout.row_ptr[qb + 1]; ++idx) {
      const std::int64_t k0 = static_cast<std::int64_t>(layout.cols[idx]) * BK;
      const int nk = static_cast<int>(std::min<std::int64_t>(BK, t - k0));
      load_rows<BK>(kt, dm, qkv, bi, 1, h, k0, nk, true);
      load_rows<BK>(vt, dm, qkv, bi, 2, h, k0, nk, true);
      load_rows<BK>(k, dm, qkv, bi, 1, h, k0, nk, false);
      scores<BK, HD>(p, q, kt, nq, hd);     // scaled scores
      scores<BK, HD>(dp, d_o, vt, nq, hd);  // dP = dO V^T
      for (int i = 0; i < nq; ++i) {
        const int limit = static_cast<int>(std::min<std::int64_t>(nk, q0 + i - k0 + 1));
#pragma omp simd
        for (int j = 0; j < BK; ++j) {
          const float pij = j < limit ? fast_exp(p[i * BK + j] - row_lse[i]) : 0.0f;
          p[i * BK + j] = pij;
          ds[i * BK + j] = pij * (dp[i * BK + j] - delta[i]);
        }
      }
      for (int j = 0; j < nk; ++j) {
        float* dvj = dv_all + (k0 + j) * hd;
        float* dkj = dk_all + (k0 + j) * hd;
        for (int i = 0; i < nq; ++i) {
          const float pij = p[i * BK + j], dsij = ds[i * BK + j];
#pragma omp simd
          for (int d = 0; d < hd; ++d) {
            dvj[d] += pij * d_o[i * hd + d];
            dkj[d] += dsij * q[i * hd + d];
          }
        }
      }
      for (int i = 0; i < nq; ++i) {
        float* dqi = dq + i * hd;
        for (int j = 0; j < nk; ++j) {
          const float dsij = ds[i * BK + j];
#pragma omp simd
          for (int d = 0; d < hd; ++d) dqi[d] += dsij * k[j * hd + d];
        }
      }
    }
    for (int i = 0; i < nq; ++i) {
      float* dst = dqkv + (bi * t + q0 + i) * 3 * dm.c + h * hd;
      for (int d = 0; d < hd; ++d) dst[d] = dq[i * hd + d] * scale;
    }
  }
  for (std::int64_t pos = 0; pos < t; ++pos) {
    float* dst = dqkv + (bi * t + pos) * 3 * dm.c + h * hd;
    for (int d = 0; d < hd; ++d) {
      dst[dm.c + d] = dk_all[pos * hd + d];
      dst[2 * dm.c + d] = dv_all[pos * hd + d];
    }
  }
}

template <int BK, int HD>
void backward_impl(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, const Dims& dm, const BlockLayoutView& layout) {
  const std::int64_t tasks = dm.b * dm.nh;
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t task = 0; task < tasks; ++task)
      backward_head<BK, HD>(dqkv, dout, qkv, out, lse, dm, task / dm.nh, task % dm.nh, layout,
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
                       std::int64_t c, std::int64_t nh, const BlockLayoutView& layout) {
  const Dims dm{b, t, c, nh, c / nh};
  dispatch(layout.block, dm.hd, [&]<int BK, int HD>() {
    forward_impl<BK, HD>(out, lse, qkv, dm, layout);
  });
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, std::int64_t b, std::int64_t t, std::int64_t c,
                        std::int64_t nh, const BlockLayoutView& layout) {
  const Dims dm{b, t, c, nh, c / nh};
  dispatch(layout.block, dm.hd, [&]<int BK, int HD>() {
    backward_impl<BK, HD>(dqkv, dout, qkv, out, lse, dm, layout);
  });
}

void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      std::int64_t n, std::int64_t c, std::int64_t nh) {
  const std::int64_t hd = c / nh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for schedule(static)
  for (std::int64_t h = 0; h < nh; ++h) {
    std::vector<float> p(n);
    float m = -INFINITY;
    for (std::int64_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (std::int64_t d = 0; d < hd; ++d) s += q[h * hd + d] * k_cache[j * c + h * hd + d];
      p[j] = s * scale;
      m = std::max(m, p[j]);
    }
    float sum = 0.0f;
    for (std::int64_t j = 0; j < n; ++j) sum += (p[j] = fast_exp(p[j] - m));
    float* o = out + h * hd;
    for (std::int64_t d = 0; d < hd; ++d) o[d] = 0.0f;
    for (std::int64_t j = 0; j < n; ++j) {
      const float w = p[j] / sum;
      for (std::int64_t d = 0; d < hd; ++d) o[d] += w * v_cache[j * c + h * hd + d];
    }
  }
}

}  // namespace kiln::cpu
