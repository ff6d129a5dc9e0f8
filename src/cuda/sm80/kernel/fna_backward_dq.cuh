// Layer: cuda/sm80 kernel. Fused backward, dQ: one CTA = one box of BM query positions of one
// (batch, head, dilation group), walking the same key boxes as the forward (neighborhood
// boxes, then additional-key tiles). Per key tile it recomputes P = exp(scale Q K^T - lse)
// (masked on partial boxes), dP = dO V^T, dS = P (dP - Delta) and accumulates dQ += dS K in
// registers; dQ is written once, so the result is deterministic without atomics.
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
__global__ void __launch_bounds__(Tr::kThreads) fna_backward_dq_kernel(const BackwardParams p, const Tiling tl) {
  using Element = typename Tr::Element;
  constexpr int HD = Tr::HD, BM = Tr::BM, BN = Tr::BN, MI = Tr::MI, NI = Tr::NI, OI = Tr::OI;
  constexpr int kThreads = Tr::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::DqStorage*>(smem_raw);
  Element* sQ = ss.q;
  Element* sdO = ss.dout;
  Element* sK = ss.k[0];  // [2][BN * HD]
  Element* sV = ss.v[0];  // [2][BN * HD]
  int64_t* rel_k = ss.rel_k;
  int64_t* rel_v = ss.rel_v;
  int2* win = ss.win[0];  // [3][BM]
  float* s_lse = ss.lse;
  float* s_delta = ss.delta;

  const Geometry& g = p.g;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int64_t hk = h / (g.heads_q / g.heads_kv);
  TileWalk& w = ss.walk;
  if (threadIdx.x == 0) {
    w.init(g, tl, blockIdx.x, false, int((g.num_additional + BN - 1) / BN), BN);
    w.begin(1, g.num_additional);
  }
  __syncthreads();
  if (w.empty) return;
  w.fill_tables(threadIdx.x, kThreads);
  fill_row_offsets<BN>(rel_k, tl.walk_shift, g, p.sk);
  fill_row_offsets<BN>(rel_v, tl.walk_shift, g, p.sv);
  fill_axis_windows(win, BM, w.own_start, tl.own_shift, w, threadIdx.x, kThreads);

  const Element* q_base = static_cast<const Element*>(p.q) + b * p.sq.batch + h * p.sq.head;
  const Element* do_base = static_cast<const Element*>(p.dout) + b * p.sdo.batch + h * p.sdo.head;
  const int D = int(g.head_dim), Dv = int(g.head_dim_v);
  int q_count[3];
  w.own_rows_left(w.own_start, q_count);
  load_own_box<HD, BM, kThreads>(sQ, q_base, w.own_start, w.own_off, tl.own_shift, q_count, g, p.sq, D);
  load_own_box<HD, BM, kThreads>(sdO, do_base, w.own_start, w.own_off, tl.own_shift, q_count, g, p.sdo, Dv);
  cp_async_commit();
  if (threadIdx.x < BM) {
    const int r = threadIdx.x;
    float lse2 = 0.f, delta = 0.f;
    if (row_inside(r, tl.own_shift, q_count)) {
      int pos[3];
      box_position(r, tl.own_shift, w.own_start, pos);
      // The pre-pass's row: lse in the log2 domain (+inf for a query without keys, placed boxes:
      // every exp2(s c - lse2) is 0 then, masked scores included) and Delta.
      const float* row = pre_pass_row(p, b, h, pos, w.own_off);
      lse2 = row[0];
      delta = row[1];
    }
    s_lse[r] = lse2;
    s_delta[r] = delta;
  }
  cp_async_wait<0>();
  __syncthreads();
  const float c = fold_scale_sign<BM * HD, kThreads>(sQ, g.scale);
  if (threadIdx.x == 0) w.start_ring();
  __syncthreads();  // the sign fold of Q and the first walk steps

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = warp * 16 * MI;
  float row_lse[MI][2], row_delta[MI][2];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      row_lse[mi][hr] = s_lse[row0 + mi * 16 + hr * 8 + lane / 4];
      row_delta[mi][hr] = s_delta[row0 + mi * 16 + hr * 8 + lane / 4];
    }

  const Element* k_base = static_cast<const Element*>(p.k) + b * p.sk.batch + hk * p.sk.head;
  const Element* v_base = static_cast<const Element*>(p.v) + b * p.sv.batch + hk * p.sv.head;
  const Element* ka_base = static_cast<const Element*>(p.ka) + b * p.ska.batch + hk * p.ska.head;
  const Element* va_base = static_cast<const Element*>(p.va) + b * p.sva.batch + hk * p.sva.head;
  const KvSource<Element> kv{k_base, v_base,        ka_base,       va_base, &p.sk,
                             &p.sv,  p.ska.axis[0], p.sva.axis[0], rel_k,   rel_v};

  float dq[MI][OI][4];
  zero(dq);
  // Walk steps rotate through w.ring (run_walk).
  auto load_kv = [&](const Step& st, int buf) {
    load_walked_kv<HD, BN, kThreads>(sK + buf * Tr::kWalk, sV + buf * Tr::kWalk, st, w, tl, g, kv);
  };
  run_walk(w, load_kv, [&](const Step& st, int buf) {
    const Element* k = sK + buf * Tr::kWalk;
    const Element* v = sV + buf * Tr::kWalk;
    float s[MI][NI][4], dp[MI][NI][4];
    zero(s);
    gemm_abT<Element, HD, MI, NI>(s, sQ, row0, k);
    if (!st.full) mask_walked_keys<BN>(s, st, w, g.num_additional, win, BM, tl, row0, lane);
    zero(dp);
    gemm_abT<Element, HD, MI, NI>(dp, sdO, row0, v);
    // dS = P (dP - Delta), P recomputed from the forward's logsumexp.
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pr = fast_exp2(fmaf(s[mi][ni][e], c, -row_lse[mi][e / 2]));
          s[mi][ni][e] = pr * (dp[mi][ni][e] - row_delta[mi][e / 2]);
        }
    uint32_t dsf[MI][BN / 16][4];
    pack_a<Element>(s, dsf);
    gemm_pv<Element, HD, MI, BN>(dq, dsf, k);
  });

  Element* dq_base = static_cast<Element*>(p.dq) + b * p.sdq.batch + h * p.sdq.head;
  float scale[MI][2];
  fill_factor(scale, g.scale);
  store_rows<Element>(dq, scale, row0, lane, D, [&](int r) -> Element* {
    if (!row_inside(r, tl.own_shift, q_count)) return nullptr;
    int pos[3];
    box_position(r, tl.own_shift, w.own_start, pos);
    return dq_base + token_offset(pos, w.own_off, g, p.sdq);
  });
}

}  // namespace nattn::cuda::sm80
