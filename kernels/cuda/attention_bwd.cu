// bf16 block-sparse causal attention backward on tensor cores, deterministic (no atomics):
//  1. delta = rowsum(dout * out) (attention.cu, shared with the fp32 path);
//  2. a key-major pass: one CTA per (batch x key/value head, 64-key tile) walks, for each query
//     head the key/value head serves, the query blocks of the transposed layout (col_ptr/col_rows); each warp owns 16 keys and computes, per query chunk,
//     S^T = K Q^T and dP^T = V dO^T, P^T = exp2(S^T log2e/sqrt(hd) - lse log2e),
//     dS^T = P^T (dP^T - delta), and accumulates dV += P^T dO, dK += dS^T Q in registers;
//  3. a query-major pass for dQ (recomputing P and dP like the forward): dQ += dS K.
// Every output element is written by exactly one thread, summed in a fixed order.
#include "kernels/cuda/attention_mma.cuh"

namespace kiln::cuda {
namespace attention_detail {
namespace {

template <int HD>
struct DkvConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kKeys = tiling::kUnit * kWarps;  // 64 keys per CTA, 16 per warp
  static constexpr int kQueries = HD <= 64 ? 64 : 32;   // queries per step at most (registers)
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t kTileBytes =
      static_cast<std::size_t>(2 * kKeys + 4 * kQueries) * kPitch * sizeof(bf16_t);
  static constexpr std::size_t kSmem = kTileBytes + 4 * kQueries * sizeof(float);
  static_assert(kKeys / tiling::kUnit <= tiling::kMaxLists, "a tile spans too many blocks");
};

template <int HD>
struct DqConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = tiling::kUnit * kWarps;  // 64 queries per CTA, 16 per warp
  static constexpr int kKeys = 64;
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t kSmem =
      static_cast<std::size_t>(2 * kRows + 4 * kKeys) * kPitch * sizeof(bf16_t);
  static_assert(kRows / tiling::kUnit <= tiling::kMaxLists, "a tile spans too many blocks");
};

// One query chunk for one warp's 16 keys (shared-memory row row0 of k_s / v_s, position
// k_first): dV += P^T dO, dK += dS^T Q (dK unscaled). lse_s holds lse * log2(e).
template <int HD, int kQ>
__device__ __forceinline__ void dkdv_step(float (&dk)[HD / 8][4], float (&dv)[HD / 8][4],
                                          const bf16_t* k_s, const bf16_t* v_s, const bf16_t* q_s,
                                          const bf16_t* do_s, const float* lse_s,
                                          const float* dl_s, int row0, int k_first, int q_first,
                                          int len, const Args& a, const std::int32_t* seg) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
  const int n_tiles = len / 8;
  const int t = a.t;
  float st[kQ / 8][4], dpt[kQ / 8][4];
#pragma unroll
  for (int n = 0; n < kQ / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.0f;

  // S^T = K Q^T and dP^T = V dO^T (16 keys x len queries).
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    std::uint32_t ak[4], av[4];
    ldsm_x4(ak, k_s + a_offset<kPitch>(lane, row0, 16 * kk));
    ldsm_x4(av, v_s + a_offset<kPitch>(lane, row0, 16 * kk));
#pragma unroll
    for (int np = 0; np < kQ / 16; ++np) {
      if (16 * np >= len) continue;
      std::uint32_t bq[4], bo[4];
      ldsm_x4(bq, q_s + b_offset<kPitch>(lane, 16 * np, 16 * kk));
      ldsm_x4(bo, do_s + b_offset<kPitch>(lane, 16 * np, 16 * kk));
      mma_bf16(st[2 * np], ak, bq[0], bq[1]);
      mma_bf16(st[2 * np + 1], ak, bq[2], bq[3]);
      mma_bf16(dpt[2 * np], av, bo[0], bo[1]);
      mma_bf16(dpt[2 * np + 1], av, bo[2], bo[3]);
    }
  }

  // P^T and dS^T; rows are keys, columns queries.
  const bool masked = seg != nullptr || tiling::needs_mask(q_first, len, k_first, tiling::kUnit, t);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int key = k_first + g + 8 * hf;
    const std::int32_t key_seg = seg != nullptr && key < t ? seg[key] : 0;
#pragma unroll
    for (int n = 0; n < kQ / 8; ++n) {
      if (n >= n_tiles) continue;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = 8 * n + 2 * qd + e;
        bool visible = true;
        if (masked) {
          const int query = q_first + col;
          visible = key <= query && query < t && (seg == nullptr || seg[query] == key_seg);
        }
        const float p = visible ? exp2f(st[n][2 * hf + e] * a.scale_log2 - lse_s[col]) : 0.0f;
        dpt[n][2 * hf + e] = p * (dpt[n][2 * hf + e] - dl_s[col]);
        st[n][2 * hf + e] = p;
      }
    }
  }

  // dV += P^T dO and dK += dS^T Q (queries are the reduction dimension).
#pragma unroll
  for (int kc = 0; kc < kQ / 16; ++kc) {
    if (16 * kc >= len) continue;
    std::uint32_t ap[4], ads[4];
    c_to_a(ap, st[2 * kc], st[2 * kc + 1]);
    c_to_a(ads, dpt[2 * kc], dpt[2 * kc + 1]);
#pragma unroll
    for (int dp = 0; dp < HD / 16; ++dp) {
      std::uint32_t bo[4], bq[4];
      ldsm_x4_trans(bo, do_s + a_offset<kPitch>(lane, 16 * kc, 16 * dp));
      ldsm_x4_trans(bq, q_s + a_offset<kPitch>(lane, 16 * kc, 16 * dp));
      mma_bf16(dv[2 * dp], ap, bo[0], bo[1]);
      mma_bf16(dv[2 * dp + 1], ap, bo[2], bo[3]);
      mma_bf16(dk[2 * dp], ads, bq[0], bq[1]);
      mma_bf16(dk[2 * dp + 1], ads, bq[2], bq[3]);
    }
  }
}

// grid (b * nkv, key tiles); key tile 0 (the most queries, causally) first. A key/value head's
// CTA walks the query heads it serves one after another, summing their dK and dV in registers
// (in head order: deterministic).
template <int HD>
__global__ void __launch_bounds__(DkvConfig<HD>::kThreads) dkdv_bf16_kernel(const Args a) {
  using Cfg = DkvConfig<HD>;
  constexpr int kPitch = Cfg::kPitch, kQ = Cfg::kQueries, kThreads = Cfg::kThreads;
  KILN_DYNAMIC_SHARED(uint4, smem_raw);
  bf16_t* k_s = reinterpret_cast<bf16_t*>(smem_raw);  // (kKeys, kPitch); later dK
  bf16_t* v_s = k_s + Cfg::kKeys * kPitch;             // (kKeys, kPitch); later dV
  bf16_t* q_s = v_s + Cfg::kKeys * kPitch;             // 2 x (kQ, kPitch)
  bf16_t* do_s = q_s + 2 * kQ * kPitch;                // 2 x (kQ, kPitch)
  float* lse_s = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(smem_raw) + Cfg::kTileBytes);  // 2 x kQ
  float* dl_s = lse_s + 2 * kQ;                                                                            // 2 x kQ
  __shared__ StepQueue queue;

  // Unit u: keys [k0 + 16 u, +16) of key/value head g, serving query heads g * group, ...
  const int bi = blockIdx.x / a.nkv, g = blockIdx.x % a.nkv, group = a.nh / a.nkv;
  const int k0 = blockIdx.y * Cfg::kKeys, t = a.t;
  const bool aligned = a.aligned != 0;
  const int warp = threadIdx.x >> 5;
  const int row0 = tiling::kUnit * warp;
  float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[d][e] = dv[d][e] = 0.0f;

  std::int64_t stride = 0, kv_offset = 0;
  for (int j = 0; j < group; ++j) {
    const TileWalk<true> walk(a, bi, g * group + j, k0, Cfg::kKeys, kQ);
    const std::int64_t bh = static_cast<std::int64_t>(walk.bi) * a.nh + walk.h;
    const int len = walk.len;
    stride = walk.qkv_stride(a);
    kv_offset = walk.kv_slice(a, HD);
    const bf16_t* q_g = a.qkv + walk.slice(stride, HD);
    const bf16_t* do_g = a.dout + walk.slice(a.c, HD);
    const std::int32_t* seg = walk.seg;
    auto load_step = [&](int buf, int q_first) {
      load_tile<HD, kThreads>(q_s + buf * kQ * kPitch, q_g, stride, q_first, len, t, aligned);
      load_tile<HD, kThreads>(do_s + buf * kQ * kPitch, do_g, a.c, q_first, len, t, aligned);
      for (int i = threadIdx.x; i < len; i += kThreads) {
        const int query = q_first + i;
        lse_s[buf * kQ + i] = query < t ? a.lse[bh * t + query] * kLog2e : INFINITY;
        dl_s[buf * kQ + i] = query < t ? a.delta[bh * t + query] : 0.0f;
      }
    };
    if (threadIdx.x == 0) walk.start(queue, a, Cfg::kWarps);
    if (j == 0) {
      load_tile<HD, kThreads>(k_s, a.qkv + kv_offset, stride, k0, Cfg::kKeys, t, aligned);
      load_tile<HD, kThreads>(v_s, a.qkv + kv_offset + a.ckv, stride, k0, Cfg::kKeys, t, aligned);
    }
    __syncthreads();
    int cur = queue.start[0];
    unsigned cur_mask = queue.mask[0];
    if (cur >= 0) load_step(0, cur);
    cp_async_commit();

    for (int i = 0; cur >= 0; ++i) {
      const int buf = i & 1;
      const int nxt = queue.start[(i + 1) % 3];
      const unsigned nxt_mask = queue.mask[(i + 1) % 3];
      if (nxt >= 0) load_step(buf ^ 1, nxt);
      cp_async_commit();
      if (threadIdx.x == 0)
        walk.produce(queue, (i + 2) % 3, Cfg::kWarps);
      cp_async_wait<1>();
      __syncthreads();
      if (walk.unit_active(warp, cur, cur_mask))  // warp-uniform
        dkdv_step<HD, kQ>(dk, dv, k_s, v_s, q_s + buf * kQ * kPitch, do_s + buf * kQ * kPitch,
                          lse_s + buf * kQ, dl_s + buf * kQ, row0, k0 + row0, cur, len, a, seg);
      __syncthreads();
      cur = nxt;
      cur_mask = nxt_mask;
    }
    cp_async_wait<0>();
    __syncthreads();
  }

  // Every key of the tile is written, zero where no query sees it.
  stage_rows<HD / 8, kPitch>(k_s, row0, dk, a.scale, a.scale);
  stage_rows<HD / 8, kPitch>(v_s, row0, dv, 1.0f, 1.0f);
  __syncthreads();
  bf16_t* dk_g = a.dst + kv_offset;
  store_tile<HD, kThreads>(dk_g, stride, k_s, k0, Cfg::kKeys, t, aligned);
  store_tile<HD, kThreads>(dk_g + a.ckv, stride, v_s, k0, Cfg::kKeys, t, aligned);
}

// One key chunk for one warp's 16 queries: dQ += dS K (unscaled). lse_l2 = lse * log2(e).
template <int HD>
__device__ __forceinline__ void dq_step(float (&dq)[HD / 8][4], const bf16_t* q_s,
                                        const bf16_t* do_s, const bf16_t* k_s, const bf16_t* v_s,
                                        const float (&lse_l2)[2], const float (&delta)[2], int row0,
                                        int q_first, int key0, int len, const Args& a,
                                        const std::int32_t* seg) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
  const int n_tiles = len / 8;
  const int t = a.t;
  float s[8][4], dp[8][4];
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;

  // S = Q K^T and dP = dO V^T (16 queries x len keys).
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    std::uint32_t aq[4], ao[4];
    ldsm_x4(aq, q_s + a_offset<kPitch>(lane, row0, 16 * kk));
    ldsm_x4(ao, do_s + a_offset<kPitch>(lane, row0, 16 * kk));
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      if (16 * np >= len) continue;
      std::uint32_t bk[4], bv[4];
      ldsm_x4(bk, k_s + b_offset<kPitch>(lane, 16 * np, 16 * kk));
      ldsm_x4(bv, v_s + b_offset<kPitch>(lane, 16 * np, 16 * kk));
      mma_bf16(s[2 * np], aq, bk[0], bk[1]);
      mma_bf16(s[2 * np + 1], aq, bk[2], bk[3]);
      mma_bf16(dp[2 * np], ao, bv[0], bv[1]);
      mma_bf16(dp[2 * np + 1], ao, bv[2], bv[3]);
    }
  }

  // dS = P (dP - delta), into s.
  const bool masked = seg != nullptr || tiling::needs_mask(q_first, tiling::kUnit, key0, len, t);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int row = q_first + g + 8 * hf;
    const std::int32_t row_seg = seg != nullptr && row < t ? seg[row] : 0;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      if (n >= n_tiles) continue;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        bool visible = true;
        if (masked) {
          const int key = key0 + 8 * n + 2 * qd + e;
          visible = key <= row && row < t && (seg == nullptr || seg[key] == row_seg);
        }
        const float p = visible ? exp2f(s[n][2 * hf + e] * a.scale_log2 - lse_l2[hf]) : 0.0f;
        s[n][2 * hf + e] = p * (dp[n][2 * hf + e] - delta[hf]);
      }
    }
  }

  // dQ += dS K (keys are the reduction dimension).
#pragma unroll
  for (int kc = 0; kc < 4; ++kc) {
    if (16 * kc >= len) continue;
    std::uint32_t ads[4];
    c_to_a(ads, s[2 * kc], s[2 * kc + 1]);
#pragma unroll
    for (int d = 0; d < HD / 16; ++d) {
      std::uint32_t bk[4];
      ldsm_x4_trans(bk, k_s + a_offset<kPitch>(lane, 16 * kc, 16 * d));
      mma_bf16(dq[2 * d], ads, bk[0], bk[1]);
      mma_bf16(dq[2 * d + 1], ads, bk[2], bk[3]);
    }
  }
}

// grid (b * nh, query tiles), heaviest (last) tiles first.
template <int HD>
__global__ void __launch_bounds__(DqConfig<HD>::kThreads) dq_bf16_kernel(const Args a) {
  using Cfg = DqConfig<HD>;
  constexpr int kPitch = Cfg::kPitch, kKeys = Cfg::kKeys, kThreads = Cfg::kThreads;
  KILN_DYNAMIC_SHARED(uint4, smem_raw);
  bf16_t* q_s = reinterpret_cast<bf16_t*>(smem_raw);  // (kRows, kPitch); later dQ
  bf16_t* do_s = q_s + Cfg::kRows * kPitch;            // (kRows, kPitch)
  bf16_t* k_s = do_s + Cfg::kRows * kPitch;            // 2 x (kKeys, kPitch)
  bf16_t* v_s = k_s + 2 * kKeys * kPitch;              // 2 x (kKeys, kPitch)
  __shared__ StepQueue queue;

  // Unit u (warp u): queries [q0 + 16 u, +16).
  const TileWalk<false> walk(a, blockIdx.x / a.nh, blockIdx.x % a.nh, (gridDim.y - 1 - blockIdx.y) * Cfg::kRows,
                             Cfg::kRows, kKeys);
  const std::int64_t bh = static_cast<std::int64_t>(walk.bi) * a.nh + walk.h;
  const int q0 = walk.first, t = a.t, len = walk.len;
  const std::int64_t stride = walk.qkv_stride(a);
  const bf16_t* q_g = a.qkv + walk.slice(stride, HD);
  const bf16_t* k_g = a.qkv + walk.kv_slice(a, HD);
  const bf16_t* v_g = k_g + a.ckv;
  const bf16_t* do_g = a.dout + walk.slice(a.c, HD);
  const std::int32_t* seg = walk.seg;
  const bool aligned = a.aligned != 0;
  if (threadIdx.x == 0) walk.start(queue, a, Cfg::kWarps);
  load_tile<HD, kThreads>(q_s, q_g, stride, q0, Cfg::kRows, t, aligned);
  load_tile<HD, kThreads>(do_s, do_g, a.c, q0, Cfg::kRows, t, aligned);
  __syncthreads();
  int cur = queue.start[0];
  unsigned cur_mask = queue.mask[0];
  if (cur >= 0) {
    load_tile<HD, kThreads>(k_s, k_g, stride, cur, len, t, aligned);
    load_tile<HD, kThreads>(v_s, v_g, stride, cur, len, t, aligned);
  }
  cp_async_commit();

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31, g = lane >> 2;
  const int row0 = tiling::kUnit * warp;
  float lse_l2[2], delta[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int row = q0 + row0 + g + 8 * hf;
    lse_l2[hf] = row < t ? a.lse[bh * t + row] * kLog2e : INFINITY;
    delta[hf] = row < t ? a.delta[bh * t + row] : 0.0f;
  }
  float dq[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[d][e] = 0.0f;

  for (int i = 0; cur >= 0; ++i) {
    const int buf = i & 1;
    const int nxt = queue.start[(i + 1) % 3];
    const unsigned nxt_mask = queue.mask[(i + 1) % 3];
    if (nxt >= 0) {
      load_tile<HD, kThreads>(k_s + (buf ^ 1) * kKeys * kPitch, k_g, stride, nxt, len, t, aligned);
      load_tile<HD, kThreads>(v_s + (buf ^ 1) * kKeys * kPitch, v_g, stride, nxt, len, t, aligned);
    }
    cp_async_commit();
    if (threadIdx.x == 0)
      walk.produce(queue, (i + 2) % 3, Cfg::kWarps);
    cp_async_wait<1>();
    __syncthreads();
    if (walk.unit_active(warp, cur, cur_mask))  // warp-uniform
      dq_step<HD>(dq, q_s, do_s, k_s + buf * kKeys * kPitch, v_s + buf * kKeys * kPitch, lse_l2,
                  delta, row0, q0 + row0, cur, len, a, seg);
    __syncthreads();
    cur = nxt;
    cur_mask = nxt_mask;
  }
  cp_async_wait<0>();
  __syncthreads();

  stage_rows<HD / 8, kPitch>(q_s, row0, dq, a.scale, a.scale);
  __syncthreads();
  bf16_t* dq_g = a.dst + walk.slice(stride, HD);
  store_tile<HD, kThreads>(dq_g, stride, q_s, q0, Cfg::kRows, t, aligned);
}

template <int HD>
void launch_backward(const Args& a, std::int64_t b) {
  using Kv = DkvConfig<HD>;
  using Q = DqConfig<HD>;
  static const cudaError_t opt_in_kv = cudaFuncSetAttribute(  // once per process (one device)
      dkdv_bf16_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Kv::kSmem));
  static const cudaError_t opt_in_q = cudaFuncSetAttribute(
      dq_bf16_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Q::kSmem));
  KILN_CUDA_CHECK(opt_in_kv);
  KILN_CUDA_CHECK(opt_in_q);
  const dim3 grid_kv(static_cast<unsigned>(b * a.nkv), static_cast<unsigned>(ceil_div(a.t, Kv::kKeys)));
  KILN_LAUNCH(grid_kv, Kv::kThreads, Kv::kSmem, dkdv_bf16_kernel<HD>)(a);
  KILN_CUDA_LAUNCH_CHECK();
  const dim3 grid_q(static_cast<unsigned>(b * a.nh), static_cast<unsigned>(ceil_div(a.t, Q::kRows)));
  KILN_LAUNCH(grid_q, Q::kThreads, Q::kSmem, dq_bf16_kernel<HD>)(a);
  KILN_CUDA_LAUNCH_CHECK();
}

}  // namespace
}  // namespace attention_detail

void attention_backward_bf16(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                             const float* lse, std::int64_t b, std::int64_t t, std::int64_t c,
                             std::int64_t nh, const cpu::BlockLayoutView& layout, std::int64_t kv_heads) {
  using namespace attention_detail;
  if (b == 0 || t == 0 || nh == 0 || c == 0) return;
  const std::int64_t nkv = kv_heads > 0 ? kv_heads : nh;
  check_bf16_shape("attention_backward_bf16", b, t, c, nh, nkv, layout, DqConfig<64>::kRows);
  KILN_CHECK(layout.col_ptr != nullptr && layout.col_rows != nullptr,
             "attention_backward_bf16: layout.col_ptr/col_rows are null; the CUDA backward walks "
             "the transposed layout: build it with kiln::cpu::transpose_block_layout and upload it "
             "with the layout");
  Workspace delta(static_cast<std::size_t>(b * nh * t) * sizeof(float));
  launch_row_dot(delta.as<float>(), reinterpret_cast<const bf16_t*>(dout),
                 reinterpret_cast<const bf16_t*>(out), b, t, c, nh);
  Args a = make_args(t, c, nh, nkv, layout);
  a.qkv = reinterpret_cast<const bf16_t*>(qkv);
  a.out = reinterpret_cast<const bf16_t*>(out);
  a.dout = reinterpret_cast<const bf16_t*>(dout);
  a.dst = reinterpret_cast<bf16_t*>(dqkv);
  a.lse = lse;
  a.delta = delta.as<float>();
  a.aligned = reinterpret_cast<std::uintptr_t>(qkv) % 16 == 0 &&
              reinterpret_cast<std::uintptr_t>(dout) % 16 == 0 &&
              reinterpret_cast<std::uintptr_t>(dqkv) % 16 == 0;
  const bool built = with_head_dim(c / nh, [&](auto hd) { launch_backward<decltype(hd)::value>(a, b); });
  KILN_ASSERT(built);  // check_bf16_shape rejected the others
}

}  // namespace kiln::cuda
