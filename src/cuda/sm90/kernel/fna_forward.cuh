// Layer: cuda/sm90 kernel. Fused neighborhood-attention forward for Hopper: one CTA = one box of
// BM = 128 query positions of one (batch, head, dilation group), walking the key boxes that cover
// its queries' windows (TileWalk, as the sm80 family). Warp-specialised:
//   * warpgroup 0 (registers given back with setmaxnreg): one thread steps the walk and issues
//     TMA box loads of Q once and of K and V per walked box straight from the caller's
//     [B, X1, X2, X3, H*D] tensors (out-of-range rows zero-filled by the TMA unit, dilation as
//     TMA element strides), into a ring of stages guarded by mbarriers;
//   * warpgroups 1-2 (64 query rows each): S = Q K^T as SS-wgmma, partial boxes masked along
//     their partial axes only, the online softmax in registers (scale folded into exp2), and
//     O += P V as RS-wgmma with P from registers; then O and the logsumexp are stored.
// wgmma accumulators give each warp the m16n8 layout of mma.sync, so the mask, softmax and
// epilogue are the shared fragment pieces (cuda/common/fragment).
#pragma once
#include <cuda_runtime.h>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include <cmath>

#include "cuda/common/box_index.h"
#include "cuda/common/fragment/epilogue.cuh"
#include "cuda/common/fragment/mask.cuh"
#include "cuda/common/fragment/softmax.cuh"
#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda::sm90 {

template <class Element>
using GlobalElement = std::conditional_t<std::is_same_v<Element, cutlass::bfloat16_t>, __nv_bfloat16, __half>;

// The accumulator layout ((2, 2, N/8), M, N) of S read as the A-operand layout
// ((2, 2, 2), M, N/16) of O += P V: the same registers, 16 key columns per k-slice.
template <class Layout>
__device__ __forceinline__ auto accumulator_as_a(Layout acc) {
  using namespace cute;
  auto l = logical_divide(get<0, 2>(acc), Tile<_2>{});  // ((2, N/16))
  return make_layout(make_layout(get<0, 0>(acc), get<0, 1>(acc), get<0, 0>(l)), get<1>(acc),
                     coalesce(make_layout(get<0, 1>(l), get<2>(acc))));
}

// Warpgroup-wide C (+)= A B over the k-slices of A and B; kZero starts from C = 0.
template <bool kZero, class Mma, class TA, class TB, class TC>
__device__ __forceinline__ void wgmma(Mma& mma, const TA& a, const TB& b, TC& c) {
  using namespace cute;
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  if constexpr (kZero) mma.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
  for (int k = 0; k < size<2>(a); ++k) {
    gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(c);
}

// Element coordinates along (X3, X2, X1) of a box starting at group positions start.
__device__ __forceinline__ void box_coords(const int (&start)[3], const TileWalk& w, const Geometry& g, int (&c)[3]) {
#pragma unroll
  for (int a = 0; a < 3; ++a) c[a] = start[a] * int(g.dilation[a]) + w.group[a];
}

template <class Tr>
__device__ __forceinline__ void produce(typename Tr::SharedStorage& ss, TileWalk& w, const ForwardArgs& args, int b,
                                        int h, int hk) {
  using Element = typename Tr::Element;
  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  constexpr int BM = Tr::BM, BN = Tr::BN, HD = Tr::HD;
  // Q is read by this CTA only; K and V boxes are read again by neighbouring CTAs.
  constexpr uint64_t kOnce = uint64_t(cute::TMA::CacheHintSm90::EVICT_FIRST);
  constexpr uint64_t kShared = uint64_t(cute::TMA::CacheHintSm90::EVICT_LAST);
  const Geometry& g = args.p.g;
  int c[3], c0, c4;
  box_coords(w.own_start, w, g, c);
  TxBarrier::arrive_and_expect_tx(&ss.q_full, BM * HD * sizeof(Element));
#pragma unroll
  for (int pnl = 0; pnl < Tr::kPanels; ++pnl) {
    head_coords(args.heads_inner[0], g.heads_q, g.head_dim, b, h, pnl, c0, c4);
    cute::SM90_TMA_LOAD_5D::copy(&args.tma_q, &ss.q_full, kOnce, ss.q + pnl * BM * 64, c0, c[2], c[1], c[0], c4);
  }
  int stage = 0;
  uint32_t phase = 0;
  for (;;) {
    const Step st = w.advance();
    Barrier::wait(&ss.k_empty[stage], phase ^ 1);  // the first pass over the stages does not wait
    ss.steps[stage] = st;
    if (!st.valid) {
      Barrier::arrive(&ss.k_full[stage]);  // consumers read the end of the walk
      return;
    }
    box_coords(st.start, w, g, c);
    TxBarrier::arrive_and_expect_tx(&ss.k_full[stage], BN * HD * sizeof(Element));
    Element* k = ss.k + stage * BN * HD;
#pragma unroll
    for (int pnl = 0; pnl < Tr::kPanels; ++pnl) {
      head_coords(args.heads_inner[1], g.heads_kv, g.head_dim, b, hk, pnl, c0, c4);
      cute::SM90_TMA_LOAD_5D::copy(&args.tma_k, &ss.k_full[stage], kShared, k + pnl * BN * 64, c0, c[2], c[1], c[0],
                                   c4);
    }
    Barrier::wait(&ss.v_empty[stage], phase ^ 1);
    TxBarrier::arrive_and_expect_tx(&ss.v_full[stage], BN * HD * sizeof(Element));
    Element* v = ss.v + stage * BN * HD;
#pragma unroll
    for (int pnl = 0; pnl < Tr::kPanels; ++pnl) {
      head_coords(args.heads_inner[2], g.heads_kv, g.head_dim, b, hk, pnl, c0, c4);
      cute::SM90_TMA_LOAD_5D::copy(&args.tma_v, &ss.v_full[stage], kShared, v + pnl * BN * 64, c0, c[2], c[1], c[0],
                                   c4);
    }
    if (++stage == Tr::kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
}

// A stage index and its barrier phase, advanced together.
template <int kStages>
struct StageCursor {
  int stage = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void next() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

template <class Tr>
__device__ __forceinline__ void consume(typename Tr::SharedStorage& ss, const TileWalk& w, const ForwardArgs& args,
                                        int b, int h) {
  using namespace cute;
  using Element = typename Tr::Element;
  using Out = GlobalElement<Element>;
  constexpr int BM = Tr::BM, BN = Tr::BN, HD = Tr::HD, NI = BN / 8, OI = HD / 8;
  const ForwardParams& p = args.p;
  const Geometry& g = p.g;
  const Tiling& tl = args.tl;
  const int ctid = int(threadIdx.x) - 128;  // 0..255 over the consumer warpgroups
  const int lane = ctid % 32;
  const int row0 = (ctid / 128) * 64 + ((ctid % 128) / 32) * 16;  // this warp's first query row

  Tensor sQ = make_tensor(make_smem_ptr(ss.q), typename Tr::SmemQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemK{});
  Tensor sVt = make_tensor(make_smem_ptr(ss.v), typename Tr::SmemVt{});
  typename Tr::MmaS mma_s;
  typename Tr::MmaO mma_o;
  auto thr_s = mma_s.get_thread_slice(ctid);
  auto thr_o = mma_o.get_thread_slice(ctid);
  Tensor tSrQ = thr_s.partition_fragment_A(sQ);
  Tensor tSrK = thr_s.partition_fragment_B(sK);
  Tensor tOrV = thr_o.partition_fragment_B(sVt);
  Tensor tOrO = partition_fragment_C(mma_o, Shape<Int<BM>, Int<HD>>{});
  clear(tOrO);
  static_assert(decltype(size(tOrO))::value == OI * 4, "O fragment: one m16n8 accumulator row pair per n8 block");
  float(&o)[1][OI][4] = *reinterpret_cast<float(*)[1][OI][4]>(raw_pointer_cast(tOrO.data()));

  cutlass::arch::ClusterTransactionBarrier::wait(&ss.q_full, 0);
  // The scale is folded into exp2: a non-positive scale is applied to Q exactly (both consumer
  // warpgroups share the Q tile).
  const float c = fold_scale_sign<BM * HD, 256>(ss.q, g.scale, ctid);
  if (g.scale <= 0.f) {
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes before wgmma reads
    cutlass::arch::NamedBarrier::sync(256, 1);
  }

  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  OnlineSoftmax<1> softmax;
  softmax.init();
  // S of the current tile and P of the previous one, in registers.
  Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<BM>, Int<BN>>{});
  Tensor rP = make_tensor_like<Element>(tSrS);
  Tensor tOrP = make_tensor(rP.data(), accumulator_as_a(tSrS.layout()));
  float(&s)[1][NI][4] = *reinterpret_cast<float(*)[1][NI][4]>(raw_pointer_cast(tSrS.data()));
  auto to_p = [&] {
#pragma unroll
    for (int i = 0; i < size(tSrS); ++i) rP(i) = Element(tSrS(i));
  };
  auto mask = [&](const Step& st) {
    if (st.full) return;
    int start[3] = {st.start[0], st.start[1], st.start[2]};
    mask_rows_are_queries(s, st.partial, &ss.win[0][0], BM, tl.own_shift, tl.walk_shift, start, row0, lane);
  };

  // Software pipeline within the warpgroup (FlashAttention-3's intra-warpgroup overlap): tile j's
  // S = Q K_j^T and the previous tile's O += P V_{j-1} are issued back to back; the softmax of S
  // runs while the P V product is still on the tensor cores, and O takes the softmax's rescale
  // once that product is done.
  // Ping-pong rows (Tr::kPingPong; configs.h says where it pays off): the consumer warpgroups
  // (as in FlashAttention-3) take turns issuing their
  // products, so one warpgroup's softmax runs while the other's products hold the tensor cores.
  // Named barrier 2 + w opens warpgroup w's turn; the other warpgroup arrives on it after issuing.
  // Both walk the same steps, so turns pair up; the last pass is left unawaited at exit.
  const int wg = ctid / 128;
  auto take_turn = [&] {
    if constexpr (Tr::kPingPong) cutlass::arch::NamedBarrier::sync(256, 2 + wg);
  };
  auto pass_turn = [&] {
    if constexpr (Tr::kPingPong) cutlass::arch::NamedBarrier::arrive(256, 2 + (wg ^ 1));
  };
  if (wg == 1) pass_turn();  // warpgroup 0 goes first

  StageCursor<Tr::kStages> k_at, v_at;
  TxBarrier::wait(&ss.k_full[k_at.stage], k_at.phase);
  Step st = ss.steps[k_at.stage];
  bool have_p = false;
  if (st.valid) {
    take_turn();
    wgmma<true>(mma_s, tSrQ, tSrK(_, _, _, k_at.stage), tSrS);
    pass_turn();
    warpgroup_wait<0>();
    Barrier::arrive(&ss.k_empty[k_at.stage]);
    mask(st);
    softmax.weigh(s, c, o);
    to_p();
    have_p = true;
    k_at.next();
    for (;;) {
      TxBarrier::wait(&ss.k_full[k_at.stage], k_at.phase);
      st = ss.steps[k_at.stage];
      if (!st.valid) break;
      if constexpr (Tr::kPingPong) {  // take the turn with both operands ready
        TxBarrier::wait(&ss.v_full[v_at.stage], v_at.phase);
        take_turn();
        wgmma<true>(mma_s, tSrQ, tSrK(_, _, _, k_at.stage), tSrS);
        wgmma<false>(mma_o, tOrP, tOrV(_, _, _, v_at.stage), tOrO);
        pass_turn();
      } else {  // S starts while V may still be landing
        wgmma<true>(mma_s, tSrQ, tSrK(_, _, _, k_at.stage), tSrS);
        TxBarrier::wait(&ss.v_full[v_at.stage], v_at.phase);
        wgmma<false>(mma_o, tOrP, tOrV(_, _, _, v_at.stage), tOrO);
      }
      warpgroup_wait<1>();  // S is done; P V may still run
      Barrier::arrive(&ss.k_empty[k_at.stage]);
      mask(st);
      float corr[1][2];
      const bool moved = softmax.weigh_deferred(s, c, corr);
      warpgroup_wait<0>();
      Barrier::arrive(&ss.v_empty[v_at.stage]);
      if (moved) softmax.rescale(o, corr);
      to_p();
      k_at.next();
      v_at.next();
    }
  }
  if (have_p) {
    TxBarrier::wait(&ss.v_full[v_at.stage], v_at.phase);
    take_turn();
    wgmma<false>(mma_o, tOrP, tOrV(_, _, _, v_at.stage), tOrO);
    pass_turn();
    warpgroup_wait<0>();
    Barrier::arrive(&ss.v_empty[v_at.stage]);
  }

  // Epilogue: O normalised by each row's total weight, and the logsumexp.
  float total[1][2], inv[1][2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    total[0][hr] = softmax.row_total(0, hr);
    inv[0][hr] = total[0][hr] > 0.f ? 1.f / total[0][hr] : 0.f;
  }
  int q_count[3];
  w.rows_left(w.own_start, q_count);
  Out* o_base = static_cast<Out*>(p.out) + b * p.so.batch + h * p.so.head;
  store_rows<Out>(o, inv, row0, lane, int(g.head_dim_v), [&](int r) -> Out* {
    if (!row_inside(r, tl.own_shift, q_count)) return nullptr;
    int pos[3];
    box_position(r, tl.own_shift, w.own_start, pos);
    return o_base + token_offset(pos, w.group, g, p.so);
  });
  if (p.lse != nullptr && lane % 4 == 0) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = row0 + hr * 8 + lane / 4;
      if (!row_inside(r, tl.own_shift, q_count)) continue;
      int pos[3];
      box_position(r, tl.own_shift, w.own_start, pos);
      p.lse[b * p.slse.batch + h * p.slse.head + token_offset(pos, w.group, g, p.slse)] =
          softmax.lse(0, hr, total[0][hr]);
    }
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) fna_forward_kernel(const __grid_constant__ ForwardArgs args) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_raw);
  const Geometry& g = args.p.g;
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / int(g.heads_q / g.heads_kv);
  TileWalk& w = ss.walk;
  if (threadIdx.x == 0) {
    w.init(g, args.tl, blockIdx.x, false, 0, Tr::BN);
    w.begin(1, 0);
    cutlass::arch::ClusterTransactionBarrier::init(&ss.q_full, 1);
    for (int s = 0; s < Tr::kStages; ++s) {
      cutlass::arch::ClusterTransactionBarrier::init(&ss.k_full[s], 1);
      cutlass::arch::ClusterTransactionBarrier::init(&ss.v_full[s], 1);
      cutlass::arch::ClusterBarrier::init(&ss.k_empty[s], 128 * Tr::kConsumers);
      cutlass::arch::ClusterBarrier::init(&ss.v_empty[s], 128 * Tr::kConsumers);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  if (w.empty) return;
  w.fill_tables(threadIdx.x, Tr::kThreads);
  fill_axis_windows(&ss.win[0][0], Tr::BM, w.own_start, args.tl.own_shift, w, threadIdx.x, Tr::kThreads);
  __syncthreads();  // tables and windows visible
  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<40>();
    if (threadIdx.x == 0) produce<Tr>(ss, w, args, b, h, hk);
  } else {
    cutlass::arch::warpgroup_reg_alloc<232>();
    consume<Tr>(ss, w, args, b, h);
  }
}

}  // namespace nattn::cuda::sm90
