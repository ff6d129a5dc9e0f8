// Layer: cuda/sm90 kernel. Fused neighborhood-attention backward for Hopper, dQ (the
// query-stationary kernel, the forward's walk): one CTA owns a box of BM = 128 query positions
// of one (batch, head, dilation group) and walks the key boxes covering its queries' windows:
//   S = Q K^T, P = exp2(c S - lse2), dP = dO V^T, dS = P (dP - Delta), dQ += dS K
// (times the scale at the store), dS feeding dQ's product from registers (RS-wgmma). lse and
// Delta are per row, held in registers. Each dQ row is written once: deterministic. Additional
// keys follow the neighborhood boxes as extra steps (64 of them per step, loaded from their own
// tensor maps; the last step's columns past Na masked), as in the forward.
// Warp-specialised as the dK/dV kernel: thread 0 of warpgroup 0 loads Q and dO once and the K
// and V boxes per step (kernel/backward_producer.cuh); warpgroups 1-2 hold 64 query rows each.
#pragma once
#include <cuda_runtime.h>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include <cmath>

#include "cuda/common/box_index.h"
#include "cuda/common/fragment/epilogue.cuh"
#include "cuda/common/fragment/mask.cuh"
#include "cuda/common/fragment/softmax.cuh"
#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/backward_producer.cuh"
#include "cuda/sm90/kernel/backward_traits.cuh"
#include "cuda/sm90/kernel/pieces.cuh"

namespace nattn::cuda::sm90 {

// One own query box (walk w, query head h, batch b; win: its queries' windows per axis) of the
// consumer warpgroups. cs: the stage ring's cursor and the own boxes' phase, which the persistent
// variant's items run on (Tr::kPersistent: the item's end marker and own boxes are released
// here, before the epilogue, so the next item's loads overlap it).
template <class Tr>
__device__ __forceinline__ void dq_consume(typename Tr::SharedStorage& ss, const TileWalk& w, const int2* win,
                                           const BackwardArgs& args, int b, int h, ConsumerCursors<Tr::kStages>& cs) {
  using namespace cute;
  using Element = typename Tr::Element;
  using Out = GlobalElement<Element>;
  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  constexpr int BN = Tr::BN, HD = Tr::HD, NI = BN / 8, OI = HD / 8;
  const BackwardParams& p = args.p;
  const Geometry& g = p.g;
  const Tiling& tl = args.tl;
  const int ctid = int(threadIdx.x) - 128;  // 0..255 over the consumer warpgroups
  const int lane = ctid % 32;
  const int row0 = (ctid / 128) * 64 + ((ctid % 128) / 32) * 16;  // this warp's first query row

  Tensor sQ = make_tensor(make_smem_ptr(ss.own_a), typename Tr::SmemOwn{});
  Tensor sDo = make_tensor(make_smem_ptr(ss.own_b), typename Tr::SmemOwn{});
  Tensor sK = make_tensor(make_smem_ptr(ss.walk_a), typename Tr::SmemWalk{});
  Tensor sV = make_tensor(make_smem_ptr(ss.walk_b), typename Tr::SmemWalk{});
  Tensor sKt = make_tensor(make_smem_ptr(ss.walk_a), typename Tr::SmemWalkT{});
  typename Tr::MmaS mma_s;
  typename Tr::MmaG mma_q;
  auto thr_s = mma_s.get_thread_slice(ctid);
  auto thr_q = mma_q.get_thread_slice(ctid);
  Tensor tSrQ = thr_s.partition_fragment_A(sQ);
  Tensor tSrDo = thr_s.partition_fragment_A(sDo);
  Tensor tSrK = thr_s.partition_fragment_B(sK);
  Tensor tSrV = thr_s.partition_fragment_B(sV);
  Tensor tQrKt = thr_q.partition_fragment_B(sKt);
  Tensor tQrDq = partition_fragment_C(mma_q, Shape<Int<Tr::BM>, Int<HD>>{});
  clear(tQrDq);
  static_assert(decltype(size(tQrDq))::value == OI * 4, "dQ fragment: one m16n8 accumulator row pair per n8 block");
  Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<Tr::BM>, Int<BN>>{});
  Tensor tSrDp = partition_fragment_C(mma_s, Shape<Int<Tr::BM>, Int<BN>>{});
  static_assert(decltype(size(tSrS))::value == NI * 4, "S fragment: one m16n8 accumulator row pair per n8 block");
  Tensor rDs = make_tensor_like<Element>(tSrS);
  Tensor tQrDs = make_tensor(rDs.data(), accumulator_as_a(tSrS.layout()));
  float(&s)[1][NI][4] = *reinterpret_cast<float(*)[1][NI][4]>(raw_pointer_cast(tSrS.data()));
  float(&dp)[1][NI][4] = *reinterpret_cast<float(*)[1][NI][4]>(raw_pointer_cast(tSrDp.data()));

  // This thread's two rows (row0 + lane / 4 and 8 below): lse in the log2 domain (+inf past the
  // query box; the pre-pass's row workspace has +inf for queries without keys, so P = 0 there)
  // and Delta.
  float lse2[2], delta[2];
  {
    int count[3];
    w.own_rows_left(w.own_start, count);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = row0 + hr * 8 + lane / 4;
      lse2[hr] = INFINITY;
      delta[hr] = 0.f;
      if (!row_inside(r, tl.own_shift, count)) continue;
      int pos[3];
      box_position(r, tl.own_shift, w.own_start, pos);
      const float* row = pre_pass_row(p, b, h, pos, w.own_off);
      lse2[hr] = row[0];
      delta[hr] = row[1];
    }
  }

  TxBarrier::wait(&ss.own_full, cs.own_phase);
  // The scale is folded into exp2: a non-positive scale is applied to Q exactly (dQ takes the
  // signed scale at the store).
  const float c = fold_scale_sign<Tr::kOwnElems, 256>(ss.own_a, g.scale, ctid);
  if (g.scale <= 0.f) {
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes before wgmma reads
    cutlass::arch::NamedBarrier::sync(256, 1);
  }

  // With args.dq_overlap a step's dQ product (dQ += dS K) is left running while the next step's
  // S and dP products issue: the warpgroup waits for it only with the next S (wgmma groups
  // complete in order), then releases its stage. dS's registers (its A operand) are rewritten
  // only after that wait. Without it every step ends waiting for its dQ product.
  StageCursor<Tr::kStages>& at = cs.at;
  int held = -1;  // the stage that still feeds a dQ product in flight, or -1
  for (;;) {
    TxBarrier::wait(&ss.full[at.stage], at.phase);
    const Step st = ss.steps[at.stage];
    if (!st.valid) break;
    wgmma<true>(mma_s, tSrQ, tSrK(_, _, _, at.stage), tSrS);
    wgmma<true>(mma_s, tSrDo, tSrV(_, _, _, at.stage), tSrDp);
    warpgroup_wait<1>();  // S is done (and the previous step's dQ product, issued before it)
    warpgroup_fence_operand(tSrS);
    warpgroup_fence_operand(rDs);
    if (held >= 0) {
      Barrier::arrive(&ss.empty[held]);
      held = -1;
    }
    if (!st.full) mask_walked_keys<BN>(s, st, w, g.num_additional, win, Tr::BM, tl, row0, lane);
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[0][ni][e] = fast_exp2(fmaf(s[0][ni][e], c, -lse2[e / 2]));
    warpgroup_wait<0>();  // dP is done
    warpgroup_fence_operand(tSrDp);
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[0][ni][e] *= dp[0][ni][e] - delta[e / 2];
#pragma unroll
    for (int i = 0; i < size(tSrS); ++i) rDs(i) = Element(tSrS(i));
    wgmma<false>(mma_q, tQrDs, tQrKt(_, _, _, at.stage), tQrDq);
    warpgroup_fence_operand(rDs);
    if (args.dq_overlap) {
      held = at.stage;
    } else {
      warpgroup_wait<0>();
      Barrier::arrive(&ss.empty[at.stage]);
    }
    at.next();
  }
  warpgroup_wait<0>();
  warpgroup_fence_operand(tQrDq);
  if (held >= 0) Barrier::arrive(&ss.empty[held]);
  if constexpr (Tr::kPersistent) {
    // The end marker's stage, then the own boxes (every product reading them is done; the
    // epilogue reads registers) go back to the producer, which loads the next item's meanwhile.
    Barrier::arrive(&ss.empty[at.stage]);
    at.next();
    Barrier::arrive(&ss.own_empty);
    cs.own_phase ^= 1;
  }

  // Epilogue: each own query row's dQ (scaled), written once.
  float(&dq)[1][OI][4] = *reinterpret_cast<float(*)[1][OI][4]>(raw_pointer_cast(tQrDq.data()));
  int own_count[3];
  w.own_rows_left(w.own_start, own_count);
  Out* dq_out = static_cast<Out*>(p.dq) + b * p.sdq.batch + h * p.sdq.head;
  float factor[1][2];
  fill_factor(factor, g.scale);
  store_rows<Out>(dq, factor, row0, lane, int(g.head_dim), [&](int r) -> Out* {
    if (!row_inside(r, tl.own_shift, own_count)) return nullptr;
    int pos[3];
    box_position(r, tl.own_shift, w.own_start, pos);
    return dq_out + token_offset(pos, w.own_off, g, p.sdq);
  });
}

// Grid: (own query boxes over every dilation group, query heads, batch).
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks)
    fna_backward_dq_kernel(const __grid_constant__ BackwardArgs args) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_raw);
  const Geometry& g = args.p.g;
  const int h = int(blockIdx.y), b = int(blockIdx.z);
  const int hk = h / int(g.heads_q / g.heads_kv);
  // A query box past its group's end: nothing to write. The additional keys (every query
  // attends them) follow the neighborhood boxes as extra walk steps.
  if (!start_backward<Tr>(ss, args, blockIdx.x, false, 1, b, h, int(g.heads_q), hk, int(g.heads_kv), g.num_additional))
    return;
  // The own queries' windows per axis (masks of partial key boxes).
  fill_axis_windows(&ss.win[0][0], Tr::BM, ss.walk.own_start, args.tl.own_shift, ss.walk, int(threadIdx.x),
                    Tr::kThreads);
  __syncthreads();
  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Tr::kProducerRegs>();
    if (threadIdx.x == 0) produce_backward<Tr>(ss, args, b, hk, int(g.heads_kv));
  } else {
    cutlass::arch::warpgroup_reg_alloc<Tr::kConsumerRegs>();
    ConsumerCursors<Tr::kStages> cs;
    dq_consume<Tr>(ss, ss.walk, &ss.win[0][0], args, b, h, cs);
  }
}

// The persistent variant (Tr::kPersistent; opt-in, NATTN_SM90_BWD_PERSISTENT=1: device/family.cu):
// work items own query boxes over every dilation group, then query heads, then batch; a CTA runs
// items blockIdx.x, + gridDim.x, ... (kernel/backward_producer.cuh). The additional keys follow
// each item's neighborhood boxes as extra walk steps; producer warps 1-3 fill the item's own
// queries' windows with its walk.
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    fna_backward_dq_persistent_kernel(const __grid_constant__ BackwardArgs args) {
  static_assert(Tr::kPersistent, "the persistent variant's traits");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_raw);
  const Geometry& g = args.p.g;
  const int hpk = int(g.heads_q / g.heads_kv);
  run_backward_roles<Tr>(
      ss,
      [&] { produce_backward_items<Tr>(ss, args, int(g.heads_q), [&](int h) { return h / hpk; }, int(g.heads_kv)); },
      [&] {
        prepare_backward_items<Tr>(ss, args, false, 1, g.num_additional, [&](typename Tr::Item& it, int t) {
          fill_axis_windows(&it.win[0][0], Tr::BM, it.walk.own_start, args.tl.own_shift, it.walk, t, 96);
        });
      },
      [&] {
        consume_backward_items<Tr>(ss, args, [&](const typename Tr::Item& it, ConsumerCursors<Tr::kStages>& cs) {
          dq_consume<Tr>(ss, it.walk, &it.win[0][0], args, it.b, it.head, cs);
        });
      });
}

}  // namespace nattn::cuda::sm90
