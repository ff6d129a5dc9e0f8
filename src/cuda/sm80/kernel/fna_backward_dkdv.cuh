// Layer: cuda/sm80 kernel. Fused backward, dK and dV: one CTA = one box of BM key positions of
// one (batch, kv head, dilation group), or one tile of BM additional keys. It walks the query
// boxes covering the queries whose windows contain its keys (tiles::query_box; every query
// in token order for additional keys), for every query head sharing the kv head, and works in
// the transposed orientation, keys as rows:
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T (dP^T - Delta), dK += scale dS^T Q,
// so P^T and dS^T feed the next products straight from registers (as P does in the forward)
// and lse / Delta are per column. Each dK/dV row is written once: deterministic, no atomics.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/common/fragment/epilogue.cuh"
#include "cuda/common/fragment/mask.cuh"
#include "cuda/common/fragment/softmax.cuh"
#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"
#include "cuda/sm80/collective/box_rows.cuh"
#include "cuda/sm80/collective/smem_tile.cuh"
#include "cuda/sm80/collective/walk_pipeline.cuh"
#include "cuda/sm80/collective/warp_mma.cuh"
#include "cuda/sm80/kernel/traits.cuh"

namespace nattn::cuda::sm80 {

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads) fna_backward_dkdv_kernel(const BackwardParams p, const Tiling tl) {
  using Element = typename Tr::Element;
  constexpr int HD = Tr::HD, BM = Tr::BM, BN = Tr::BN, MI = Tr::MI, NI = Tr::NI, OI = Tr::OI;
  constexpr int kThreads = Tr::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::DkdvStorage*>(smem_raw);
  Element* sK = ss.k;
  Element* sV = ss.v;
  Element* sQ = ss.q[0];      // [2][BN * HD]
  Element* sdO = ss.dout[0];  // [2][BN * HD]
  int64_t* rel_q = ss.rel_q;
  int64_t* rel_do = ss.rel_dout;
  int2* win = ss.win[0][0];      // [2][3][BN]
  float* s_lse = ss.lse[0];      // [2][BN], log2 domain
  float* s_delta = ss.delta[0];  // [2][BN]

  const Geometry& g = p.g;
  const int hk = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int group_heads = int(g.heads_q / g.heads_kv);
  const bool additional = blockIdx.x >= tl.neighborhood_ctas;
  const int64_t j0 = additional ? (int64_t(blockIdx.x) - tl.neighborhood_ctas) * BM : 0;
  TileWalk& w = ss.walk;
  if (threadIdx.x == 0) {
    // Additional keys are attended by every query: walk all of them in token order.
    if (additional)
      w.init_extra_only(int((g.tokens + BN - 1) / BN), BN);
    else
      w.init(g, tl, blockIdx.x, true, 0, BN);
    w.begin(group_heads, INT64_MAX);  // extra tiles here are never masked
  }
  __syncthreads();
  if (w.empty) return;
  if (!additional) w.fill_tables(threadIdx.x, kThreads);
  fill_row_offsets<BN>(rel_q, tl.walk_shift, g, p.sq);
  fill_row_offsets<BN>(rel_do, tl.walk_shift, g, p.sdo);
  // The CTA's own K and V rows.
  const int D = int(g.head_dim), Dv = int(g.head_dim_v);
  const Element* k_base = static_cast<const Element*>(p.k) + b * p.sk.batch + hk * p.sk.head;
  const Element* v_base = static_cast<const Element*>(p.v) + b * p.sv.batch + hk * p.sv.head;
  int own_count[3] = {1, 1, 1};
  if (additional) {
    const Element* ka = static_cast<const Element*>(p.ka) + b * p.ska.batch + hk * p.ska.head;
    const Element* va = static_cast<const Element*>(p.va) + b * p.sva.batch + hk * p.sva.head;
    load_rows<HD, BM, kThreads>(
        sK,
        [&](int r) -> const Element* { return j0 + r < g.num_additional ? ka + (j0 + r) * p.ska.axis[0] : nullptr; }, D,
        k_base);
    load_rows<HD, BM, kThreads>(
        sV,
        [&](int r) -> const Element* { return j0 + r < g.num_additional ? va + (j0 + r) * p.sva.axis[0] : nullptr; },
        Dv, v_base);
  } else {
    // Own rows: the key box's positions of the group; own_off turns them into rows of k/v/dk/dv.
    w.own_rows_left(w.own_start, own_count);
    load_own_box<HD, BM, kThreads>(sK, k_base, w.own_start, w.own_off, tl.own_shift, own_count, g, p.sk, D);
    load_own_box<HD, BM, kThreads>(sV, v_base, w.own_start, w.own_off, tl.own_shift, own_count, g, p.sv, Dv);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();  // K, V, tables visible
  const float c = fold_scale_sign<BM * HD, kThreads>(sK, g.scale);
  if (threadIdx.x == 0) w.start_ring();

  // Loads a walk step (query head, walked box) into buffer `buf`: Q and dO rows, each query's lse
  // (log2 domain; +inf past the grid, so such a column contributes nothing) and Delta, and
  // on partial boxes each query's window per axis.
  auto load_step = [&](const Step& st, int buf) {
    const int64_t h = int64_t(hk) * group_heads + st.head;
    const Element* q_h = static_cast<const Element*>(p.q) + b * p.sq.batch + h * p.sq.head;
    const Element* do_h = static_cast<const Element*>(p.dout) + b * p.sdo.batch + h * p.sdo.head;
    // The pre-pass's rows of head h: lse in the log2 domain (+inf for a query without keys,
    // placed boxes: it contributes nothing) and Delta.
    const float* rows_h = p.rows + b * p.srows.batch + h * p.srows.head;
    Element* dq = sQ + buf * Tr::kWalk;
    Element* ddo = sdO + buf * Tr::kWalk;
    float lse2 = INFINITY, delta = 0.f;
    if (additional) {
      const int64_t n0 = int64_t(st.tile) * BN;
      load_rows<HD, BN, kThreads>(
          dq,
          [&](int r) -> const Element* {
            return n0 + r < g.tokens ? q_h + flat_token_offset(n0 + r, g, p.sq) : nullptr;
          },
          D, q_h);
      load_rows<HD, BN, kThreads>(
          ddo,
          [&](int r) -> const Element* {
            return n0 + r < g.tokens ? do_h + flat_token_offset(n0 + r, g, p.sdo) : nullptr;
          },
          Dv, do_h);
      if (threadIdx.x < BN && n0 + threadIdx.x < g.tokens) {
        const float* row = rows_h + flat_token_offset(n0 + threadIdx.x, g, p.srows);
        lse2 = row[0];
        delta = row[1];
      }
    } else {
      int start[3], count[3];
#pragma unroll
      for (int a = 0; a < 3; ++a) start[a] = st.start[a];
      w.walk_rows_left(start, count);  // (placed: rows past the query box get lse = +inf)
      load_box<HD, BN, kThreads>(dq, q_h + token_offset(start, w.walk_off, g, p.sq), rel_q, tl.walk_shift, count, D);
      load_box<HD, BN, kThreads>(ddo, do_h + token_offset(start, w.walk_off, g, p.sdo), rel_do, tl.walk_shift, count,
                                 Dv);
      if (threadIdx.x < BN && row_inside(threadIdx.x, tl.walk_shift, count)) {
        int pos[3];
        box_position(threadIdx.x, tl.walk_shift, start, pos);
        const float* row = rows_h + token_offset(pos, w.walk_off, g, p.srows);
        lse2 = row[0];
        delta = row[1];
      }
      if (!st.full) fill_axis_windows(win + buf * 3 * BN, BN, start, tl.walk_shift, w, threadIdx.x, kThreads);
    }
    if (threadIdx.x < BN) {
      s_lse[buf * BN + threadIdx.x] = lse2;
      s_delta[buf * BN + threadIdx.x] = delta;
    }
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = warp * 16 * MI;
  float dk[MI][OI][4], dv[MI][OI][4];
  zero(dk);
  zero(dv);

  // Walk steps rotate through w.ring (run_walk).
  __syncthreads();  // the sign fold of K and the first walk steps
  run_walk(w, load_step, [&](const Step& st, int buf) {
    const Element* q = sQ + buf * Tr::kWalk;
    const Element* dout = sdO + buf * Tr::kWalk;
    const float* lse2 = s_lse + buf * BN;
    const float* delta = s_delta + buf * BN;

    float s[MI][NI][4];
    zero(s);
    gemm_abT<Element, HD, MI, NI>(s, sK, row0, q);
    if (!st.full)  // (extra tiles are always full: queries past the grid carry lse = +inf)
      mask_rows_are_keys(s, st.partial, win + buf * 3 * BN, BN, tl.own_shift, tl.walk_shift, w.own_start, row0, lane);
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
      const float2 l = *reinterpret_cast<const float2*>(lse2 + ni * 8 + 2 * (lane % 4));
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][ni][e] = fast_exp2(fmaf(s[mi][ni][e], c, -((e & 1) ? l.y : l.x)));
    }
    uint32_t f[MI][BN / 16][4];
    pack_a<Element>(s, f);
    gemm_pv<Element, HD, MI, BN>(dv, f, dout);

    float dp[MI][NI][4];
    zero(dp);
    gemm_abT<Element, HD, MI, NI>(dp, sV, row0, dout);
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
      const float2 d = *reinterpret_cast<const float2*>(delta + ni * 8 + 2 * (lane % 4));
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][ni][e] *= dp[mi][ni][e] - ((e & 1) ? d.y : d.x);
    }
    pack_a<Element>(s, f);
    gemm_pv<Element, HD, MI, BN>(dk, f, q);
  });

  // Epilogue: each own key row's dK (scaled) and dV, written once.
  const int64_t batch_k = b * (additional ? p.sdka.batch : p.sdk.batch) + hk * (additional ? p.sdka.head : p.sdk.head);
  const int64_t batch_v = b * (additional ? p.sdva.batch : p.sdv.batch) + hk * (additional ? p.sdva.head : p.sdv.head);
  Element* dk_out = static_cast<Element*>(additional ? p.dka : p.dk) + batch_k;
  Element* dv_out = static_cast<Element*>(additional ? p.dva : p.dv) + batch_v;
  // Row r's destination in a [B, X.., H, D] gradient (own box) or a [B, Na, H, D] one (additional keys).
  auto row_of = [&](Element* base, const Strides& grid, const Strides& extra) {
    return [&, base, grid, extra](int r) -> Element* {
      if (additional) return j0 + r < g.num_additional ? base + (j0 + r) * extra.axis[0] : nullptr;
      if (!row_inside(r, tl.own_shift, own_count)) return nullptr;
      int pos[3];
      box_position(r, tl.own_shift, w.own_start, pos);
      return base + token_offset(pos, w.own_off, g, grid);
    };
  };
  float factor[MI][2];
  fill_factor(factor, g.scale);
  store_rows<Element>(dk, factor, row0, lane, D, row_of(dk_out, p.sdk, p.sdka));
  fill_factor(factor, 1.f);
  store_rows<Element>(dv, factor, row0, lane, Dv, row_of(dv_out, p.sdv, p.sdva));
}

}  // namespace nattn::cuda::sm80
