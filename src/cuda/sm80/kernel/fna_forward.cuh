// Layer: cuda/sm80 kernel. Fused neighborhood-attention forward (FlashAttention-2 style):
// one CTA = one box of BM query positions of one (batch, head, dilation group); it walks the
// key boxes covering its queries' windows (TileWalk), computing S = Q K^T on tensor cores,
// masking only partial boxes along their partial axes, an online softmax in registers and
// O += P V. Each warp owns 16*MI query rows. K/V tiles are double-buffered: tile t+1 streams
// in while tile t is computed, with one barrier per tile.
#pragma once
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

#include "cuda/common/params.h"
#include "cuda/sm80/collective/box_rows.cuh"
#include "cuda/sm80/collective/mask.cuh"
#include "cuda/sm80/collective/smem_tile.cuh"
#include "cuda/common/tile_walk.h"
#include "cuda/sm80/collective/warp_mma.cuh"
#include "cuda/sm80/kernel/traits.cuh"

namespace nattn::cuda::sm80 {

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads) fna_forward_kernel(const ForwardParams p, const Tiling tl) {
  using Element = typename Tr::Element;
  constexpr int HD = Tr::HD, BM = Tr::BM, BN = Tr::BN, MI = Tr::MI, NI = Tr::NI, OI = Tr::OI;
  constexpr int kThreads = Tr::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_raw);
  Element* sQ = ss.q;
  Element* sK = ss.k[0];  // [2][BN * HD]
  Element* sV = ss.v[0];  // [2][BN * HD]
  int64_t* rel_k = ss.rel_k;
  int64_t* rel_v = ss.rel_v;
  int2* win = ss.win[0];  // [3][BM]

  const Geometry& g = p.g;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int64_t hk = h / (g.heads_q / g.heads_kv);
  const int add_tiles = int((g.num_additional + BN - 1) / BN);
  // The walk lives in shared memory: it is loop-invariant and would otherwise hold ~40
  // registers that the accumulators need.
  TileWalk& w = ss.walk;
  if (threadIdx.x == 0) {
    w.init(g, tl, blockIdx.x, false, add_tiles, BN);
    w.begin(1, g.num_additional);
  }
  __syncthreads();
  if (w.empty) return;
  w.fill_tables(threadIdx.x, kThreads);
  fill_row_offsets<BN>(rel_k, tl.walk_shift, g, p.sk);
  fill_row_offsets<BN>(rel_v, tl.walk_shift, g, p.sv);
  fill_axis_windows(win, BM, w.fixed_start, tl.fixed_shift, w, threadIdx.x, kThreads);

  const Element* q_base = static_cast<const Element*>(p.q) + b * p.sq.batch + h * p.sq.head;
  const Element* k_base = static_cast<const Element*>(p.k) + b * p.sk.batch + hk * p.sk.head;
  const Element* v_base = static_cast<const Element*>(p.v) + b * p.sv.batch + hk * p.sv.head;
  const Element* ka_base = static_cast<const Element*>(p.ka) + b * p.ska.batch + hk * p.ska.head;
  const Element* va_base = static_cast<const Element*>(p.va) + b * p.sva.batch + hk * p.sva.head;
  const int D = int(g.head_dim), Dv = int(g.head_dim_v);

  int q_count[3];
  w.rows_left(w.fixed_start, q_count);
  load_own_box<HD, BM, kThreads>(sQ, q_base, w.fixed_start, w.group, tl.fixed_shift, q_count, g, p.sq, D);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();  // Q, tables and windows visible
  const float c = fold_scale_sign<BM * HD, kThreads>(sQ, g.scale);
  if (threadIdx.x == 0) w.start_ring();

  const KvSource<Element> kv{k_base, v_base, ka_base, va_base, &p.sk, &p.sv, p.ska.axis[0], p.sva.axis[0], rel_k, rel_v};
  auto load_kv = [&](const Step& st, int buf) {
    load_walked_kv<HD, BN, kThreads>(sK + buf * Tr::kWalk, sV + buf * Tr::kWalk, st, w, tl, g, kv);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = warp * 16 * MI;

  float o[MI][OI][4];
  float row_ref[MI][2], row_sum[MI][2];  // reference max (log2 units) and sum of weights
  zero(o);
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
    row_ref[mi][0] = row_ref[mi][1] = -INFINITY;
    row_sum[mi][0] = row_sum[mi][1] = 0.f;
  }

  // Walk steps rotate through w.ring (see ring_next). This barrier orders the sign fold of Q and
  // the first steps before any read.
  __syncthreads();
  if (w.ring[0].valid) load_kv(w.ring[0], 0);
  cp_async_commit();

  for (int slot = 0, buf = 0; w.ring[slot].valid; slot = ring_next(slot), buf ^= 1) {
    cp_async_wait<0>();
    __syncthreads();  // this step's tile landed in `buf`; everyone is done with the other buffer
    const int slot1 = ring_next(slot), slot2 = ring_next(slot1);
    if (w.ring[slot1].valid) load_kv(w.ring[slot1], buf ^ 1);
    cp_async_commit();
    if (threadIdx.x == 0) w.ring[slot2] = w.advance();
    const Step& st = w.ring[slot];

    float s[MI][NI][4];
    zero(s);
    gemm_abT<Element, HD, MI, NI>(s, sQ, row0, sK + buf * Tr::kWalk);
    if (!st.full) mask_walked_keys<BN>(s, st, w, g.num_additional, win, BM, tl, row0, lane);

    // Online softmax in the log2 domain, the scale folded into one FFMA per score; rows
    // (mi, hr) live in the 4 lanes of a quad. A row's reference max only moves (rescaling O
    // and the sum) when a tile's max exceeds it by more than 2^kSlack, and only if some row of
    // the warp needs it: weights then reach at most 2^kSlack, harmless in fp32 and bf16/fp16,
    // and the result is the same softmax (numerator and denominator share the reference).
    constexpr float kSlack = 8.f;
    float tile_max[MI][2];
    bool move = false;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        float mx = -INFINITY;
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mx = fmaxf(mx, fmaxf(s[mi][ni][2 * hr], s[mi][ni][2 * hr + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        tile_max[mi][hr] = mx * c;
        move |= tile_max[mi][hr] > row_ref[mi][hr] + kSlack;
      }
    if (__any_sync(0xffffffffu, move)) {
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const float ref = fmaxf(row_ref[mi][hr], tile_max[mi][hr]);
          const float corr = ref == -INFINITY ? 1.f : fast_exp2(row_ref[mi][hr] - ref);
          row_ref[mi][hr] = ref;
          row_sum[mi][hr] *= corr;
#pragma unroll
          for (int oi = 0; oi < OI; ++oi) { o[mi][oi][2 * hr] *= corr; o[mi][oi][2 * hr + 1] *= corr; }
        }
    }
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const float m = row_ref[mi][hr] == -INFINITY ? 0.f : row_ref[mi][hr];
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
          s[mi][ni][2 * hr] = fast_exp2(fmaf(s[mi][ni][2 * hr], c, -m));
          s[mi][ni][2 * hr + 1] = fast_exp2(fmaf(s[mi][ni][2 * hr + 1], c, -m));
          row_sum[mi][hr] += s[mi][ni][2 * hr] + s[mi][ni][2 * hr + 1];
        }
      }
    uint32_t pf[MI][BN / 16][4];
    pack_a<Element>(s, pf);
    gemm_pv<Element, HD, MI, BN>(o, pf, sV + buf * Tr::kWalk);
  }

  // Epilogue: normalise, store O rows (pairs of elements) and the logsumexp.
  Element* o_base = static_cast<Element*>(p.out) + b * p.so.batch + h * p.so.head;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float sum = row_sum[mi][hr];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int r = row0 + mi * 16 + hr * 8 + lane / 4;
      if (!row_inside(r, tl.fixed_shift, q_count)) continue;
      int pos[3];
      box_position(r, tl.fixed_shift, w.fixed_start, pos);
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      Element* dst = o_base + token_offset(pos, w.group, g, p.so);
#pragma unroll
      for (int oi = 0; oi < OI; ++oi) {
        const int col = oi * 8 + 2 * (lane % 4);
        if (col < Dv)
          *reinterpret_cast<uint32_t*>(dst + col) = Mma<Element>::pack(o[mi][oi][2 * hr] * inv, o[mi][oi][2 * hr + 1] * inv);
      }
      if (p.lse != nullptr && lane % 4 == 0) {
        const float m = row_ref[mi][hr] == -INFINITY ? 0.f : row_ref[mi][hr];
        p.lse[b * p.slse.batch + h * p.slse.head + token_offset(pos, w.group, g, p.slse)] = (m + log2f(sum)) * float(M_LN2);
      }
    }
}

}  // namespace nattn::cuda::sm80
