// Layer: cuda/sm90 kernel. Fused neighborhood-attention backward for Hopper, dK and dV (the
// KV-stationary kernel; dQ comes from its own kernel). One CTA owns a box of BK = 128 key
// positions of one (batch, kv head, dilation group) and walks the query boxes covering the
// queries whose windows contain its keys (TileWalk with walks_queries, as the sm80 dK/dV
// kernel), for every query head sharing the kv head. Keys are rows (transposed orientation):
//   S^T = K Q^T, P^T = exp2(c S^T - lse2), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T (dP^T - Delta), dK += dS^T Q (times the scale at the store),
// so P^T and dS^T feed the gradient products straight from registers (RS-wgmma) and lse and
// Delta are per column. Each dK/dV row is written once: deterministic, no atomics. The
// additional keys' dK/dV is this kernel run once more on a problem of its own (every query
// attends them: cuda/common/additional_keys.h), with the call's lse and Delta.
// Warp-specialised:
//   * warpgroup 0 (registers given back with setmaxnreg): thread 0 issues the TMA loads of the
//     own K and V boxes once and of the walked Q and dO boxes per step (MapMode tensor maps over
//     the caller's tensors, as the forward; kernel/backward_producer.cuh), with the walked
//     queries' lse2 and Delta from the Delta pre-pass's row workspace (BackwardParams::rows);
//   * warpgroups 1-2 (64 key rows each): per step S^T and dP^T as SS-wgmma, the mask (a partial
//     step's query windows computed per warpgroup meanwhile) and the softmax gradient in
//     registers, dV and dK as RS-wgmma; then dK and dV are stored.
#pragma once
#include <cuda_runtime.h>
#include <cute/atom/copy_traits_sm90.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include <cmath>

#include "cuda/common/box_index.h"
#include "cuda/common/fragment/epilogue.cuh"
#include "cuda/common/fragment/mask.cuh"
#include "cuda/common/fragment/softmax.cuh"
#include "cuda/common/ordered_dq.h"
#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/backward_producer.cuh"
#include "cuda/sm90/kernel/backward_traits.cuh"
#include "cuda/sm90/kernel/pieces.cuh"

namespace nattn::cuda::sm90 {

// The ordered dQ adds (Tr::kOrderedDq, the deterministic mode's fast kernel; cuda/common/
// ordered_dq.h): thread 0 of a warpgroup waits until the walked box's counter shows the adds of
// every CTA ranked before this one (F::kDqSplit per CTA: one per warpgroup adding columns), then
// adds; its adds are counted one step later (release_dq_adds), once complete, so the wait for
// their completion overlaps the next step's products instead of stalling this one.
// (d76c583 moved the polls to producer thread 32, which published each step's turn in shared
// memory: on the H100, 2026-12-06, fourteenth session, it ran 3-11% slower than these polls,
// e.g. dense 8k d128 9.17 against 8.34 ms, and racecheck reported its flag's acquire/release
// handoff; so it was taken out.)
template <class Tr>
__device__ __forceinline__ void acquire_dq_box(typename Tr::SharedStorage& ss, const BackwardArgs& args, int2 order,
                                               int wg) {
  const int* counter = args.dq_order + order.x;
  const int want = Tr::Fast::kDqSplit * order.y;
  int seen;
  do {
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
  } while (seen < want);
  // The other CTAs' adds (async proxy) are complete before this one's are issued.
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
  ss.dq_pending[wg] = order.x;
}

// The issuing thread: its reduce-adds (bulk groups) are complete in global memory, not only done
// reading the staging tile (cute::tma_store_wait).
__device__ __forceinline__ void wait_dq_adds_complete() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Thread 0 of a warpgroup, before the staging tile is written again: its reduce-adds have read
// the tile (fast mode); ordered, they are complete and counted (the counter of the box they
// added into goes up by one, released to the CTAs that wait on it).
template <class Tr>
__device__ __forceinline__ void release_dq_adds(typename Tr::SharedStorage& ss, const BackwardArgs& args, int wg) {
  if constexpr (Tr::kOrderedDq) {
    wait_dq_adds_complete();
    const int slot = ss.dq_pending[wg];
    if (slot >= 0) {
      asm volatile("fence.proxy.async.global;\n" ::: "memory");
      asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(args.dq_order + slot) : "memory");
      ss.dq_pending[wg] = -1;
    }
  } else {
    cute::tma_store_wait<0>();
  }
}

// Fast mode, a warpgroup after its dQ product (t = its thread, wg its index): its kDqCols
// columns of the step's dQ partial (the walked queries summed over the CTA's 128 keys, times
// |scale|: K holds the scale's sign) into the staging tile (FastDqShapes: 32-column float32
// panels, 128-byte rows, their 16-byte chunks XOR-swizzled by row % 8 as the TMA's 128-byte
// swizzle places them: a warp's stores take the minimum two wavefronts), then its thread 0 adds
// each of its panels into the workspace with one TMA tensor reduce-add: the walked box at the
// coordinates its Q was loaded from. Rows outside the query grid and columns past the workspace
// are clipped by the TMA unit; masked pairs add zeros. The staging tile is rewritten only after
// the issuing thread's wait_group.read before the next step's barrier 3 (see dkdv_consume).
template <class Tr, int QI>
__device__ __forceinline__ void reduce_dq(typename Tr::SharedStorage& ss, const float (&dq)[1][QI][4], const Step& st,
                                          const TileWalk& w, const BackwardArgs& args, int b, int h, int wg, int t,
                                          int stage, int2 order) {
  using F = typename Tr::Fast;
  constexpr int BQ = Tr::BQ, PC = F::kPanelCols;
  const Geometry& g = args.p.g;
  asm volatile("" : "+r"(t));  // recomputed per step, not held across the walk (registers)
  const int lane = t % 32, r0 = (t / 32) * 16 + lane / 4;
  const int col0 = F::kDqSplit == 2 ? wg * F::kDqCols : 0;
  const float f = fabsf(g.scale);
  // F::staged(r0 + 8 hr, col0 + 8 qi + 2 (lane % 4)), added up from a per-thread base and key
  // (FastDqShapes::thread_base says why).
  const int x = F::thread_key(r0, lane);
  float* const base = ss.dq_stage + F::thread_base(r0, lane, col0);
#pragma unroll
  for (int qi = 0; qi < QI; ++qi) {
    float* const chunk = base + F::chunk_offset(x, qi);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr)
      *reinterpret_cast<float2*>(chunk + hr * F::kHalfRowStep) =
          make_float2(dq[0][qi][2 * hr] * f, dq[0][qi][2 * hr + 1] * f);
  }
  cutlass::arch::fence_view_async_shared();  // generic-proxy writes before the TMA reads them
  // Named barrier ids (CUTLASS adds 8 for its reserved ones; hardware has 16): this kernel uses
  // 1, 3, 4 (persistent item preparation), 5 + wg and 0 / 2 here. 7 + wg reached hardware
  // barrier 16 for warpgroup 1, past PTX's 0-15 (found 2026-12-05; it had passed every GPU test).
  cutlass::arch::NamedBarrier::sync(128, 2 * wg);
  if (t != 0) return;
  // Ordered: the step's counter and rank, from the stage (head dim 128: still held here) or as
  // read before the stage was released.
  if constexpr (Tr::kOrderedDq) acquire_dq_box<Tr>(ss, args, F::kDqSplit == 2 ? ss.dq_order[stage] : order, wg);
  int c[3];
  box_coords(st.start, w.walk_off, g, c);
#pragma unroll
  for (int pnl = col0 / PC; pnl < (col0 + F::kDqCols) / PC; ++pnl) {
    int tc[5];
    map_coords(args.mode[kDqAccum], int(g.heads_q), args.head_cols[kDqAccum], b, h, pnl, PC, c, tc);
    cute::SM90_TMA_REDUCE_ADD_5D::copy(&args.tma[kDqAccum], ss.dq_stage + pnl * BQ * PC, tc[0], tc[1], tc[2], tc[3],
                                       tc[4]);
  }
  cute::tma_store_arrive();  // closes this step's bulk group
}

// Fast mode, one step's gradient products and dQ partial (consumer thread ctid of 256, step par
// of the CTA: ConsumerCursors::steps, the item's step where one item per CTA), ending with the
// stage released (empty: its barrier). dS^T goes to this step's parity buffer (stmatrix), then
// the 256-thread barrier (both warpgroups' halves written; thread 0 of each warpgroup first
// waits until its last reduce-adds have read the staging tile, so every staging write after it
// finds the tile free), then dQ = dS K over the 128 keys and its staging and reduce-add
// (reduce_dq). A warpgroup writes a dS buffer again two steps on, past the next step's barrier,
// which every reader reaches only after its dQ product has completed.
//   Head dim 128 (both warpgroups, 64 dQ columns each): FlashAttention-3's order, so that the dQ
//   product and its staging overlap the same warpgroup's gradient products: dV += P^T dO issued
//   before the barrier, then dQ's product, then dK += dS^T Q, then the wait for all but dK's and
//   dQ's staging while dK's runs. 2026-12-05 (tenth session, H100, against the order below):
//   backward 11-13% faster on dense 8k and flux-2d-s16.
//   Below (one warpgroup per step, alternating, all columns): both gradient products, the
//   barrier, the stage released, then dQ's product: the order before, which measured 8-12% faster
//   than FlashAttention-3's at d64 (dense 8k) in the same run.
template <class Tr, class MmaG, class TP, class TDs, class RDs, class TDo, class TQ, class TAcc>
__device__ __forceinline__ void fast_step(typename Tr::SharedStorage& ss, MmaG& mma_g, const TP& tGrP, const TDs& tGrDs,
                                          const RDs& rDs, const TDo& tGrDot, const TQ& tGrQt, TAcc& tGrDv, TAcc& tGrDk,
                                          int stage, const Step& st, const TileWalk& w, const BackwardArgs& args, int b,
                                          int h, int par) {
  using namespace cute;
  using Element = typename Tr::Element;
  using F = typename Tr::Fast;
  constexpr int BQ = Tr::BQ, HD = Tr::HD;
  constexpr bool kOverlap = F::kDqSplit == 2;
  int ctid = int(threadIdx.x) - 128;
  asm volatile("" : "+r"(ctid));  // addresses from it recomputed per step, not held across the walk
  const int wg = ctid / 128;
  // With stmatrix (8 x 8 blocks of 16-byte rows, queries contiguous): four stores a thread
  // instead of sixteen 32-bit generic ones with 64-bit addresses; each block's 8 rows sit in
  // 8 different 16-byte chunks of the 128-byte swizzle, so a block is one conflict-free
  // wavefront. make_tiled_copy_C reads the registers in the accumulator's own layout (its
  // source side gives register i partition_C's coordinate: checked on the host, 2026-12-05).
  if constexpr (!kOverlap) {
    wgmma<false>(mma_g, tGrP, tGrDot, tGrDv);
    wgmma<false>(mma_g, tGrDs, tGrQt, tGrDk);
  }
  Tensor sDsT = make_tensor(make_smem_ptr(ss.ds), typename F::SmemDsT{});
  typename Tr::MmaS mma_s;
  auto r2s = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_s);
  auto thr_r2s = r2s.get_thread_slice(ctid);
  copy(r2s, thr_r2s.retile_S(rDs), thr_r2s.partition_D(sDsT(_, _, par & 1)));
  if constexpr (kOverlap) wgmma<false>(mma_g, tGrP, tGrDot, tGrDv);
  cutlass::arch::fence_view_async_shared();  // generic-proxy writes before wgmma reads
  if (ctid % 128 == 0) release_dq_adds<Tr>(ss, args, wg);
  // The ordered adds' counter and rank of this step's box, read while the stage is held (head
  // dim 128 releases it after the reduce-adds, which read them there).
  int2 order = make_int2(0, 0);
  if constexpr (Tr::kOrderedDq && !kOverlap)
    if (ctid % 128 == 0) order = ss.dq_order[stage];
  cutlass::arch::NamedBarrier::sync(256, 3);
  if constexpr (!kOverlap) {
    warpgroup_wait<0>();  // the gradient products are done with the stage (and P^T, dS^T)
    cutlass::arch::ClusterBarrier::arrive(&ss.empty[stage]);
  }
  const bool dq = kOverlap || wg == (par & 1);
  typename F::MmaDq mma_q;
  auto thr_q = mma_q.get_thread_slice(kOverlap ? ctid : ctid % 128);
  Tensor sDs = make_tensor(make_smem_ptr(ss.ds), typename F::SmemDs{});
  Tensor sKt = make_tensor(make_smem_ptr(ss.own_a), typename F::SmemOwnT{});
  Tensor tQrDs = thr_q.partition_fragment_A(sDs(_, _, par & 1));
  Tensor tQrKt = thr_q.partition_fragment_B(sKt);
  Tensor tQrDq = partition_fragment_C(mma_q, Shape<Int<BQ>, Int<HD>>{});
  constexpr int QI = F::kDqCols / 8;
  static_assert(decltype(size(tQrDq))::value == QI * 4, "dQ fragment: one m16n8 row pair per n8 block");
  if (dq) wgmma<true>(mma_q, tQrDs, tQrKt, tQrDq);
  if constexpr (kOverlap) wgmma<false>(mma_g, tGrDs, tGrQt, tGrDk);
  if (dq) {
    if constexpr (kOverlap)
      warpgroup_wait<1>();  // dV's and dQ's products are done; dK's runs on
    else
      warpgroup_wait<0>();
    warpgroup_fence_operand(tQrDq);
    reduce_dq<Tr>(ss, *reinterpret_cast<float(*)[1][QI][4]>(raw_pointer_cast(tQrDq.data())), st, w, args, b, h, wg,
                  ctid % 128, stage, order);
  }
  if constexpr (kOverlap) {
    warpgroup_wait<0>();  // dK's product is done with the stage
    cutlass::arch::ClusterBarrier::arrive(&ss.empty[stage]);
  }
}

// One own key box (walk w, kv head hk, batch b) of the consumer warpgroups. part: which HDO
// columns of dK and dV they write (0 unless the head dim is split, Tr::kColumnSplit). cs: the
// stage ring's cursor, the own boxes' phase and the step count (column parity), which the
// persistent variant's items run on (Tr::kPersistent: the item's end marker and own boxes are
// released here, before the epilogue, so the next item's loads overlap it).
template <class Tr>
__device__ __forceinline__ void dkdv_consume(typename Tr::SharedStorage& ss, const TileWalk& w,
                                             const BackwardArgs& args, int b, int hk, int part,
                                             ConsumerCursors<Tr::kStages>& cs) {
  using namespace cute;
  using Element = typename Tr::Element;
  using Out = GlobalElement<Element>;
  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  constexpr int BQ = Tr::BQ, HDO = Tr::HDO, NI = BQ / 8, OI = HDO / 8;
  const BackwardParams& p = args.p;
  const Geometry& g = p.g;
  const Tiling& tl = args.tl;
  const int hpk = int(g.heads_q / g.heads_kv);
  const int ctid = int(threadIdx.x) - 128;  // 0..255 over the consumer warpgroups
  const int wg = ctid / 128, lane = ctid % 32;
  const int row0 = wg * 64 + ((ctid % 128) / 32) * 16;  // this warp's first key row

  Tensor sK = make_tensor(make_smem_ptr(ss.own_a), typename Tr::SmemOwn{});
  Tensor sV = make_tensor(make_smem_ptr(ss.own_b), typename Tr::SmemOwn{});
  Tensor sQ = make_tensor(make_smem_ptr(ss.walk_a), typename Tr::SmemWalk{});
  Tensor sDo = make_tensor(make_smem_ptr(ss.walk_b), typename Tr::SmemWalk{});
  Tensor sQt = make_tensor(make_smem_ptr(ss.walk_a), typename Tr::SmemWalkT{});
  Tensor sDot = make_tensor(make_smem_ptr(ss.walk_b), typename Tr::SmemWalkT{});
  typename Tr::MmaS mma_s;
  typename Tr::MmaG mma_g;
  auto thr_s = mma_s.get_thread_slice(ctid);
  auto thr_g = mma_g.get_thread_slice(ctid);
  Tensor tSrK = thr_s.partition_fragment_A(sK);
  Tensor tSrV = thr_s.partition_fragment_A(sV);
  Tensor tSrQ = thr_s.partition_fragment_B(sQ);
  Tensor tSrDo = thr_s.partition_fragment_B(sDo);
  Tensor tGrQt = thr_g.partition_fragment_B(sQt);
  Tensor tGrDot = thr_g.partition_fragment_B(sDot);
  Tensor tGrDk = partition_fragment_C(mma_g, Shape<Int<Tr::BK>, Int<HDO>>{});
  Tensor tGrDv = partition_fragment_C(mma_g, Shape<Int<Tr::BK>, Int<HDO>>{});
  // With the head dim split, the gradient products read this CTA's column part of a stage's
  // walked Q or dO (B operand, MN-major) through a view of its own.
  auto walked_part = [&](Element* walk, int stage) {
    return thr_g.partition_fragment_B(
        make_tensor(make_smem_ptr(walk + stage * Tr::kWalkElems + part * BQ * HDO), typename Tr::SmemWalkHalfT{}));
  };
  clear(tGrDk);
  clear(tGrDv);
  static_assert(decltype(size(tGrDk))::value == OI * 4, "dK fragment: one m16n8 accumulator row pair per n8 block");
  Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<Tr::BK>, Int<BQ>>{});
  Tensor tSrDp = partition_fragment_C(mma_s, Shape<Int<Tr::BK>, Int<BQ>>{});
  static_assert(decltype(size(tSrS))::value == NI * 4, "S^T fragment: one m16n8 accumulator row pair per n8 block");
  // P^T and dS^T as the A operands of the gradient products. Both are converted once dP^T is
  // done, before either product issues, so the float32 S^T and dP^T die there: across the
  // gradient products (and the fast mode's dQ product) only dK, dV and the two 16-bit tiles
  // are live, which keeps the consumers within their registers (as FlashAttention-3's backward).
  Tensor rP = make_tensor_like<Element>(tSrS);
  Tensor tGrP = make_tensor(rP.data(), accumulator_as_a(tSrS.layout()));
  Tensor rDs = make_tensor_like<Element>(tSrDp);
  Tensor tGrDs = make_tensor(rDs.data(), accumulator_as_a(tSrDp.layout()));
  float(&s)[1][NI][4] = *reinterpret_cast<float(*)[1][NI][4]>(raw_pointer_cast(tSrS.data()));
  float(&dp)[1][NI][4] = *reinterpret_cast<float(*)[1][NI][4]>(raw_pointer_cast(tSrDp.data()));

  if constexpr (Tr::kOrderedDq)
    if (ctid % 128 == 0) ss.dq_pending[wg] = -1;
  TxBarrier::wait(&ss.own_full, cs.own_phase);
  // The scale is folded into exp2: a non-positive scale is applied to K exactly (dK takes the
  // signed scale at the store, as the derivative of S in the true K).
  const float c = fold_scale_sign<Tr::kOwnElems, 256>(ss.own_a, g.scale, ctid);
  if (g.scale <= 0.f) {
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes before wgmma reads
    cutlass::arch::NamedBarrier::sync(256, 1);
  }

  // A step's lse2 and Delta come with its boxes (ss.walk_rows[stage], the producer's TMA). A
  // partial step's query windows are computed by each warpgroup while its S^T and dP^T run, into
  // the table of the partial steps' parity: a warpgroup writes a table again two partial steps
  // on, past the barrier of the partial step between, which every reader of the table reaches
  // only after its mask.
  StageCursor<Tr::kStages>& at = cs.at;
  for (int n = 0;; ++n) {  // n: this item's steps (the fast mode's dS parity)
    TxBarrier::wait(&ss.full[at.stage], at.phase);
    const Step st = ss.steps[at.stage];
    if (!st.valid) break;
    wgmma<true>(mma_s, tSrK, tSrQ(_, _, _, at.stage), tSrS);
    wgmma<true>(mma_s, tSrV, tSrDo(_, _, _, at.stage), tSrDp);
    int2* const win = &ss.windows[wg][cs.partials & 1].win[0][0];
    if (!st.full) {
      fill_axis_windows<Tr::kMinBlocks == 1>(win, BQ, st.start, tl.walk_shift, w, ctid % 128, 128);
      cutlass::arch::NamedBarrier::sync(128, 5 + wg);
      ++cs.partials;
    }
    const float(&rows)[BQ][kRowColumns] = ss.walk_rows[at.stage];
    warpgroup_wait<1>();  // S^T is done
    warpgroup_fence_operand(tSrS);
    if (!st.full) mask_rows_are_keys(s, st.partial, win, BQ, tl.own_shift, tl.walk_shift, w.own_start, row0, lane);
    // Register e of n8 block ni holds column ni * 8 + 2 (lane % 4) + (e & 1); its lse2 and Delta
    // are read where they are used (held across dP^T's wait, the Delta values took registers).
    auto column = [&](int ni, int e) -> const float* { return rows[ni * 8 + 2 * (lane % 4) + (e & 1)]; };
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[0][ni][e] = fast_exp2(fmaf(s[0][ni][e], c, -column(ni, e)[0]));
    if constexpr (Tr::kMinBlocks == 2) {
      // Two CTAs per SM (104 consumer registers, d32): the order before the ninth session (dV's
      // product issues before dP^T's wait; dS^T reuses P^T's registers). The order below made
      // ptxas keep a value of this kernel's prologue and producer in local memory (4/8 bytes).
#pragma unroll
      for (int i = 0; i < size(tSrS); ++i) rP(i) = Element(tSrS(i));
      wgmma<false>(mma_g, tGrP, tGrDot(_, _, _, at.stage), tGrDv);
      warpgroup_wait<0>();  // dP^T is done, and dV's product has read P^T
      warpgroup_fence_operand(tSrDp);
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[0][ni][e] *= dp[0][ni][e] - column(ni, e)[1];
#pragma unroll
      for (int i = 0; i < size(tSrS); ++i) rP(i) = Element(tSrS(i));
      wgmma<false>(mma_g, tGrP, tGrQt(_, _, _, at.stage), tGrDk);
    } else {
      warpgroup_wait<0>();  // dP^T is done
      warpgroup_fence_operand(tSrDp);
      // dS^T = P^T (dP^T - Delta) in dP^T's registers (from the float32 P^T), then both 16-bit
      // tiles; the float32 ones are dead from here on.
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[0][ni][e] = s[0][ni][e] * (dp[0][ni][e] - column(ni, e)[1]);
#pragma unroll
      for (int i = 0; i < size(tSrS); ++i) {
        rP(i) = Element(tSrS(i));
        rDs(i) = Element(tSrDp(i));
      }
      if constexpr (Tr::kFastDq) {
        // The dS parity: the CTA's step count (persistent: it runs on across items), else n.
        const int par = Tr::kPersistent ? cs.steps++ : n;
        fast_step<Tr>(ss, mma_g, tGrP, tGrDs, rDs, tGrDot(_, _, _, at.stage), tGrQt(_, _, _, at.stage), tGrDv, tGrDk,
                      at.stage, st, w, args, b, hk * hpk + st.head, par);
      } else if constexpr (Tr::kColumnSplit == 1) {
        wgmma<false>(mma_g, tGrP, tGrDot(_, _, _, at.stage), tGrDv);
        wgmma<false>(mma_g, tGrDs, tGrQt(_, _, _, at.stage), tGrDk);
      } else {
        wgmma<false>(mma_g, tGrP, walked_part(ss.walk_b, at.stage), tGrDv);
        wgmma<false>(mma_g, tGrDs, walked_part(ss.walk_a, at.stage), tGrDk);
      }
    }
    // The products are done with this stage's dO and Q (and with P^T and dS^T); the fast step
    // released it itself.
    if constexpr (!Tr::kFastDq) {
      warpgroup_wait<0>();
      Barrier::arrive(&ss.empty[at.stage]);
    }
    at.next();
  }

  // Fast mode: the last reduce-adds are complete before the CTA's shared memory goes (ordered:
  // and counted). The persistent variant's next item finds the staging tile as the next step of
  // this one would (each step waits for the last one's reads first), and the kernel waits for
  // their completion once, after its last item.
  if constexpr (Tr::kOrderedDq) {
    if (ctid % 128 == 0) release_dq_adds<Tr>(ss, args, wg);
  } else if constexpr (Tr::kFastDq && !Tr::kPersistent) {
    if (ctid % 128 == 0) wait_dq_adds_complete();
  }
  if constexpr (Tr::kPersistent) {
    // The end marker's stage, then the own boxes (every product reading them is done: each
    // step ends waiting for its products; the epilogue reads registers) go back to the
    // producer, which loads the next item's meanwhile.
    Barrier::arrive(&ss.empty[at.stage]);
    at.next();
    Barrier::arrive(&ss.own_empty);
    cs.own_phase ^= 1;
  }

  // Epilogue: each own key row's dK (scaled) and dV, written once (columns part * HDO on).
  float(&dk)[1][OI][4] = *reinterpret_cast<float(*)[1][OI][4]>(raw_pointer_cast(tGrDk.data()));
  float(&dv)[1][OI][4] = *reinterpret_cast<float(*)[1][OI][4]>(raw_pointer_cast(tGrDv.data()));
  int own_count[3];
  w.own_rows_left(w.own_start, own_count);
  auto row_of = [&](Out* base, const Strides& s_out) {
    return [&, base, s_out](int r) -> Out* {
      if (!row_inside(r, tl.own_shift, own_count)) return nullptr;
      int pos[3];
      box_position(r, tl.own_shift, w.own_start, pos);
      return base + token_offset(pos, w.own_off, g, s_out);
    };
  };
  const int col0 = part * HDO;
  Out* dk_out = static_cast<Out*>(p.dk) + b * p.sdk.batch + hk * p.sdk.head + col0;
  Out* dv_out = static_cast<Out*>(p.dv) + b * p.sdv.batch + hk * p.sdv.head + col0;
  float factor[1][2];
  fill_factor(factor, g.scale);
  store_rows<Out>(dk, factor, row0, lane, int(g.head_dim) - col0, row_of(dk_out, p.sdk));
  fill_factor(factor, 1.f);
  store_rows<Out>(dv, factor, row0, lane, int(g.head_dim_v) - col0, row_of(dv_out, p.sdv));
}

// Grid: (own key boxes over every dilation group x column parts, kv heads, batch); the parts of
// a key box are neighbours in launch order, so they read the same walked boxes close in time.
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks)
    fna_backward_dkdv_kernel(const __grid_constant__ BackwardArgs args) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_raw);
  const Geometry& g = args.p.g;
  int hk = int(blockIdx.y);
  const int b = int(blockIdx.z);
  const int hpk = int(g.heads_q / g.heads_kv);
  const int part = int(blockIdx.x % Tr::kColumnSplit);
  int64_t box = blockIdx.x / Tr::kColumnSplit;
  // Ordered dQ adds: per kv head, key boxes launch in decreasing order, the order of the adds
  // into a shared query box, so every CTA that one waits on was dispatched before it (resident
  // or done); groups of heads interleave (cuda/common/ordered_dq.h ordered_launch_item says why).
  if constexpr (Tr::kOrderedDq)
    ordered_launch_item(int64_t(blockIdx.x) + int64_t(gridDim.x) * blockIdx.y, gridDim.x, int(gridDim.y), &box, &hk);
  // A key box past its group's end (dilation groups of different lengths): nothing to write.
  if (!start_backward<Tr>(ss, args, box, true, hpk, b, hk, int(g.heads_kv), hk * hpk, int(g.heads_q))) return;
  __syncthreads();
  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Tr::kProducerRegs>();
    if (threadIdx.x == 0) produce_backward<Tr>(ss, args, b, hk * hpk, int(g.heads_q));
  } else {
    cutlass::arch::warpgroup_reg_alloc<Tr::kConsumerRegs>();
    ConsumerCursors<Tr::kStages> cs;
    dkdv_consume<Tr>(ss, ss.walk, args, b, hk, part, cs);
  }
}

// The persistent variant (Tr::kPersistent; device/family.cu persistent_items), of the
// deterministic dK/dV kernel and of the fast one: work items own key boxes over every dilation
// group, then kv heads, then batch; a CTA runs items blockIdx.x, + gridDim.x, ...
// (kernel/backward_producer.cuh).
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    fna_backward_dkdv_persistent_kernel(const __grid_constant__ BackwardArgs args) {
  static_assert(Tr::kPersistent && Tr::kColumnSplit == 1, "the persistent variant's traits");
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_raw);
  const Geometry& g = args.p.g;
  const int hpk = int(g.heads_q / g.heads_kv);
  run_backward_roles<Tr>(
      ss,
      [&] { produce_backward_items<Tr>(ss, args, int(g.heads_kv), [&](int hk) { return hk * hpk; }, int(g.heads_q)); },
      [&] { prepare_backward_items<Tr>(ss, args, true, hpk, 0, [](typename Tr::Item&, int) {}); },
      [&] {
        consume_backward_items<Tr>(ss, args, [&](const typename Tr::Item& it, ConsumerCursors<Tr::kStages>& cs) {
          dkdv_consume<Tr>(ss, it.walk, args, it.b, it.head, 0, cs);
        });
        // The fast kernel: its last reduce-adds are complete before the shared memory goes.
        if constexpr (Tr::kFastDq)
          if (threadIdx.x % 128 == 0) wait_dq_adds_complete();
      });
}

}  // namespace nattn::cuda::sm90
