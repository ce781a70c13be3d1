// fp32 block-sparse causal attention on CUDA (the twin of kernels/cpu/attention.cpp with the same
// signatures), the decoder over a KV cache, rowsum(dout * out) shared by both backward paths,
// and the host-side checks of the bf16 entry points (attention_fwd.cu, attention_bwd.cu).
//
// The fp32 kernels favour plain correctness: tiles of 16 queries x 16 keys, one thread per
// (row, key) for scores and per (row, 16-strided column) for the products, operands and
// accumulators in shared memory (rows padded to hd + 1 floats against bank conflicts). Any head
// size up to kMaxHeadF32. Layout blocks are multiples of 16, so a tile lies in one layout block.
#include "kernels/cuda/attention_mma.cuh"

namespace kiln::cuda {
namespace attention_detail {
namespace {

constexpr int kT = 16;              // queries and keys per fp32 tile
constexpr int kThreadsF32 = kT * kT;
constexpr int kMaxHeadF32 = 256;

struct F32Args {
  const float* qkv;    // (b, t, c + 2 ckv)
  const float* dout;   // (b, t, c)
  const float* lse;    // (b, nh, t)
  const float* delta;  // (b, nh, t)
  float* out;          // forward: out (b, t, c); backward: dqkv (b, t, c + 2 ckv)
  float* lse_out;
  std::int64_t c, ckv;  // query width nh * hd, key/value width nkv * hd
  int t, nh, nkv, hd;   // key/value head g serves query heads g * nh / nkv, ...
  __host__ __device__ std::int64_t stride() const { return c + 2 * ckv; }
  // Offset of (batch row bi, position 0) of the k of query head h's key/value head (v: + ckv).
  __host__ __device__ std::int64_t kv_slice(int bi, int h) const {
    return static_cast<std::int64_t>(bi) * t * stride() + c + static_cast<std::int64_t>(h / (nh / nkv)) * hd;
  }
  int block, num_blocks, num_layouts, first_head;
  const int* row_ptr;
  const int* cols;
  const int* col_ptr;
  const int* col_rows;
  const std::int32_t* segments;
  float scale;
};

// rows x hd floats of a head slice (row stride `stride`) into shared rows of `pitch`; zero past t.
__device__ __forceinline__ void load_rows_f32(float* dst, int pitch, const float* src,
                                              std::int64_t stride, int first, int hd, int t) {
  for (int i = threadIdx.x; i < kT * hd; i += kThreadsF32) {
    const int r = i / hd, d = i % hd;
    dst[r * pitch + d] = first + r < t ? src[(first + r) * stride + d] : 0.0f;
  }
}

__device__ __forceinline__ float half_warp_max(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float dot_rows(const float* x, const float* y, int hd) {
  float s = 0.0f;
  for (int d = 0; d < hd; ++d) s = fmaf(x[d], y[d], s);
  return s;
}

// grid (b * nh, query tiles of 16, last first). Thread (ty, tx): query row ty; key tx for scores,
// columns tx, tx + 16, ... for the output.
__global__ void __launch_bounds__(kThreadsF32) forward_f32_kernel(const F32Args a) {
  KILN_DYNAMIC_SHARED(float, smem);
  const int hd = a.hd, pitch = hd + 1;
  float* q_s = smem;               // (16, pitch)
  float* k_s = q_s + kT * pitch;   // (16, pitch)
  float* v_s = k_s + kT * pitch;   // (16, hd)
  float* o_s = v_s + kT * hd;      // (16, hd), element (r, d) owned by thread (r, d % 16)
  float* p_s = o_s + kT * hd;      // (16, 17)
  const int ty = threadIdx.x / kT, tx = threadIdx.x % kT;
  const int bi = blockIdx.x / a.nh, h = blockIdx.x % a.nh;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kT;
  const int t = a.t, block = a.block, row = q0 + ty;
  const std::int64_t stride = a.stride();
  const float* q_g = a.qkv + static_cast<std::int64_t>(bi) * t * stride + static_cast<std::int64_t>(h) * hd;
  const float* k_g = a.qkv + a.kv_slice(bi, h);
  const std::int32_t* seg = a.segments ? a.segments + static_cast<std::int64_t>(bi) * t : nullptr;
  load_rows_f32(q_s, pitch, q_g, stride, q0, hd, t);
  for (int d = tx; d < hd; d += kT) o_s[ty * hd + d] = 0.0f;
  float m = -INFINITY, l = 0.0f;  // identical in the 16 threads of a row
  const int* rows = tiling::head_lists(a.row_ptr, a.num_layouts, a.first_head, a.num_blocks, h);
  const int qb = q0 / block;
  for (int idx = rows[qb]; idx < rows[qb + 1]; ++idx) {
    const int kb0 = a.cols[idx] * block;
    for (int k0 = kb0; k0 < kb0 + block; k0 += kT) {
      if (!tiling::may_see(q0, kT, k0, kT, t)) continue;  // block-uniform
      if (seg && tiling::other_documents(seg, q0, k0, kT, t)) continue;
      __syncthreads();  // the previous chunk's k, v, p are consumed
      load_rows_f32(k_s, pitch, k_g, stride, k0, hd, t);
      load_rows_f32(v_s, hd, k_g + a.ckv, stride, k0, hd, t);
      __syncthreads();
      const int key = k0 + tx;
      const bool visible = key <= row && row < t && (seg == nullptr || seg[key] == seg[row]);
      const float x = visible ? dot_rows(q_s + ty * pitch, k_s + tx * pitch, hd) * a.scale : -INFINITY;
      const float m_new = fmaxf(m, half_warp_max(x));
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float correction = expf(m - m_use);
      const float p = expf(x - m_use);
      l = l * correction + half_warp_sum(p);
      m = m_new;
      p_s[ty * (kT + 1) + tx] = p;
      __syncthreads();
      for (int d = tx; d < hd; d += kT) {
        float acc = o_s[ty * hd + d] * correction;
        for (int j = 0; j < kT; ++j) acc = fmaf(p_s[ty * (kT + 1) + j], v_s[j * hd + d], acc);
        o_s[ty * hd + d] = acc;
      }
    }
  }
  if (row >= t) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  float* o_g = a.out + (static_cast<std::int64_t>(bi) * t + row) * a.c + static_cast<std::int64_t>(h) * hd;
  for (int d = tx; d < hd; d += kT) o_g[d] = o_s[ty * hd + d] * inv;
  if (tx == 0)
    a.lse_out[(static_cast<std::int64_t>(bi) * a.nh + h) * t + row] = l > 0.0f ? m + logf(l) : INFINITY;
}

// grid (b * nkv, key tiles of 16). Thread (ty, tx): key ty; query tx for scores, columns tx,
// tx + 16, ... for dK and dV. For each query head the key/value head serves, in order, walks the
// query blocks of the key's layout column.
__global__ void __launch_bounds__(kThreadsF32) dkdv_f32_kernel(const F32Args a) {
  KILN_DYNAMIC_SHARED(float, smem);
  const int hd = a.hd, pitch = hd + 1;
  float* k_s = smem;                // (16, pitch)
  float* v_s = k_s + kT * pitch;    // (16, pitch)
  float* q_s = v_s + kT * pitch;    // (16, pitch)
  float* do_s = q_s + kT * pitch;   // (16, pitch)
  float* dk_s = do_s + kT * pitch;  // (16, hd), owned like o_s above
  float* dv_s = dk_s + kT * hd;     // (16, hd)
  float* p_s = dv_s + kT * hd;      // (16 keys, 17)
  float* ds_s = p_s + kT * (kT + 1);
  float* lse_s = ds_s + kT * (kT + 1);  // (16)
  float* dl_s = lse_s + kT;             // (16)
  const int ty = threadIdx.x / kT, tx = threadIdx.x % kT;
  const int bi = blockIdx.x / a.nkv, g = blockIdx.x % a.nkv, group = a.nh / a.nkv;
  const int k0 = blockIdx.y * kT;
  const int t = a.t, block = a.block, key = k0 + ty;
  const std::int64_t stride = a.stride();
  const float* k_g = a.qkv + a.kv_slice(bi, g * group);
  const std::int32_t* seg = a.segments ? a.segments + static_cast<std::int64_t>(bi) * t : nullptr;
  load_rows_f32(k_s, pitch, k_g, stride, k0, hd, t);
  load_rows_f32(v_s, pitch, k_g + a.ckv, stride, k0, hd, t);
  for (int d = tx; d < hd; d += kT) dk_s[ty * hd + d] = dv_s[ty * hd + d] = 0.0f;
  const int kb = k0 / block;
  for (int h = g * group; h < (g + 1) * group; ++h) {
  const std::int64_t bh = static_cast<std::int64_t>(bi) * a.nh + h;
  const float* q_g = a.qkv + static_cast<std::int64_t>(bi) * t * stride + static_cast<std::int64_t>(h) * hd;
  const float* do_g = a.dout + static_cast<std::int64_t>(bi) * t * a.c + static_cast<std::int64_t>(h) * hd;
  const int* cols = tiling::head_lists(a.col_ptr, a.num_layouts, a.first_head, a.num_blocks, h);
  for (int idx = cols[kb]; idx < cols[kb + 1]; ++idx) {
    const int qb0 = a.col_rows[idx] * block;
    for (int q0 = qb0; q0 < qb0 + block; q0 += kT) {
      if (!tiling::may_see(q0, kT, k0, kT, t)) continue;  // block-uniform
      if (seg && tiling::other_documents(seg, q0, k0, kT, t)) continue;
      __syncthreads();
      load_rows_f32(q_s, pitch, q_g, stride, q0, hd, t);
      load_rows_f32(do_s, pitch, do_g, a.c, q0, hd, t);
      if (threadIdx.x < kT) {
        const int query = q0 + threadIdx.x;
        lse_s[threadIdx.x] = query < t ? a.lse[bh * t + query] : INFINITY;
        dl_s[threadIdx.x] = query < t ? a.delta[bh * t + query] : 0.0f;
      }
      __syncthreads();
      const int query = q0 + tx;
      const bool visible = key <= query && query < t && (seg == nullptr || seg[key] == seg[query]);
      float p = 0.0f, ds = 0.0f;
      if (visible) {
        p = expf(dot_rows(q_s + tx * pitch, k_s + ty * pitch, hd) * a.scale - lse_s[tx]);
        ds = p * (dot_rows(do_s + tx * pitch, v_s + ty * pitch, hd) - dl_s[tx]);
      }
      p_s[ty * (kT + 1) + tx] = p;
      ds_s[ty * (kT + 1) + tx] = ds;
      __syncthreads();
      for (int d = tx; d < hd; d += kT) {
        float acc_v = dv_s[ty * hd + d], acc_k = dk_s[ty * hd + d];
        for (int i = 0; i < kT; ++i) {
          acc_v = fmaf(p_s[ty * (kT + 1) + i], do_s[i * pitch + d], acc_v);
          acc_k = fmaf(ds_s[ty * (kT + 1) + i], q_s[i * pitch + d], acc_k);
        }
        dv_s[ty * hd + d] = acc_v;
        dk_s[ty * hd + d] = acc_k;
      }
    }
  }
  }
  if (key >= t) return;
  float* dk_g = a.out + a.kv_slice(bi, g * group) + static_cast<std::int64_t>(key) * stride;
  for (int d = tx; d < hd; d += kT) {
    dk_g[d] = dk_s[ty * hd + d] * a.scale;
    dk_g[a.ckv + d] = dv_s[ty * hd + d];
  }
}

// grid (b * nh, query tiles of 16, last first): dQ = scale * sum dS K over the row's keys.
__global__ void __launch_bounds__(kThreadsF32) dq_f32_kernel(const F32Args a) {
  KILN_DYNAMIC_SHARED(float, smem);
  const int hd = a.hd, pitch = hd + 1;
  float* q_s = smem;                // (16, pitch)
  float* do_s = q_s + kT * pitch;   // (16, pitch)
  float* k_s = do_s + kT * pitch;   // (16, pitch)
  float* v_s = k_s + kT * pitch;    // (16, pitch)
  float* dq_s = v_s + kT * pitch;   // (16, hd)
  float* ds_s = dq_s + kT * hd;     // (16, 17)
  const int ty = threadIdx.x / kT, tx = threadIdx.x % kT;
  const int bi = blockIdx.x / a.nh, h = blockIdx.x % a.nh;
  const std::int64_t bh = static_cast<std::int64_t>(bi) * a.nh + h;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kT;
  const int t = a.t, block = a.block, row = q0 + ty;
  const std::int64_t stride = a.stride();
  const float* q_g = a.qkv + static_cast<std::int64_t>(bi) * t * stride + static_cast<std::int64_t>(h) * hd;
  const float* k_g = a.qkv + a.kv_slice(bi, h);
  const float* do_g = a.dout + static_cast<std::int64_t>(bi) * t * a.c + static_cast<std::int64_t>(h) * hd;
  const std::int32_t* seg = a.segments ? a.segments + static_cast<std::int64_t>(bi) * t : nullptr;
  load_rows_f32(q_s, pitch, q_g, stride, q0, hd, t);
  load_rows_f32(do_s, pitch, do_g, a.c, q0, hd, t);
  for (int d = tx; d < hd; d += kT) dq_s[ty * hd + d] = 0.0f;
  const float row_lse = row < t ? a.lse[bh * t + row] : INFINITY;
  const float row_delta = row < t ? a.delta[bh * t + row] : 0.0f;
  const int* rows = tiling::head_lists(a.row_ptr, a.num_layouts, a.first_head, a.num_blocks, h);
  const int qb = q0 / block;
  for (int idx = rows[qb]; idx < rows[qb + 1]; ++idx) {
    const int kb0 = a.cols[idx] * block;
    for (int k0 = kb0; k0 < kb0 + block; k0 += kT) {
      if (!tiling::may_see(q0, kT, k0, kT, t)) continue;  // block-uniform
      if (seg && tiling::other_documents(seg, q0, k0, kT, t)) continue;
      __syncthreads();
      load_rows_f32(k_s, pitch, k_g, stride, k0, hd, t);
      load_rows_f32(v_s, pitch, k_g + a.ckv, stride, k0, hd, t);
      __syncthreads();
      const int key = k0 + tx;
      const bool visible = key <= row && row < t && (seg == nullptr || seg[key] == seg[row]);
      float ds = 0.0f;
      if (visible) {
        const float p = expf(dot_rows(q_s + ty * pitch, k_s + tx * pitch, hd) * a.scale - row_lse);
        ds = p * (dot_rows(do_s + ty * pitch, v_s + tx * pitch, hd) - row_delta);
      }
      ds_s[ty * (kT + 1) + tx] = ds;
      __syncthreads();
      for (int d = tx; d < hd; d += kT) {
        float acc = dq_s[ty * hd + d];
        for (int j = 0; j < kT; ++j) acc = fmaf(ds_s[ty * (kT + 1) + j], k_s[j * pitch + d], acc);
        dq_s[ty * hd + d] = acc;
      }
    }
  }
  if (row >= t) return;
  float* dq_g = a.out + (static_cast<std::int64_t>(bi) * t + row) * stride + static_cast<std::int64_t>(h) * hd;
  for (int d = tx; d < hd; d += kT) dq_g[d] = dq_s[ty * hd + d] * a.scale;
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16_t x) { return __bfloat162float(x); }

// delta[(bi, h, pos)] = sum_d dout * out over one head's row; one warp per (bi, pos, h), heads
// fastest so consecutive warps read consecutive memory.
template <class T>
__global__ void row_dot_kernel(float* delta, const T* dout, const T* out, std::int64_t rows,
                               int t, int nh, int hd, std::int64_t c) {
  const std::int64_t r = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (r >= rows) return;  // whole warps leave together (blockDim.x is a multiple of 32)
  const int lane = threadIdx.x & 31;
  const int h = static_cast<int>(r % nh);
  const std::int64_t token = r / nh;  // bi * t + pos
  const std::int64_t base = token * c + static_cast<std::int64_t>(h) * hd;
  float s = 0.0f;
  for (int d = lane; d < hd; d += 32) s = fmaf(to_f32(dout[base + d]), to_f32(out[base + d]), s);
  s = warp_sum(s);
  if (lane == 0) {
    const std::int64_t bi = token / t, pos = token % t;
    delta[(bi * nh + h) * t + pos] = s;
  }
}

template <class T>
void row_dot(float* delta, const T* dout, const T* out, std::int64_t b, std::int64_t t,
             std::int64_t c, std::int64_t nh) {
  const std::int64_t rows = b * t * nh;
  constexpr int kThreads = 256;
  const std::int64_t blocks = ceil_div(rows * 32, kThreads);
  KILN_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, row_dot_kernel<T>)(
      delta, dout, out, rows, static_cast<int>(t), static_cast<int>(nh), static_cast<int>(c / nh), c);
  KILN_CUDA_LAUNCH_CHECK();
}

// Flash-decoding: CTA (head, split) folds keys [split * kDecodeKeys, +kDecodeKeys) into a partial
// (max, sum, acc[hd]); decode_combine_kernel merges the splits of a head in order.
constexpr int kDecodeKeys = 256;
constexpr int kDecodeWarps = 4;

__global__ void __launch_bounds__(32 * kDecodeWarps)
    decode_partial_kernel(float* part, const float* q, const float* k_cache, const float* v_cache,
                          std::int64_t n, std::int64_t ckv, int hd, int group, int splits,
                          const std::uint8_t* key_mask, float scale) {
  KILN_DYNAMIC_SHARED(float, smem);
  float* q_s = smem;               // (hd)
  float* acc_s = q_s + hd;         // (warps, hd), element d of warp w owned by lane d % 32
  float* stat_s = acc_s + kDecodeWarps * hd;  // (warps, 2): max, sum
  const int h = blockIdx.x, split = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) q_s[d] = q[static_cast<std::int64_t>(h) * hd + d];
  for (int d = lane; d < hd; d += 32) acc_s[warp * hd + d] = 0.0f;
  __syncthreads();
  const std::int64_t first = static_cast<std::int64_t>(split) * kDecodeKeys;
  const std::int64_t last = first + kDecodeKeys < n ? first + kDecodeKeys : n;
  float m = -INFINITY, l = 0.0f;
  for (std::int64_t j = first + warp; j < last; j += kDecodeWarps) {
    if (key_mask && !key_mask[static_cast<std::int64_t>(h) * n + j]) continue;  // warp-uniform
    const float* k = k_cache + j * ckv + static_cast<std::int64_t>(h / group) * hd;
    const float* v = v_cache + j * ckv + static_cast<std::int64_t>(h / group) * hd;
    float s = 0.0f;
    for (int d = lane; d < hd; d += 32) s = fmaf(q_s[d], k[d], s);
    s = warp_sum(s) * scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // m = -inf at first: 0
    const float p = expf(s - m_new);
    l = l * correction + p;
    m = m_new;
    for (int d = lane; d < hd; d += 32) acc_s[warp * hd + d] = acc_s[warp * hd + d] * correction + p * v[d];
  }
  if (lane == 0) {
    stat_s[2 * warp] = m;
    stat_s[2 * warp + 1] = l;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, stat_s[2 * w]);
  float* out = part + (static_cast<std::int64_t>(h) * splits + split) * (hd + 2);
  float sum = 0.0f;
  for (int w = 0; w < kDecodeWarps; ++w)
    if (stat_s[2 * w] != -INFINITY) sum += stat_s[2 * w + 1] * expf(stat_s[2 * w] - mx);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int w = 0; w < kDecodeWarps; ++w)
      if (stat_s[2 * w] != -INFINITY) acc += acc_s[w * hd + d] * expf(stat_s[2 * w] - mx);
    out[2 + d] = acc;
  }
  if (threadIdx.x == 0) {
    out[0] = mx;
    out[1] = sum;
  }
}

__global__ void decode_combine_kernel(float* out, const float* part, int hd, int splits) {
  const int h = blockIdx.x;
  const float* p = part + static_cast<std::int64_t>(h) * splits * (hd + 2);
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, p[s * (hd + 2)]);
  float sum = 0.0f;
  for (int s = 0; s < splits; ++s)
    if (p[s * (hd + 2)] != -INFINITY) sum += p[s * (hd + 2) + 1] * expf(p[s * (hd + 2)] - mx);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s)
      if (p[s * (hd + 2)] != -INFINITY) acc += p[s * (hd + 2) + 2 + d] * expf(p[s * (hd + 2)] - mx);
    out[static_cast<std::int64_t>(h) * hd + d] = acc * inv;
  }
}

void check_layout(const char* what, std::int64_t b, std::int64_t t, std::int64_t c,
                  std::int64_t nh, std::int64_t nkv, const cpu::BlockLayoutView& layout, int min_tile) {
  KILN_CHECK(c % nh == 0, what, ": c=", c, " is not a multiple of nh=", nh);
  KILN_CHECK(nkv > 0 && nh % nkv == 0, what, ": ", nkv, " key/value heads do not divide ", nh, " query heads");
  KILN_CHECK(layout.block == 16 || layout.block == 32 || layout.block == 64 || layout.block == 128,
             what, ": layout block ", layout.block, " is not supported; use 16, 32, 64 or 128");
  KILN_CHECK(layout.num_blocks == ceil_div(t, layout.block), what, ": the layout has ",
             layout.num_blocks, " blocks of ", layout.block, " but t=", t, " needs ",
             ceil_div(t, layout.block), "; build the layout for this sequence length");
  KILN_CHECK(layout.row_ptr != nullptr && layout.cols != nullptr, what,
             ": layout.row_ptr/cols are null; upload the layout to the device");
  KILN_CHECK(layout.num_layouts == 1 || (layout.first_head >= 0 && layout.first_head + nh <= layout.num_layouts),
             what, ": heads ", layout.first_head, "..", layout.first_head + nh - 1,
             " need per-head layouts that the layout's ", layout.num_layouts, " do not cover");
  KILN_CHECK(t <= (std::int64_t{1} << 30) && ceil_div(t, min_tile) <= 65535, what, ": t=", t,
             " is too long for the CUDA attention grid (at most ", 65535 * std::int64_t{min_tile},
             " tokens)");
  KILN_CHECK(b * nh <= 0x7fffffff, what, ": b * nh = ", b * nh, " is too large for one launch");
}

F32Args make_f32_args(std::int64_t t, std::int64_t c, std::int64_t nh, std::int64_t nkv,
                      const cpu::BlockLayoutView& layout) {
  F32Args a{};
  a.c = c;
  a.t = static_cast<int>(t);
  a.nh = static_cast<int>(nh);
  a.nkv = static_cast<int>(nkv);
  a.hd = static_cast<int>(c / nh);
  a.ckv = nkv * a.hd;
  a.block = layout.block;
  a.num_blocks = layout.num_blocks;
  a.num_layouts = layout.num_layouts;
  a.first_head = layout.first_head;
  a.row_ptr = layout.row_ptr;
  a.cols = layout.cols;
  a.col_ptr = layout.col_ptr;
  a.col_rows = layout.col_rows;
  a.segments = layout.segments;
  a.scale = 1.0f / sqrtf(static_cast<float>(a.hd));
  return a;
}

void check_f32_head(const char* what, std::int64_t c, std::int64_t nh) {
  KILN_CHECK(c / nh <= kMaxHeadF32, what, ": head size hd=", c / nh,
             " is larger than the fp32 CUDA kernels support (", kMaxHeadF32, ")");
}

// One CTA per (batch row, head) and tile of 16; heads: query heads, or key/value heads (dK/dV).
template <class Kernel>
void launch_f32(Kernel kernel, const F32Args& a, std::int64_t b, std::int64_t heads, std::size_t smem) {
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(b * heads), static_cast<unsigned>(ceil_div(a.t, kT)));
  KILN_LAUNCH(grid, kThreadsF32, smem, kernel)(a);
  KILN_CUDA_LAUNCH_CHECK();
}

}  // namespace

void check_bf16_shape(const char* what, std::int64_t b, std::int64_t t, std::int64_t c,
                      std::int64_t nh, std::int64_t nkv, const cpu::BlockLayoutView& layout, int max_tile) {
  KILN_CHECK(nh > 0 && c % nh == 0, what, ": c=", c, " is not a multiple of nh=", nh);
  const std::int64_t hd = c / nh;
  KILN_CHECK(with_head_dim(hd, [](auto) {}), what, ": head size hd=", hd, " (c=", c, ", nh=", nh,
             ") is not supported; the bf16 kernels support hd = 32, 48, 64, 80, 96 or 128");
  check_layout(what, b, t, c, nh, nkv, layout, max_tile);
}

Args make_args(std::int64_t t, std::int64_t c, std::int64_t nh, std::int64_t nkv,
               const cpu::BlockLayoutView& layout) {
  Args a{};
  a.c = c;
  a.ckv = nkv * (c / nh);
  a.t = static_cast<int>(t);
  a.nh = static_cast<int>(nh);
  a.nkv = static_cast<int>(nkv);
  a.block = layout.block;
  a.num_blocks = layout.num_blocks;
  a.num_layouts = layout.num_layouts;
  a.first_head = layout.first_head;
  a.row_ptr = layout.row_ptr;
  a.cols = layout.cols;
  a.col_ptr = layout.col_ptr;
  a.col_rows = layout.col_rows;
  a.segments = layout.segments;
  a.scale = 1.0f / sqrtf(static_cast<float>(c / nh));
  a.scale_log2 = a.scale * kLog2e;
  return a;
}

void launch_row_dot(float* delta, const float* dout, const float* out, std::int64_t b,
                    std::int64_t t, std::int64_t c, std::int64_t nh) {
  row_dot<float>(delta, dout, out, b, t, c, nh);
}
void launch_row_dot(float* delta, const bf16_t* dout, const bf16_t* out, std::int64_t b,
                    std::int64_t t, std::int64_t c, std::int64_t nh) {
  row_dot<bf16_t>(delta, dout, out, b, t, c, nh);
}

}  // namespace attention_detail

void attention_forward(float* out, float* lse, const float* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh, const cpu::BlockLayoutView& layout, std::int64_t kv_heads) {
  using namespace attention_detail;
  if (b == 0 || t == 0 || nh == 0 || c == 0) return;
  const std::int64_t nkv = kv_heads > 0 ? kv_heads : nh;
  check_layout("attention_forward", b, t, c, nh, nkv, layout, kT);
  check_f32_head("attention_forward", c, nh);
  F32Args a = make_f32_args(t, c, nh, nkv, layout);
  a.qkv = qkv;
  a.out = out;
  a.lse_out = lse;
  const std::size_t floats = 2 * kT * (a.hd + 1) + 2 * kT * a.hd + kT * (kT + 1);
  launch_f32(forward_f32_kernel, a, b, nh, floats * sizeof(float));
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, std::int64_t b, std::int64_t t, std::int64_t c,
                        std::int64_t nh, const cpu::BlockLayoutView& layout, std::int64_t kv_heads) {
  using namespace attention_detail;
  if (b == 0 || t == 0 || nh == 0 || c == 0) return;
  const std::int64_t nkv = kv_heads > 0 ? kv_heads : nh;
  check_layout("attention_backward", b, t, c, nh, nkv, layout, kT);
  check_f32_head("attention_backward", c, nh);
  KILN_CHECK(layout.col_ptr != nullptr && layout.col_rows != nullptr,
             "attention_backward: layout.col_ptr/col_rows are null; the CUDA backward walks the "
             "transposed layout: build it with kiln::cpu::transpose_block_layout and upload it "
             "with the layout");
  Workspace delta(static_cast<std::size_t>(b * nh * t) * sizeof(float));
  launch_row_dot(delta.as<float>(), dout, out, b, t, c, nh);
  F32Args a = make_f32_args(t, c, nh, nkv, layout);
  a.qkv = qkv;
  a.dout = dout;
  a.lse = lse;
  a.delta = delta.as<float>();
  a.out = dqkv;
  const std::size_t kv_floats = 4 * kT * (a.hd + 1) + 2 * kT * a.hd + 2 * kT * (kT + 1) + 2 * kT;
  launch_f32(dkdv_f32_kernel, a, b, nkv, kv_floats * sizeof(float));
  const std::size_t q_floats = 4 * kT * (a.hd + 1) + kT * a.hd + kT * (kT + 1);
  launch_f32(dq_f32_kernel, a, b, nh, q_floats * sizeof(float));
}

void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      std::int64_t n, std::int64_t c, std::int64_t nh, const std::uint8_t* key_mask,
                      std::int64_t kv_heads) {
  using namespace attention_detail;
  if (n == 0 || c == 0 || nh == 0) return;
  const std::int64_t nkv = kv_heads > 0 ? kv_heads : nh;
  KILN_CHECK(c % nh == 0, "attention_decode: c=", c, " is not a multiple of nh=", nh);
  KILN_CHECK(nh % nkv == 0, "attention_decode: ", nkv, " key/value heads do not divide ", nh, " query heads");
  KILN_CHECK(nh <= 0x7fffffff && ceil_div(n, kDecodeKeys) <= 65535,
             "attention_decode: n=", n, " keys is too long for one launch");
  const int hd = static_cast<int>(c / nh);
  const int splits = static_cast<int>(ceil_div(n, kDecodeKeys));
  Workspace part(static_cast<std::size_t>(nh) * splits * (hd + 2) * sizeof(float));
  const std::size_t smem = (static_cast<std::size_t>(hd) * (1 + kDecodeWarps) + 2 * kDecodeWarps) * sizeof(float);
  KILN_CHECK(smem <= 200 * 1024, "attention_decode: head size hd=", hd, " is too large");
  KILN_CUDA_CHECK(cudaFuncSetAttribute(decode_partial_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  KILN_LAUNCH(dim3(static_cast<unsigned>(nh), static_cast<unsigned>(splits)), 32 * kDecodeWarps, smem,
              decode_partial_kernel)(part.as<float>(), q, k_cache, v_cache, n, nkv * hd, hd,
                                            static_cast<int>(nh / nkv), splits, key_mask, scale);
  KILN_CUDA_LAUNCH_CHECK();
  KILN_LAUNCH(static_cast<unsigned>(nh), 128, 0, decode_combine_kernel)(out, part.as<float>(), hd, splits);
  KILN_CUDA_LAUNCH_CHECK();
}

}  // namespace kiln::cuda
