// bf16 block-sparse causal attention forward on tensor cores, FlashAttention-2 style: one CTA per
// (batch x head, 128-query tile); warps own 16-row m-tiles of queries; K/V chunks of up to 64
// keys are double-buffered in shared memory by cp.async; scores, the online softmax (exp2 of
// log2e-prescaled scores) and the output accumulator stay in fp32 registers; P goes to the
// P V product as bf16. The layout walk (which key chunks a tile visits) is attention_tiling.h.
#include "kernels/cuda/attention_mma.cuh"

namespace kiln::cuda {
namespace attention_detail {
namespace {

template <int HD>
struct FwdConfig {
  static constexpr int kWarps = HD <= 64 ? 4 : 8;
  static constexpr int kTilesPerWarp = HD <= 64 ? 2 : 1;  // m16 tiles: more rows per B load
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kUnits = kWarps * kTilesPerWarp;
  static constexpr int kRows = tiling::kUnit * kUnits;  // 128 queries per CTA
  static constexpr int kKeys = 64;                      // keys per step at most
  static constexpr int kPitch = HD + 8;
  static constexpr std::size_t kSmem =
      static_cast<std::size_t>(kRows + 4 * kKeys) * kPitch * sizeof(bf16_t);
  static_assert(kRows / tiling::kUnit <= tiling::kMaxLists, "a tile spans too many blocks");
};

// One step for one warp: S = Q K^T over the chunk, masks, online softmax, O += P V.
// row0: the warp's first query row inside the CTA tile; q_first0: its position in the sequence.
template <int HD, int kMT>
__device__ __forceinline__ void forward_step(float (&o)[kMT][HD / 8][4], float (&m_run)[kMT][2],
                                             float (&l_run)[kMT][2], const bool (&act)[kMT],
                                             const bf16_t* q_s, const bf16_t* k_s,
                                             const bf16_t* v_s, int row0, int q_first0, int key0,
                                             int len, const Args& a, const std::int32_t* seg) {
  constexpr int kPitch = HD + 8;
  const int lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
  const int n_tiles = len / 8;
  const int t = a.t;
  float s[kMT][8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][n][e] = 0.0f;

  // S (16 x len per m-tile) = Q K^T over hd in slices of 16.
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    std::uint32_t aq[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
      if (act[mt]) ldsm_x4(aq[mt], q_s + a_offset<kPitch>(lane, row0 + 16 * mt, 16 * kk));
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      if (16 * np >= len) continue;
      std::uint32_t bk[4];
      ldsm_x4(bk, k_s + b_offset<kPitch>(lane, 16 * np, 16 * kk));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
        if (act[mt]) {
          mma_bf16(s[mt][2 * np], aq[mt], bk[0], bk[1]);
          mma_bf16(s[mt][2 * np + 1], aq[mt], bk[2], bk[3]);
        }
    }
  }

  // Masks (only where a pair of the two ranges can be invisible), then the online softmax.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    if (!act[mt]) continue;
    const int q_first = q_first0 + 16 * mt;
    const bool masked = seg != nullptr || tiling::needs_mask(q_first, 16, key0, len, t);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = q_first + g + 8 * hf;
      const std::int32_t row_seg = seg != nullptr && row < t ? seg[row] : 0;
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        if (n >= n_tiles) continue;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float x = s[mt][n][2 * hf + e] * a.scale_log2;
          if (masked) {
            const int key = key0 + 8 * n + 2 * qd + e;
            const bool visible = key <= row && row < t && (seg == nullptr || seg[key] == row_seg);
            if (!visible) x = -INFINITY;
          }
          s[mt][n][2 * hf + e] = x;
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[mt][hf], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: p = 0
      const float correction = exp2f(m_run[mt][hf] - m_use);
      m_run[mt][hf] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        if (n >= n_tiles) continue;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float p = exp2f(s[mt][n][2 * hf + e] - m_use);
          s[mt][n][2 * hf + e] = p;
          sum += p;
        }
      }
      l_run[mt][hf] = l_run[mt][hf] * correction + sum;  // this thread's columns only
#pragma unroll
      for (int d = 0; d < HD / 8; ++d) {
        o[mt][d][2 * hf] *= correction;
        o[mt][d][2 * hf + 1] *= correction;
      }
    }
  }

  // O += P V, P as bf16 A fragments straight from the score registers.
#pragma unroll
  for (int kc = 0; kc < 4; ++kc) {
    if (16 * kc >= len) continue;
    std::uint32_t ap[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
      if (act[mt]) c_to_a(ap[mt], s[mt][2 * kc], s[mt][2 * kc + 1]);
#pragma unroll
    for (int dp = 0; dp < HD / 16; ++dp) {
      std::uint32_t bv[4];
      ldsm_x4_trans(bv, v_s + a_offset<kPitch>(lane, 16 * kc, 16 * dp));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
        if (act[mt]) {
          mma_bf16(o[mt][2 * dp], ap[mt], bv[0], bv[1]);
          mma_bf16(o[mt][2 * dp + 1], ap[mt], bv[2], bv[3]);
        }
    }
  }
}

// grid (b * nh, query tiles), heaviest (last) tiles first for causal balance.
template <int HD>
__global__ void __launch_bounds__(FwdConfig<HD>::kThreads)
    forward_bf16_kernel(const Args a) {
  using Cfg = FwdConfig<HD>;
  constexpr int kMT = Cfg::kTilesPerWarp, kPitch = Cfg::kPitch, kKeys = Cfg::kKeys;
  constexpr int kThreads = Cfg::kThreads;
  KILN_DYNAMIC_SHARED(uint4, smem_raw);
  bf16_t* q_s = reinterpret_cast<bf16_t*>(smem_raw);  // (kRows, kPitch); later the output
  bf16_t* k_s = q_s + Cfg::kRows * kPitch;             // 2 x (kKeys, kPitch)
  bf16_t* v_s = k_s + 2 * kKeys * kPitch;              // 2 x (kKeys, kPitch)
  __shared__ StepQueue queue;

  // Unit u: queries [q0 + 16 u, +16).
  const TileWalk<false> walk(a, blockIdx.x / a.nh, blockIdx.x % a.nh, (gridDim.y - 1 - blockIdx.y) * Cfg::kRows,
                             Cfg::kRows, kKeys);
  const int q0 = walk.first, t = a.t, len = walk.len;
  const std::int64_t stride = walk.qkv_stride(a);
  const bf16_t* q_g = a.qkv + walk.slice(stride, HD);
  const bf16_t* k_g = a.qkv + walk.kv_slice(a, HD);
  const bf16_t* v_g = k_g + a.ckv;
  const std::int32_t* seg = walk.seg;
  const bool aligned = a.aligned != 0;
  if (threadIdx.x == 0) walk.start(queue, a, Cfg::kUnits);
  load_tile<HD, kThreads>(q_s, q_g, stride, q0, Cfg::kRows, t, aligned);
  __syncthreads();
  int cur = queue.start[0];
  unsigned cur_mask = queue.mask[0];
  if (cur >= 0) {
    load_tile<HD, kThreads>(k_s, k_g, stride, cur, len, t, aligned);
    load_tile<HD, kThreads>(v_s, v_g, stride, cur, len, t, aligned);
  }
  cp_async_commit();

  const int warp = threadIdx.x >> 5;
  const int row0 = tiling::kUnit * kMT * warp;
  float o[kMT][HD / 8][4];
  float m_run[kMT][2], l_run[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][d][e] = 0.0f;
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.0f;
  }

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
      walk.produce(queue, (i + 2) % 3, Cfg::kUnits);
    cp_async_wait<1>();  // everything but the prefetch just issued has landed
    __syncthreads();
    bool act[kMT];
    bool any = false;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      act[mt] = walk.unit_active(kMT * warp + mt, cur, cur_mask);
      any = any || act[mt];
    }
    if (any)  // warp-uniform
      forward_step<HD, kMT>(o, m_run, l_run, act, q_s, k_s + buf * kKeys * kPitch,
                            v_s + buf * kKeys * kPitch, row0, q0 + row0, cur, len, a, seg);
    __syncthreads();
    cur = nxt;
    cur_mask = nxt_mask;
  }
  cp_async_wait<0>();
  __syncthreads();

  // out = O / l through the Q tile (each warp writes only its own rows), lse = m ln2 + ln l.
  const int lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float inv[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float l = l_run[mt][hf];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[hf] = l > 0.0f ? 1.0f / l : 0.0f;
      const int row = q0 + row0 + 16 * mt + g + 8 * hf;
      if (qd == 0 && row < t)
        a.lse_out[(static_cast<std::int64_t>(walk.bi) * a.nh + walk.h) * t + row] =
            l > 0.0f ? m_run[mt][hf] * kLn2 + logf(l) : INFINITY;
    }
    stage_rows<HD / 8, kPitch>(q_s, row0 + 16 * mt, o[mt], inv[0], inv[1]);
  }
  __syncthreads();
  bf16_t* out_g = a.dst + walk.slice(a.c, HD);
  store_tile<HD, kThreads>(out_g, a.c, q_s, q0, Cfg::kRows, t, aligned);
}

template <int HD>
void launch_forward(const Args& a, std::int64_t b) {
  using Cfg = FwdConfig<HD>;
  static const cudaError_t opt_in = cudaFuncSetAttribute(  // once per process (one device)
      forward_bf16_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Cfg::kSmem));
  KILN_CUDA_CHECK(opt_in);
  const dim3 grid(static_cast<unsigned>(b * a.nh),
                  static_cast<unsigned>(ceil_div(a.t, Cfg::kRows)));
  KILN_LAUNCH(grid, Cfg::kThreads, Cfg::kSmem, forward_bf16_kernel<HD>)(a);
  KILN_CUDA_LAUNCH_CHECK();
}

}  // namespace
}  // namespace attention_detail

void attention_forward_bf16(bf16* out, float* lse, const bf16* qkv, std::int64_t b, std::int64_t t,
                            std::int64_t c, std::int64_t nh, const cpu::BlockLayoutView& layout,
                            std::int64_t kv_heads) {
  using namespace attention_detail;
  if (b == 0 || t == 0 || nh == 0 || c == 0) return;
  const std::int64_t nkv = kv_heads > 0 ? kv_heads : nh;
  check_bf16_shape("attention_forward_bf16", b, t, c, nh, nkv, layout, FwdConfig<64>::kRows);
  Args a = make_args(t, c, nh, nkv, layout);
  a.qkv = reinterpret_cast<const bf16_t*>(qkv);
  a.dst = reinterpret_cast<bf16_t*>(out);
  a.lse_out = lse;
  a.aligned = reinterpret_cast<std::uintptr_t>(qkv) % 16 == 0 &&
              reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
  const bool built = with_head_dim(c / nh, [&](auto hd) { launch_forward<decltype(hd)::value>(a, b); });
  KILN_ASSERT(built);  // check_bf16_shape rejected the others
}

}  // namespace kiln::cuda
