// Device building blocks of the bf16 attention kernels (attention_fwd.cu, attention_bwd.cu):
// tensor-core fragments (ldmatrix, mma.sync m16n8k16 bf16 -> fp32; the PTX itself is in ptx.cuh),
// cp.async tile loads with zero-fill, staged 128-bit stores, the kernel arguments, and the step
// queue through which one thread walks the layout (attention_tiling.h) for the whole CTA.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16; lane = 4 g + q):
//   A (16 x 16, row-major): a0 (row g, cols 2q, 2q+1), a1 (row g+8, same cols), a2 (row g,
//     cols 2q+8, 2q+9), a3 (row g+8, cols 2q+8, 2q+9)
//   B (16 x 8, k x n):      b0 (k 2q, 2q+1; n g), b1 (k 2q+8, 2q+9; n g)
//   C (16 x 8, fp32):       c0, c1 (row g, cols 2q, 2q+1), c2, c3 (row g+8, cols 2q, 2q+1)
// so the C fragments of two adjacent n-tiles are, packed to bf16, the A fragment of the next
// product (P V, dS K, ...). Shared-memory tiles are row-major with a pitch of hd + 8 elements:
// the 16-byte rows of an 8 x 8 ldmatrix then fall in 8 different bank groups (the pitch in
// 16-byte units, hd / 8 + 1, is odd for every supported hd).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/cuda/attention_tiling.h"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/runtime.h"

namespace kiln::cuda::attention_detail {

using bf16_t = __nv_bfloat16;
namespace tiling = kiln::attention_tiling;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Everything a kernel reads; passed by value.
struct Args {
  const bf16_t* qkv;       // (b, t, c + 2 ckv)
  const bf16_t* out;       // (b, t, c) forward output (backward only)
  const bf16_t* dout;      // (b, t, c)
  bf16_t* dst;             // forward: out (b, t, c); backward: dqkv (b, t, c + 2 ckv)
  float* lse_out;          // forward: (b, nh, t)
  const float* lse;        // backward: (b, nh, t)
  const float* delta;      // backward: rowsum(dout * out), (b, nh, t)
  std::int64_t c;    // query width nh * hd
  std::int64_t ckv;  // key/value width nkv * hd
  int t, nh, nkv;    // nkv key/value heads, each serving nh / nkv consecutive query heads
  int block, num_blocks, num_layouts, first_head;
  const int* row_ptr;
  const int* cols;
  const int* col_ptr;
  const int* col_rows;
  const std::int32_t* segments;
  float scale;       // 1 / sqrt(hd)
  float scale_log2;  // scale * log2(e): scores go straight to exp2
  int aligned;       // qkv, out, dout, dst all 16-byte aligned: cp.async and 128-bit stores
};

// Two floats as bf16x2 (lo in the low half: the lower column index).
__device__ __forceinline__ std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return static_cast<std::uint32_t>(__bfloat16_as_ushort(v.x)) |
         (static_cast<std::uint32_t>(__bfloat16_as_ushort(v.y)) << 16);
}

// The A fragment of the 16 x 16 block made of n-tiles (2 kc, 2 kc + 1) of a C accumulator.
__device__ __forceinline__ void c_to_a(std::uint32_t (&a)[4], const float (&lo)[4],
                                       const float (&hi)[4]) {
  a[0] = pack_bf16(lo[0], lo[1]);
  a[1] = pack_bf16(lo[2], lo[3]);
  a[2] = pack_bf16(hi[0], hi[1]);
  a[3] = pack_bf16(hi[2], hi[3]);
}

// Lane addresses for ldmatrix.x4 (lane = threadIdx.x % 32), element offsets in a tile of pitch P:
//  A operand / trans B operand: rows r0 + (lane % 16), columns c0 + 8 (lane / 16)
//  non-trans B operand (two n-tiles of 8 rows, two k halves): rows r0 + lane % 8 + 8 (lane / 16),
//  columns c0 + 8 ((lane / 8) % 2)
template <int P>
__device__ __forceinline__ int a_offset(int lane, int r0, int c0) {
  return (r0 + (lane & 15)) * P + c0 + ((lane >> 4) << 3);
}
template <int P>
__device__ __forceinline__ int b_offset(int lane, int r0, int c0) {
  return (r0 + (lane & 7) + ((lane >> 4) << 3)) * P + c0 + (((lane >> 3) & 1) << 3);
}

// Rows [first, first + rows) of a (t x HD) slice with row stride `stride` elements into a shared
// tile of pitch HD + 8; rows >= t are zero. Aligned: cp.async (complete after cp_async_wait and
// a barrier); otherwise plain loads and stores (complete after a barrier).
template <int HD, int kThreads>
__device__ __forceinline__ void load_tile(bf16_t* tile, const bf16_t* src, std::int64_t stride,
                                          int first, int rows, int t, bool aligned) {
  constexpr int kChunks = HD / 8;
  constexpr int kPitch = HD + 8;
  for (int i = threadIdx.x; i < rows * kChunks; i += kThreads) {
    const int r = i / kChunks, ch = i % kChunks;
    const int pos = first + r;
    bf16_t* d = tile + r * kPitch + ch * 8;
    if (aligned) {
      const bf16_t* s = pos < t ? src + pos * stride + ch * 8 : src;
      cp_async_16(d, s, pos < t ? 16 : 0);
    } else {
      unsigned short v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (pos < t) {
        const unsigned short* s =
            reinterpret_cast<const unsigned short*>(src + pos * stride + ch * 8);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = s[e];
      }
      uint4 packed;
      packed.x = v[0] | (static_cast<unsigned>(v[1]) << 16);
      packed.y = v[2] | (static_cast<unsigned>(v[3]) << 16);
      packed.z = v[4] | (static_cast<unsigned>(v[5]) << 16);
      packed.w = v[6] | (static_cast<unsigned>(v[7]) << 16);
      *reinterpret_cast<uint4*>(d) = packed;
    }
  }
}

// The reverse: rows [first, first + rows) of a shared tile to global memory, rows >= t skipped.
template <int HD, int kThreads>
__device__ __forceinline__ void store_tile(bf16_t* dst, std::int64_t stride, const bf16_t* tile,
                                           int first, int rows, int t, bool aligned) {
  constexpr int kChunks = HD / 8;
  constexpr int kPitch = HD + 8;
  for (int i = threadIdx.x; i < rows * kChunks; i += kThreads) {
    const int r = i / kChunks, ch = i % kChunks;
    const int pos = first + r;
    if (pos >= t) continue;
    const uint4 v = *reinterpret_cast<const uint4*>(tile + r * kPitch + ch * 8);
    bf16_t* d = dst + pos * stride + ch * 8;
    if (aligned) {
      *reinterpret_cast<uint4*>(d) = v;
    } else {
      unsigned short* o = reinterpret_cast<unsigned short*>(d);
      const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        o[2 * e] = static_cast<unsigned short>(words[e] & 0xffffu);
        o[2 * e + 1] = static_cast<unsigned short>(words[e] >> 16);
      }
    }
  }
}

// Writes a warp's C accumulator rows (16 rows from r0, n-tiles of 8 columns) scaled by
// row_scale[half] as bf16 into a shared tile of pitch P.
template <int kTiles, int P>
__device__ __forceinline__ void stage_rows(bf16_t* tile, int r0, const float (&acc)[kTiles][4],
                                           float scale_lo, float scale_hi) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int n = 0; n < kTiles; ++n) {
    *reinterpret_cast<std::uint32_t*>(tile + (r0 + g) * P + 8 * n + 2 * q) =
        pack_bf16(acc[n][0] * scale_lo, acc[n][1] * scale_lo);
    *reinterpret_cast<std::uint32_t*>(tile + (r0 + g + 8) * P + 8 * n + 2 * q) =
        pack_bf16(acc[n][2] * scale_hi, acc[n][3] * scale_hi);
  }
}

// The layout walk of one CTA, advanced by thread 0 only: slot s % 3 holds step s. Step s + 2 is
// written during iteration s while every thread reads step s + 1, and the slot it overwrites
// (step s - 1) was last read before the barrier of iteration s - 1.
struct StepQueue {
  tiling::ListUnion walk;
  int start[3];
  unsigned mask[3];
};

// Thread 0: the next step some unit of the CTA takes part in (unit_active(u, start, mask) for
// u < units), or start = -1.
template <class UnitActive>
__device__ void produce_step(StepQueue& queue, int slot, const int* ids, int block, int len,
                             int units, const UnitActive& unit_active) {
  tiling::ChunkStep step;
  while (tiling::union_next_chunk(queue.walk, ids, block, len, &step)) {
    for (int u = 0; u < units; ++u)
      if (unit_active(u, step.start, step.mask)) {
        queue.start[slot] = step.start;
        queue.mask[slot] = step.mask;
        return;
      }
  }
  queue.start[slot] = -1;
  queue.mask[slot] = 0;
}

// One CTA's tile of 16-position units along one (batch row, head) slice, and its walk through
// the layout. Query tiles (forward, dQ) walk layout rows (row_ptr, cols) in steps of `len` keys;
// key tiles (dK/dV, kByKeys) walk layout columns (col_ptr, col_rows) in steps of `len` queries.
// Unit u takes part in a step when its layout block is in the step's mask, causality lets some
// query of the pair of ranges see some key, and (packed documents) not every key belongs to an
// earlier document than every query.
template <bool kByKeys>
struct TileWalk {
  int bi, h, first, t, block, len;  // h: the query head
  const std::int32_t* seg;  // document ids of the batch row, or null
  tiling::BlockSpan span;   // layout blocks [first, first + rows) covers
  const int* ids;           // cols, or col_rows

  // Units at [first, first + rows) of query head `head` of batch row `row`; steps of `chunk`
  // positions, cut to the layout block.
  __device__ TileWalk(const Args& a, int row, int head, int first_position, int rows, int chunk)
      : bi(row),
        h(head),
        first(first_position),
        t(a.t),
        block(a.block),
        len(tiling::chunk_len(a.block, chunk)),
        seg(a.segments ? a.segments + static_cast<std::int64_t>(bi) * a.t : nullptr),
        span(tiling::blocks_spanned(first_position, rows, a.block, a.num_blocks)),
        ids(kByKeys ? a.col_rows : a.cols) {}

  // Offset of (bi, position 0, head h) in a (b, t, row_stride) tensor of heads of hd elements.
  __device__ std::int64_t slice(std::int64_t row_stride, int hd) const {
    return static_cast<std::int64_t>(bi) * t * row_stride + static_cast<std::int64_t>(h) * hd;
  }
  // Offset of (bi, position 0) of the k of h's key/value head in q|k|v (its v: + a.ckv).
  __device__ std::int64_t kv_slice(const Args& a, int hd) const {
    return static_cast<std::int64_t>(bi) * t * qkv_stride(a) + a.c +
           static_cast<std::int64_t>(h / (a.nh / a.nkv)) * hd;
  }
  __device__ static std::int64_t qkv_stride(const Args& a) { return a.c + 2 * a.ckv; }

  __device__ bool unit_active(int u, int step, unsigned mask) const {
    const int mine = first + tiling::kUnit * u;
    if (mine >= t || !((mask >> (mine / block - span.first)) & 1u)) return false;
    const int q_first = kByKeys ? step : mine, q_len = kByKeys ? len : tiling::kUnit;
    const int k_first = kByKeys ? mine : step, k_len = kByKeys ? tiling::kUnit : len;
    if (!tiling::may_see(q_first, q_len, k_first, k_len, t)) return false;
    return seg == nullptr || !tiling::other_documents(seg, q_first, k_first, k_len, t);
  }

  // Thread 0: queues into `slot` the next step some of the `units` units take part in.
  __device__ void produce(StepQueue& queue, int slot, int units) const {
    produce_step(queue, slot, ids, block, len, units,
                 [this](int u, int step, unsigned mask) { return unit_active(u, step, mask); });
  }

  // Thread 0: starts the walk over the lists of the blocks the tile spans and queues steps 0, 1.
  __device__ void start(StepQueue& queue, const Args& a, int units) const {
    const int* lists = tiling::head_lists(kByKeys ? a.col_ptr : a.row_ptr, a.num_layouts,
                                          a.first_head, a.num_blocks, h);
    tiling::union_init(queue.walk, lists, span.first, span.count, block / len);
    produce(queue, 0, units);
    produce(queue, 1, units);
  }
};

// Host side. The head sizes the bf16 kernels are built for: calls f(std::integral_constant<int,
// hd>) and returns true for one of them, false (calling nothing) for any other.
template <class F>
bool with_head_dim(std::int64_t hd, F&& f) {
  switch (hd) {
    case 32: f(std::integral_constant<int, 32>{}); return true;
    case 48: f(std::integral_constant<int, 48>{}); return true;
    case 64: f(std::integral_constant<int, 64>{}); return true;
    case 80: f(std::integral_constant<int, 80>{}); return true;
    case 96: f(std::integral_constant<int, 96>{}); return true;
    case 128: f(std::integral_constant<int, 128>{}); return true;
    default: return false;
  }
}

// In attention.cu. Checks the arguments every bf16 entry point shares (head size
// among the supported ones, layout block and size, grid limits for tiles of max_tile).
void check_bf16_shape(const char* what, std::int64_t b, std::int64_t t, std::int64_t c,
                      std::int64_t nh, std::int64_t nkv, const cpu::BlockLayoutView& layout, int max_tile);
// Args with the shape, layout and scales filled in (pointers left null); nkv key/value heads.
Args make_args(std::int64_t t, std::int64_t c, std::int64_t nh, std::int64_t nkv,
               const cpu::BlockLayoutView& layout);
// delta (b, nh, t) = rowsum(dout * out) per head, in fp32.
void launch_row_dot(float* delta, const float* dout, const float* out, std::int64_t b,
                    std::int64_t t, std::int64_t c, std::int64_t nh);
void launch_row_dot(float* delta, const bf16_t* dout, const bf16_t* out, std::int64_t b,
                    std::int64_t t, std::int64_t c, std::int64_t nh);

}  // namespace kiln::cuda::attention_detail
