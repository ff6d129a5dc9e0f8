// Layer: cuda/sm80 kernel. Fused neighborhood-attention forward (FlashAttention-2 style):
// one CTA = one box of BM query positions of one (batch, head, dilation group); it walks the
// key boxes covering its queries' windows (TileWalk), computing S = Q K^T on tensor cores,
// masking only partial boxes along their partial axes, an online softmax in registers and
// O += P V. Each warp owns 16*MI query rows. K/V tiles are double-buffered (run_walk): tile
// t+1 streams in while tile t is computed, with one barrier per tile.
#pragma once
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

#include "cuda/common/fragment/forward_epilogue.cuh"
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
  fill_axis_windows(win, BM, w.own_start, tl.own_shift, w, threadIdx.x, kThreads);

  const Element* q_base = static_cast<const Element*>(p.q) + b * p.sq.batch + h * p.sq.head;
  const Element* k_base = static_cast<const Element*>(p.k) + b * p.sk.batch + hk * p.sk.head;
  const Element* v_base = static_cast<const Element*>(p.v) + b * p.sv.batch + hk * p.sv.head;
  const Element* ka_base = static_cast<const Element*>(p.ka) + b * p.ska.batch + hk * p.ska.head;
  const Element* va_base = static_cast<const Element*>(p.va) + b * p.sva.batch + hk * p.sva.head;
  const int D = int(g.head_dim);

  // Own rows: the query box's positions of the group; own_off turns them into rows of q/out/lse.
  int q_count[3];
  w.own_rows_left(w.own_start, q_count);
  load_own_box<HD, BM, kThreads>(sQ, q_base, w.own_start, w.own_off, tl.own_shift, q_count, g, p.sq, D);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();  // Q, tables and windows visible
  const float c = fold_scale_sign<BM * HD, kThreads>(sQ, g.scale);
  if (threadIdx.x == 0) w.start_ring();

  const KvSource<Element> kv{k_base, v_base,        ka_base,       va_base, &p.sk,
                             &p.sv,  p.ska.axis[0], p.sva.axis[0], rel_k,   rel_v};
  auto load_kv = [&](const Step& st, int buf) {
    load_walked_kv<HD, BN, kThreads>(sK + buf * Tr::kWalk, sV + buf * Tr::kWalk, st, w, tl, g, kv);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = warp * 16 * MI;

  float o[MI][OI][4];
  zero(o);
  OnlineSoftmax<MI> softmax;
  softmax.init();

  // This barrier orders the sign fold of Q and the first walk steps before any read.
  __syncthreads();
  run_walk(w, load_kv, [&](const Step& st, int buf) {
    float s[MI][NI][4];
    zero(s);
    gemm_abT<Element, HD, MI, NI>(s, sQ, row0, sK + buf * Tr::kWalk);
    if (!st.full) mask_walked_keys<BN>(s, st, w, g.num_additional, win, BM, tl, row0, lane);
    softmax.weigh(s, c, o);
    uint32_t pf[MI][BN / 16][4];
    pack_a<Element>(s, pf);
    gemm_pv<Element, HD, MI, BN>(o, pf, sV + buf * Tr::kWalk);
  });

  // Epilogue: O normalised by each row's total weight, and the logsumexp.
  store_forward_rows<Element>(o, softmax, w, q_count, tl, p, b, h, row0, lane);
}

}  // namespace nattn::cuda::sm80
