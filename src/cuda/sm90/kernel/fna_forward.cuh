// Layer: cuda/sm90 kernel. Fused neighborhood-attention forward for Hopper. A work item is one box
// of BM = 128 query positions of one (batch, head, dilation group), walking the key boxes that
// cover its queries' windows (TileWalk, as the sm80 family) and then the additional-key tiles.
// CTAs are persistent when the plan says so (grid below the item count): each runs items
// blockIdx.x, + gridDim.x, ... Warp-specialised:
//   * warpgroup 0 (registers given back with setmaxnreg): warps 1-3 prepare each item's walk and
//     window tables (double-buffered), and one thread issues TMA box loads of Q per item and of K and V
//     per walked box straight from the caller's tensors (cuda/sm90/kernel/traits.cuh MapMode;
//     out-of-range rows and head-dim padding zero-filled by the TMA unit, dilation as TMA element
//     strides), into a ring of stages guarded by mbarriers that runs on across items;
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
#include "cuda/common/fragment/forward_epilogue.cuh"
#include "cuda/common/fragment/mask.cuh"
#include "cuda/common/fragment/softmax.cuh"
#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/pieces.cuh"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda::sm90 {

// One thread: TMA loads of every panel of one box of map `map` (rows x HD) into dst.
template <class Tr>
__device__ __forceinline__ void load_box(const ForwardArgs& args, int map, uint64_t* bar, uint64_t hint,
                                         typename Tr::Element* dst, int rows, int b, int h, const int (&c)[3]) {
  tma_load_box<Tr::kPanels, Tr::PW>(&args.tma[map], args.mode[map],
                                    int(map == kMapQ ? args.p.g.heads_q : args.p.g.heads_kv), args.head_cols[map], bar,
                                    hint, dst, rows, b, h, c);
}

// Work item `item` (own boxes fastest, then heads, then batch: CTAs running side by side share
// a head's key boxes in L2) as (own box, head, batch). Causal walks grow along the grid, so
// causal problems run the items backwards: longest first, the short ones fill the tail.
__device__ __forceinline__ void decode_item(int item, const ForwardArgs& args, int& box, int& h, int& b) {
  if (args.longest_first) item = args.items - 1 - item;
  const int boxes = int(args.tl.neighborhood_ctas);
  box = item % boxes;
  const int rest = item / boxes;
  h = rest % int(args.p.g.heads_q);
  b = rest / int(args.p.g.heads_q);
}

// Producer warps 1-3: per work item, its walk and window tables in the item's slot (two slots:
// the next item is prepared while this one runs). Kept apart from the TMA thread's loop so
// neither carries the other's state (the producer warpgroup runs on 56 registers).
template <class Tr>
__device__ __forceinline__ void prepare_items(typename Tr::SharedStorage& ss, const ForwardArgs& args) {
  using Barrier = cutlass::arch::ClusterBarrier;
  const Geometry& g = args.p.g;
  const int tid = int(threadIdx.x) - 32;  // 0..95
  const int add_tiles = int((g.num_additional + Tr::BN - 1) / Tr::BN);
  int n = 0;
  for (int item = int(blockIdx.x); item < args.items; item += int(gridDim.x), ++n) {
    const int slot = n & 1;
    auto& it = ss.item[slot];
    Barrier::wait(&ss.item_empty[slot], ((n >> 1) & 1) ^ 1);  // the first use of a slot does not wait
    if (tid == 0) {
      int box;
      decode_item(item, args, box, it.h, it.b);
      it.walk.init(g, args.tl, box, false, add_tiles, Tr::BN);
      it.walk.begin(1, g.num_additional);
    }
    cutlass::arch::NamedBarrier::sync(96, 4);  // the walk is initialised before the tables
    if (!it.walk.empty) {
      it.walk.fill_tables(tid, 96);
      fill_axis_windows(&it.win[0][0], Tr::BM, it.walk.own_start, args.tl.own_shift, it.walk, tid, 96);
    }
    // Every writer arrives itself (count 96): its writes are released to the waiters directly.
    Barrier::arrive(&ss.item_full[slot]);
    cutlass::arch::NamedBarrier::sync(96, 4);  // nobody re-initialises the walk while others fill
  }
}

// Producer thread 0: per prepared item, the TMA loads of Q and of the walk's K/V boxes and
// additional-key tiles, closed by an invalid step. The stage ring runs on across items, so the
// next item's first boxes load while the consumers finish this one.
template <class Tr>
__device__ __forceinline__ void produce(typename Tr::SharedStorage& ss, const ForwardArgs& args) {
  using Element = typename Tr::Element;
  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  constexpr int BM = Tr::BM, BN = Tr::BN;
  // Q is read by this CTA only; K and V boxes are read again by neighbouring CTAs.
  constexpr uint64_t kOnce = uint64_t(cute::TMA::CacheHintSm90::EVICT_FIRST);
  constexpr uint64_t kShared = uint64_t(cute::TMA::CacheHintSm90::EVICT_LAST);
  constexpr uint32_t kTileBytes = BN * Tr::HD * sizeof(Element);
  const Geometry& g = args.p.g;
  const int hpk = int(g.heads_q / g.heads_kv);
  StageCursor<Tr::kStages> kv;
  StageCursor<Tr::kQStages> qs;
  int n = 0;
  for (int item = int(blockIdx.x); item < args.items; item += int(gridDim.x), ++n) {
    const int slot = n & 1;
    Barrier::wait(&ss.item_full[slot], (n >> 1) & 1);
    TileWalk& w = ss.item[slot].walk;
    if (w.empty) {
      Barrier::arrive(&ss.item_empty[slot]);  // this thread is done with the slot (count 257)
      continue;
    }
    const int b = ss.item[slot].b, h = ss.item[slot].h, hk = h / hpk;
    int c[3];
    Barrier::wait(&ss.q_empty[qs.stage], qs.phase ^ 1);
    box_coords(w.own_start, w.own_off, g, c);
    TxBarrier::arrive_and_expect_tx(&ss.q_full[qs.stage], BM * Tr::HD * sizeof(Element));
    load_box<Tr>(args, kMapQ, &ss.q_full[qs.stage], kOnce, ss.q + qs.stage * Tr::kQElems, BM, b, h, c);
    qs.next();
    for (;;) {
      const Step st = w.advance<TileWalk::kKeyWalk>();     // the forward walks key boxes
      Barrier::wait(&ss.k_empty[kv.stage], kv.phase ^ 1);  // the first pass over the stages does not wait
      ss.steps[kv.stage] = st;
      if (!st.valid) {  // the end of the item: both barriers of the stage pass without data
        Barrier::arrive(&ss.k_full[kv.stage]);
        Barrier::wait(&ss.v_empty[kv.stage], kv.phase ^ 1);
        Barrier::arrive(&ss.v_full[kv.stage]);
        kv.next();
        Barrier::arrive(&ss.item_empty[slot]);  // the walk is read to its end
        break;
      }
      const bool extra = step_coords(st, w, g, BN, c);
      TxBarrier::arrive_and_expect_tx(&ss.k_full[kv.stage], kTileBytes);
      load_box<Tr>(args, extra ? kMapKa : kMapK, &ss.k_full[kv.stage], kShared, ss.k + kv.stage * Tr::kKVElems, BN, b,
                   hk, c);
      Barrier::wait(&ss.v_empty[kv.stage], kv.phase ^ 1);
      TxBarrier::arrive_and_expect_tx(&ss.v_full[kv.stage], kTileBytes);
      load_box<Tr>(args, extra ? kMapVa : kMapV, &ss.v_full[kv.stage], kShared, ss.v + kv.stage * Tr::kKVElems, BN, b,
                   hk, c);
      kv.next();
    }
  }
}

// Consumer state that lives across work items: the stage cursors and the ping-pong turns.
template <class Tr>
struct ConsumerState {
  StageCursor<Tr::kStages> k_at, v_at;
  StageCursor<Tr::kQStages> q_at;
};

template <class Tr>
__device__ __forceinline__ void consume_item(typename Tr::SharedStorage& ss, const typename Tr::Item& it,
                                             const ForwardArgs& args, ConsumerState<Tr>& cs) {
  using namespace cute;
  using Element = typename Tr::Element;
  using Out = GlobalElement<Element>;
  constexpr int BM = Tr::BM, BN = Tr::BN, HD = Tr::HD, NI = BN / 8, OI = HD / 8;
  const ForwardParams& p = args.p;
  const Geometry& g = p.g;
  const Tiling& tl = args.tl;
  const TileWalk& w = it.walk;
  const int b = it.b, h = it.h;
  const int ctid = int(threadIdx.x) - 128;  // 0..255 over the consumer warpgroups
  const int lane = ctid % 32;
  const int row0 = (ctid / 128) * 64 + ((ctid % 128) / 32) * 16;  // this warp's first query row

  Element* q_tile = ss.q + cs.q_at.stage * Tr::kQElems;
  Tensor sQ = make_tensor(make_smem_ptr(q_tile), typename Tr::SmemQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k), typename Tr::SmemK{});
  Tensor sVt = make_tensor(make_smem_ptr(ss.v), typename Tr::SmemVt{});
  typename Tr::MmaS mma_s;
  typename Tr::MmaO mma_o;
  // The shared-memory operands' descriptors depend on the warpgroup only (GMMA's A/B layouts have
  // stride 0 over its 128 threads). From a shuffled, provably warp-uniform index (CUTLASS's
  // canonical_warp_group_idx) ptxas builds them in uniform registers, not vector registers.
  const int wg_first = __shfl_sync(0xffffffff, ctid / 128, 0) * 128;
  auto thr_s = mma_s.get_thread_slice(wg_first);
  auto thr_o = mma_o.get_thread_slice(wg_first);
  Tensor tSrQ = thr_s.partition_fragment_A(sQ);
  // Q's descriptors from an opaque copy of the base per product, so each product rebuilds them
  // (a uniform add per k-slice) rather than reusing the first product's: shared, all of them
  // (16 x 64 bits at head dim 256) stayed live across the mainloop and spilled beside the
  // 128-register O accumulator (36/40 bytes, ptxas 13.0 sm_90a; none since).
  auto q_operand = [&] {
    auto it = tSrQ.data();
    asm volatile("mov.b32 %0, %0;" : "+r"(it.desc_.reg32_[0]));
    return make_tensor(it, tSrQ.layout());
  };
  Tensor tSrK = thr_s.partition_fragment_B(sK);
  Tensor tOrV = thr_o.partition_fragment_B(sVt);
  Tensor tOrO = partition_fragment_C(mma_o, Shape<Int<BM>, Int<HD>>{});
  clear(tOrO);
  static_assert(decltype(size(tOrO))::value == OI * 4, "O fragment: one m16n8 accumulator row pair per n8 block");
  float(&o)[1][OI][4] = *reinterpret_cast<float(*)[1][OI][4]>(raw_pointer_cast(tOrO.data()));

  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  TxBarrier::wait(&ss.q_full[cs.q_at.stage], cs.q_at.phase);
  // The scale is folded into exp2: a non-positive scale is applied to Q exactly (both consumer
  // warpgroups share the Q tile).
  const float c = fold_scale_sign<BM * HD, 256>(q_tile, g.scale, ctid);
  if (g.scale <= 0.f) {
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes before wgmma reads
    cutlass::arch::NamedBarrier::sync(256, 1);
  }

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
    if (!st.full) mask_walked_keys<BN>(s, st, w, g.num_additional, &it.win[0][0], BM, tl, row0, lane);
  };

  // Software pipeline within the warpgroup (FlashAttention-3's intra-warpgroup overlap): tile j's
  // S = Q K_j^T and the previous tile's O += P V_{j-1} are issued back to back; the softmax of S
  // runs while the P V product is still on the tensor cores, and O takes the softmax's rescale
  // once that product is done.
  // Ping-pong rows (Tr::kPingPong; configs.h says where it pays off): the consumer warpgroups
  // (as in FlashAttention-3) take turns issuing their products, so one warpgroup's softmax runs
  // while the other's products hold the tensor cores. Named barrier 2 + w opens warpgroup w's
  // turn; the other warpgroup arrives on it after issuing. Both walk the same steps of every
  // item, so turns pair up across items; the last pass is left unawaited at exit.
  const int wg = ctid / 128;
  auto take_turn = [&] {
    if constexpr (Tr::kPingPong) cutlass::arch::NamedBarrier::sync(256, 2 + wg);
  };
  auto pass_turn = [&] {
    if constexpr (Tr::kPingPong) cutlass::arch::NamedBarrier::arrive(256, 2 + (wg ^ 1));
  };

  auto& k_at = cs.k_at;
  auto& v_at = cs.v_at;
  TxBarrier::wait(&ss.k_full[k_at.stage], k_at.phase);
  Step st = ss.steps[k_at.stage];
  if (st.valid) {
    take_turn();
    wgmma<true>(mma_s, q_operand(), tSrK(_, _, _, k_at.stage), tSrS);
    pass_turn();
    warpgroup_wait<0>();
    Barrier::arrive(&ss.k_empty[k_at.stage]);
    mask(st);
    softmax.template weigh<Tr::kPolyEvery>(s, c, o);
    to_p();
    k_at.next();
    for (;;) {
      TxBarrier::wait(&ss.k_full[k_at.stage], k_at.phase);
      st = ss.steps[k_at.stage];
      if (!st.valid) break;
      if constexpr (Tr::kPingPong) {  // take the turn with both operands ready
        TxBarrier::wait(&ss.v_full[v_at.stage], v_at.phase);
        take_turn();
        wgmma<true>(mma_s, q_operand(), tSrK(_, _, _, k_at.stage), tSrS);
        wgmma<false>(mma_o, tOrP, tOrV(_, _, _, v_at.stage), tOrO);
        pass_turn();
      } else {  // S starts while V may still be landing
        wgmma<true>(mma_s, q_operand(), tSrK(_, _, _, k_at.stage), tSrS);
        TxBarrier::wait(&ss.v_full[v_at.stage], v_at.phase);
        wgmma<false>(mma_o, tOrP, tOrV(_, _, _, v_at.stage), tOrO);
      }
      warpgroup_wait<1>();  // S is done; P V may still run
      Barrier::arrive(&ss.k_empty[k_at.stage]);
      mask(st);
      float corr[1][2];
      const bool moved = softmax.template weigh_deferred<Tr::kPolyEvery>(s, c, corr);
      warpgroup_wait<0>();
      Barrier::arrive(&ss.v_empty[v_at.stage]);
      if (moved) softmax.rescale(o, corr);
      to_p();
      k_at.next();
      v_at.next();
    }
    // Every product that reads Q is done: the next item's Q may land.
    Barrier::arrive(&ss.q_empty[cs.q_at.stage]);
    TxBarrier::wait(&ss.v_full[v_at.stage], v_at.phase);
    take_turn();
    wgmma<false>(mma_o, tOrP, tOrV(_, _, _, v_at.stage), tOrO);
    pass_turn();
    warpgroup_wait<0>();
    Barrier::arrive(&ss.v_empty[v_at.stage]);
    v_at.next();
  } else {
    Barrier::arrive(&ss.q_empty[cs.q_at.stage]);
  }
  cs.q_at.next();
  // The item's end marker (k_at): pass both of its barriers.
  Barrier::arrive(&ss.k_empty[k_at.stage]);
  TxBarrier::wait(&ss.v_full[v_at.stage], v_at.phase);
  Barrier::arrive(&ss.v_empty[v_at.stage]);
  k_at.next();
  v_at.next();

  // Epilogue: O normalised by each row's total weight, and the logsumexp.
  int q_count[3];
  w.own_rows_left(w.own_start, q_count);
  store_forward_rows<Out>(o, softmax, w, q_count, tl, p, b, h, row0, lane);
}

// Consumer warpgroups: every work item of this CTA, in the producer's order.
template <class Tr>
__device__ __forceinline__ void consume(typename Tr::SharedStorage& ss, const ForwardArgs& args) {
  ConsumerState<Tr> cs;
  if (Tr::kPingPong && threadIdx.x >= 256)
    cutlass::arch::NamedBarrier::arrive(256, 2);  // warpgroup 0 (threads 128-255) goes first
  int n = 0;
  for (int item = int(blockIdx.x); item < args.items; item += int(gridDim.x), ++n) {
    const int slot = n & 1;
    cutlass::arch::ClusterBarrier::wait(&ss.item_full[slot], (n >> 1) & 1);
    if (!ss.item[slot].walk.empty) consume_item<Tr>(ss, ss.item[slot], args, cs);
    cutlass::arch::ClusterBarrier::arrive(&ss.item_empty[slot]);
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) fna_forward_kernel(const __grid_constant__ ForwardArgs args) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  auto& ss = *reinterpret_cast<typename Tr::SharedStorage*>(smem_raw);
  if (threadIdx.x == 0) {
    for (int s = 0; s < Tr::kQStages; ++s) {
      cutlass::arch::ClusterTransactionBarrier::init(&ss.q_full[s], 1);
      cutlass::arch::ClusterBarrier::init(&ss.q_empty[s], 128 * Tr::kConsumers);
    }
    for (int s = 0; s < Tr::kStages; ++s) {
      cutlass::arch::ClusterTransactionBarrier::init(&ss.k_full[s], 1);
      cutlass::arch::ClusterTransactionBarrier::init(&ss.v_full[s], 1);
      cutlass::arch::ClusterBarrier::init(&ss.k_empty[s], 128 * Tr::kConsumers);
      cutlass::arch::ClusterBarrier::init(&ss.v_empty[s], 128 * Tr::kConsumers);
    }
    for (int s = 0; s < 2; ++s) {
      cutlass::arch::ClusterBarrier::init(&ss.item_full[s], 96);  // producer warps 1-3
      // The consumers and the TMA thread (which steps the walk) release a slot.
      cutlass::arch::ClusterBarrier::init(&ss.item_empty[s], 128 * Tr::kConsumers + 1);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Tr::kProducerRegs>();
    if (threadIdx.x == 0)
      produce<Tr>(ss, args);
    else if (threadIdx.x >= 32)
      prepare_items<Tr>(ss, args);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Tr::kConsumerRegs>();
    consume<Tr>(ss, args);
  }
}

}  // namespace nattn::cuda::sm90
