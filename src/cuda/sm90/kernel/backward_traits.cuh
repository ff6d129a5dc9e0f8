// Layer: cuda/sm90 kernel. Shapes, shared memory and parameters of the sm90 backward kernels.
// Both own a box of 128 rows (two consumer warpgroups of 64) and two tensors on it, loaded once,
// and walk boxes of 64 rows of two other tensors (kernel/backward_producer.cuh loads them):
//   dK/dV (kernel/fna_backward_dkdv.cuh): owns K and V of one (batch, kv head, dilation group),
//     walks Q and dO boxes for each query head of the kv head;
//   dQ (kernel/fna_backward_dq.cuh): owns Q and dO of one (batch, head, dilation group), walks
//     the K and V boxes of its kv head.
#pragma once
#include <cute/tensor.hpp>

#include <type_traits>

#include "cuda/common/configs.h"
#include "cuda/common/params.h"
#include "cuda/common/tile_walk.h"
#include "cuda/sm90/kernel/pieces.cuh"
#include "cuda/sm90/kernel/traits.cuh"

namespace nattn::cuda::sm90 {

// Tensor maps of a backward kernel: the two walked tensors in boxes of the walk shift (dK/dV:
// q, dout; dQ: k, v), the two owned ones in boxes of the own shift (dK/dV: k, v; dQ: q, dout),
// for the dQ kernel's extra walk steps the additional keys and values ([B, Na, Hkv, *] as a
// 1-D grid in boxes of the walked rows; unused by dK/dV, whose additional-key pass is a launch
// of its own over the additional tensors: device/family.cu), and the fast dK/dV kernel's
// float32 dQ workspace (written by TMA reduce-adds), and for the dK/dV kernel the Delta
// pre-pass's row workspace (BackwardParams::rows: each walked query's lse2 and Delta).
enum BackwardMapId : int {
  kWalkA = 0,
  kWalkB = 1,
  kOwnA = 2,
  kOwnB = 3,
  kExtraA = 4,
  kExtraB = 5,
  kDqAccum = 6,   // the fast mode's float32 dQ workspace, in boxes of the walked queries x 32 columns
  kWalkRows = 7,  // dK/dV: the row workspace, in boxes of the walked queries x kRowColumns floats
  kNumBackwardMaps = 8
};

struct BackwardArgs {
  CUtensorMap tma[kNumBackwardMaps];
  int mode[kNumBackwardMaps];       // MapMode of each map
  int head_cols[kNumBackwardMaps];  // C of each map (head_dim or head_dim_v)
  BackwardParams p;
  Tiling tl;
  bool early_steps;  // the producer issues the walk's first steps before the tables are filled
  bool dq_overlap;   // dQ kernel: a step's dQ product runs on while the next step's S and dP issue
  // The persistent variant's work items (kPersistent traits; 0 for the one-CTA-per-item
  // kernels, whose grid is (own boxes x column parts, heads, batch)): own boxes (x the dK/dV
  // kernel's column parts) fastest, then heads (query heads for dQ, kv heads for dK/dV), then
  // batch; a CTA runs items blockIdx.x, + gridDim.x, ... (< 2^31, checked by the plan).
  int items = 0, boxes = 0, heads = 0;
  // The deterministic fast kernel (kOrderedDq traits): the counters of its ordered dQ adds
  // (cuda/common/ordered_dq.h; zeroed before the launch) and ordered_dq_boxes's boxes per axis.
  int* dq_order = nullptr;
  int order_boxes[3] = {1, 1, 1};
};

// The shapes both backward kernels share: own boxes of 128 rows x HD (K-major: the A operands
// of the two SS products), walked stages of WALK rows x HD (K-major: their B operands) and the
// same walked memory as (HD, WALK, stages), rows contiguous per column panel (MN-major: the B
// operand of the RS gradient products); the SS product (64 own rows x WALK over HD per
// warpgroup) and the RS product (64 own rows x HD over the WALK rows, A from registers).
template <class Element_, int HD_, int WALK_, int STAGES_>
struct BackwardShapes {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  static constexpr int HD = HD_, kOwnRows = 128, kWalkRows = WALK_, kStages = STAGES_;
  static constexpr int PW = HD >= 64 ? 64 : HD;  // columns per panel
  static constexpr int kPanels = HD / PW;
  static constexpr int kConsumers = 2;  // warpgroups, 64 own rows each
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kOwnElems = kOwnRows * HD, kWalkElems = kWalkRows * HD;
  static_assert(HD == 32 || HD == 64 || HD == 128 || HD == 256,
                "the sm90 backward takes padded head dims 32, 64, 128, 256");

  using Atom = std::conditional_t<(PW == 64), decltype(cute::GMMA::Layout_K_SW128_Atom<Element>{}),
                                  decltype(cute::GMMA::Layout_K_SW64_Atom<Element>{})>;
  using SmemOwn = decltype(cute::tile_to_shape(Atom{}, cute::Shape<cute::Int<kOwnRows>, cute::Int<HD>>{}));
  using SmemWalk =
      decltype(cute::tile_to_shape(Atom{}, cute::Shape<cute::Int<kWalkRows>, cute::Int<HD>, cute::Int<kStages>>{}));
  using SmemWalkT = decltype(cute::composition(
      SmemWalk{},
      cute::make_ordered_layout(cute::make_shape(cute::Int<HD>{}, cute::Int<kWalkRows>{}, cute::Int<kStages>{}),
                                cute::Step<cute::_2, cute::_1, cute::_3>{})));
  using MmaS = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::ss_op_selector<Element, Element, float,
                                       cute::Shape<cute::_64, cute::Int<kWalkRows>, cute::Int<HD>>>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
  using MmaG = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::rs_op_selector<Element, Element, float,
                                       cute::Shape<cute::_64, cute::Int<HD>, cute::Int<kWalkRows>>,
                                       cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));

  // What the producer (kernel/backward_producer.cuh) fills: the two own boxes, loaded once,
  // and the stages of the two walked tensors, with their barriers, the walk step loaded into
  // each stage, and the walk itself. Each kernel's SharedStorage adds its own tables.
  struct Pipeline {
    alignas(1024) Element own_a[kOwnElems];
    alignas(1024) Element own_b[kOwnElems];
    alignas(1024) Element walk_a[kStages * kWalkElems];
    alignas(1024) Element walk_b[kStages * kWalkElems];
    alignas(8) uint64_t own_full;  // both own boxes landed
    uint64_t full[kStages];        // stage s's walked boxes landed (and steps[s] is set)
    uint64_t empty[kStages];       // every consumer thread is done with stage s
    Step steps[kStages];
    // Thread 0's: the stage the walk's next step goes to after start_backward's first steps,
    // and whether the end marker went out among them (kernel/backward_producer.cuh).
    struct Ring {
      StageCursor<kStages> at;
      bool ended;
    } ring;
    TileWalk walk;
  };

  // The persistent variant's (kernel/backward_producer.cuh, the item loop): per work item its
  // two own boxes (own_empty: the consumers are done with the last item's), the stages of the
  // two walked tensors as a ring that runs on across items, and two item slots (Item: the walk
  // of an item and the kernel's tables of it, prepared by producer warps 1-3 while the item
  // before runs). The ring's end markers take a stage each (released by the consumers too).
  template <class Item>
  struct ItemPipeline {
    alignas(1024) Element own_a[kOwnElems];
    alignas(1024) Element own_b[kOwnElems];
    alignas(1024) Element walk_a[kStages * kWalkElems];
    alignas(1024) Element walk_b[kStages * kWalkElems];
    alignas(8) uint64_t own_full;  // the item's own boxes landed
    uint64_t own_empty;            // every consumer thread is done with the own boxes
    uint64_t full[kStages];        // stage s's walked boxes landed (and steps[s] is set)
    uint64_t empty[kStages];       // every consumer thread is done with stage s
    uint64_t item_full[2];         // item slot i is prepared
    uint64_t item_empty[2];        // the consumers and the TMA thread are done with slot i
    Step steps[kStages];
    Item item[2];
  };
};

// The fast dK/dV kernel's dQ product and its reduce-add. dS of a step is the A operand of
// dQ = dS K (BQ queries x BK keys, queries contiguous: MN-major), parity-buffered, and the same
// memory as (keys, queries) for the consumers' S^T-shaped stores; K is the B operand (HD x BK,
// MN-major: the own box read transposed). Head dim 128: both warpgroups run every step's dQ
// product, 64 columns each (one 128-byte swizzle panel of K each); below, one warpgroup per step
// (alternating), all columns (half a panel is no wgmma operand). The product's float32 partial
// goes to a staging tile in the layout of the workspace map's boxes (panels of 32 columns, 128
// bytes per row, 128-byte swizzled), from which one thread per warpgroup issues one TMA tensor
// reduce-add per panel into the workspace (the TMA unit clips rows and columns outside it).
// A class of its own so that rows without the fast mode (head dim 256: 32-query boxes) never
// instantiate it.
template <class Element, int HD, int BQ, int BK, class SmemOwn>
struct FastDqShapes {
  static constexpr int kDqSplit = HD == 128 ? 2 : 1;
  static constexpr int kDqCols = HD / kDqSplit;  // dQ columns per warpgroup product
  static constexpr int kPanelCols = 32;          // float32 columns per reduce-add box (128 bytes)
  static_assert(kDqCols % kPanelCols == 0, "a warpgroup's dQ columns are whole staging panels");
  // The staging tile's offset (floats) of row r, column c: panel c / 32 of BQ rows x 128 bytes,
  // its 16-byte chunks XOR-swizzled by r % 8, as the TMA's 128-byte swizzle places a box row
  // (the swizzle repeats every 1024 bytes; each panel starts on one). Checked against CuTe's
  // Swizzle<3, 2, 3> by tests/cuda/sm90_layouts_test.cpp.
  static constexpr int staged(int r, int c) {
    const int cp = c % kPanelCols;
    return (c / kPanelCols) * BQ * kPanelCols + r * kPanelCols + ((((cp >> 2) ^ (r & 7)) << 2) | (cp & 3));
  }
  // reduce_dq's stores: staged(r0 + 8 hr, col0 + 8 qi + 2 (lane % 4)) split as the kernel adds it
  // up, a thread's base and swizzle key once, then per (qi, hr) a constant XOR and add. Both rows
  // of a thread share r % 8 (so the swizzle), and a column block's 16-byte chunk is
  // (qi % 4) * 2 + (lane % 4) / 2 with no carry. Written as staged() per store, ptxas kept the
  // 16 addresses live across the walk and spilled them. tests/cuda/sm90_layouts_test.cpp checks
  // the split against staged().
  static constexpr int thread_base(int r0, int lane, int col0) {
    return (col0 / kPanelCols) * BQ * kPanelCols + r0 * kPanelCols + 2 * (lane % 2);
  }
  static constexpr int thread_key(int r0, int lane) { return ((r0 & 7) ^ ((lane % 4) >> 1)) << 2; }
  static constexpr int chunk_offset(int key, int qi) { return (((qi % 4) * 8) ^ key) + (qi / 4) * BQ * kPanelCols; }
  static constexpr int kHalfRowStep = 8 * kPanelCols;  // row r0 + 8 from row r0
  using SmemDs = decltype(cute::tile_to_shape(cute::GMMA::Layout_MN_SW128_Atom<Element>{},
                                              cute::Shape<cute::Int<BQ>, cute::Int<BK>, cute::_2>{}));
  using SmemDsT = decltype(cute::composition(
      SmemDs{}, cute::make_ordered_layout(cute::make_shape(cute::Int<BK>{}, cute::Int<BQ>{}, cute::_2{}),
                                          cute::Step<cute::_2, cute::_1, cute::_3>{})));
  using SmemOwnT = decltype(cute::composition(
      SmemOwn{},
      cute::make_ordered_layout(cute::make_shape(cute::Int<HD>{}, cute::Int<BK>{}), cute::Step<cute::_2, cute::_1>{})));
  using MmaDq = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::ss_op_selector<Element, Element, float,
                                       cute::Shape<cute::Int<BQ>, cute::Int<kDqCols>, cute::Int<BK>>,
                                       cute::GMMA::Major::MN, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::_1, cute::Int<kDqSplit>, cute::_1>>{}));
  static_assert(BQ == 64, "one warpgroup's dQ product covers the walked box's 64 queries");
};

// The fast mode's dS buffers (two parities of BQ x BK) and dQ staging tile (BQ x HD float32),
// or nothing; for the ordered adds (kOrderedDq) each stage's counter and rank (the producer's,
// with the stage's step) and per consumer warpgroup the counter of its adds still in flight.
template <bool kFast, class Element, int kDsElems, int kStageFloats, int kStages>
struct DsStorage {};
template <class Element, int kDsElems, int kStageFloats, int kStages>
struct DsStorage<true, Element, kDsElems, kStageFloats, kStages> {
  alignas(1024) Element ds[2 * kDsElems];
  alignas(1024) float dq_stage[kStageFloats];
  int2 dq_order[kStages];  // (counter, rank) of stage s's walked box
  int dq_pending[2];       // a warpgroup's last counter, not yet released (-1: none)
};

// dK/dV: own K and V (S^T = K Q^T, dP^T = V dO^T), walked Q and dO (dV += P^T dO, dK += dS^T Q).
// kFastDq (the fast mode's kernel): also dQ partials, dQ_box = dS K over the box's 128 keys,
// added into a float32 workspace (the dQ kernel is not run; a convert pass writes dQ).
// Head dim 256: two 64 x 256 fp32 accumulators per warpgroup would take 256 registers per
// thread, so the output columns are split (configs.h dkdv_column_split): kColumnSplit CTAs per
// key box each compute HDO = 128 columns of dK and dV. S^T and dP^T contract over the whole head
// dim in each of them (recomputed: 1.5x the products of an unsplit kernel); the gradient products
// read their column half of the walked Q and dO (SmemWalkHalfT, per stage).
// PERSISTENT_: the persistent variant (device/family.cu persistent_items): each CTA runs work
// items blockIdx.x, + gridDim.x, ... (kernel/backward_producer.cuh), the deterministic kernel's
// and the fast kernel's (with kFastDq: the dS parity and the dQ staging run on across items);
// the one-CTA-per-item kernels (false) are unchanged by it.
// ORDERED_: the fast kernel with its dQ adds in a fixed order per query box (deterministic mode;
// kernel/fna_backward_dkdv.cuh reduce_dq), launched where the plan asks for it (BackwardArgs::
// dq_order); the fast kernel without it is unchanged.
template <class Element_, int HD_, int BQ_, int STAGES_, bool kFastDq_ = false, int CTAS_ = 1, bool PERSISTENT_ = false,
          bool ORDERED_ = false>
struct DkdvTraits : BackwardShapes<Element_, HD_, BQ_, STAGES_> {
  using Base = BackwardShapes<Element_, HD_, BQ_, STAGES_>;
  using Element = Element_;
  static constexpr int HD = HD_, BK = Base::kOwnRows, BQ = BQ_, kStages = STAGES_;
  static constexpr int kColumnSplit = dkdv_column_split(HD), HDO = HD / kColumnSplit;
  static constexpr bool kFastDq = kFastDq_;
  static_assert(!kFastDq || kColumnSplit == 1, "the fast kernel's dQ product needs the whole head dim per CTA");
  static constexpr bool kOrderedDq = ORDERED_;
  static_assert(!kOrderedDq || kFastDq, "ordered dQ adds: the fast kernel's");
  static constexpr int kConsumers = Base::kConsumers, kOwnElems = Base::kOwnElems, kWalkElems = Base::kWalkElems;
  // The gradient products (dV += P^T dO, dK += dS^T Q): 64 own rows x HDO over the walked rows.
  using MmaG = decltype(cute::make_tiled_mma(
      cute::SM90::GMMA::rs_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::Int<HDO>, cute::Int<BQ>>,
                                       cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
  // One stage's column part of a walked box, (HDO, BQ) with rows contiguous per column panel:
  // the panels of columns [part * HDO, (part + 1) * HDO) start part * BQ * HDO elements into the
  // stage (the walked tile is panel-major: tile_to_shape orders the atoms rows first), a multiple
  // of the 1024-byte swizzle period, so this view of its own is the same swizzled tile.
  using SmemWalkHalfT = decltype(cute::composition(
      cute::tile_to_shape(typename Base::Atom{}, cute::Shape<cute::Int<BQ>, cute::Int<HDO>>{}),
      cute::make_ordered_layout(cute::make_shape(cute::Int<HDO>{}, cute::Int<BQ>{}),
                                cute::Step<cute::_2, cute::_1>{})));
  static_assert(kColumnSplit == 1 || (BQ * HDO * sizeof(Element)) % 1024 == 0,
                "a column part of a walked stage starts on a swizzle period");
  // setmaxnreg split ((168 - P) * 128 >= (C - 168) * 256): dK and dV accumulators (64 x HDO fp32
  // each per warpgroup) plus S^T and dP^T (64 x BQ) take 4 * HDO / 2 + BQ registers per thread:
  // 224 at head dim 128 (192 at 256: HDO 128, BQ 32), so the producer warpgroup (one TMA thread
  // stepping the walk) gets 40. The fast kernel at 128 gives it 24 and its consumers 240: its
  // consumers' step loop then holds no local memory (ptxas 13.0: 100/128 bytes of spills ->
  // 36/44, all in the TMA thread and the prologue); on the H100 (2026-12-05, eleventh session,
  // per-kernel ncu durations against its parent in the same run) the fast kernel ran 5-6% faster
  // on dense 8k, flux-2d-s16 and 1d-32k. The deterministic kernel kept 40/232 (12/16 bytes;
  // 24/240 gave 24/32 and was not shown faster). At 256 the consumers need less (HDO 128, BQ 32), and 56 for
  // the producer removed its 32 bytes of spills at 40.
  // Two resident CTAs (configs.h rows 69-72): 80 registers a thread at launch, split 32/104.
  static constexpr int kMinBlocks = CTAS_;
  static_assert(CTAS_ == 1 || (CTAS_ == 2 && HD == 32 && BQ == 32 && !kFastDq), "two CTAs per SM: d32 rows");
  static constexpr bool kPersistent = PERSISTENT_;
  static_assert(!kPersistent || (CTAS_ == 1 && !kOrderedDq && kColumnSplit == 1),
                "the persistent variant: one-CTA-per-SM rows of head dims up to 128 (not the ordered adds)");
  // The persistent variant (deterministic) keeps 40/232: at head dim 128 its producer warps (the
  // next item's walk and tables, the TMA thread's walk state) spill at 40 already, and 56/224 put
  // spills into the consumers' walk loop (cmake/spill_allowlist.txt has the numbers).
  static constexpr int kProducerRegs = CTAS_ == 2 ? 32 : HD > 128 ? 56 : HD > 64 ? (kFastDq_ ? 24 : 40) : 72;
  static constexpr int kConsumerRegs = CTAS_ == 2 ? 104 : HD > 128 ? 224 : HD > 64 ? (kFastDq_ ? 240 : 232) : 216;

  // The walked queries' rows of the Delta pre-pass's workspace (lse2, Delta, 0, 0 each: a step's
  // columns of P^T and dS^T), loaded by the producer's TMA with the step's Q and dO.
  static constexpr bool kWalkRowsByTma = true;
  static constexpr int kRowsBytes = BQ * kRowColumns * int(sizeof(float));
  // Per consumer warpgroup, the windows per axis of a partial step's walked queries, by the
  // parity of the partial steps (dkdv_consume).
  struct Windows {
    int2 win[3][BQ];
  };

  // The fast mode's pieces (FastDqShapes below), instantiated by fast rows only.
  using Fast = FastDqShapes<Element, HD, BQ, BK, typename Base::SmemOwn>;

  // A work item of the persistent variant: an own key box of kv head `head` in batch `b`.
  struct Item {
    TileWalk walk;
    int b, head;
  };
  using PipelineBase =
      std::conditional_t<kPersistent, typename Base::template ItemPipeline<Item>, typename Base::Pipeline>;

  // own_a/own_b: K and V; walk_a/walk_b: Q and dO; walk_rows: the walked queries' rows per
  // stage (kWalkRows map, filled with the stage's boxes); the fast mode's dS buffers.
  struct SharedStorage : PipelineBase, DsStorage<kFastDq, Element, BQ * BK, BQ * HD, kStages> {
    alignas(128) float walk_rows[kStages][BQ][kRowColumns];
    Windows windows[kConsumers][2];
  };
};

// dQ: own Q and dO (S = Q K^T, dP = dO V^T), walked K and V (dQ += dS K).
// PERSISTENT_: the persistent variant (see DkdvTraits).
template <class Element_, int HD_, int BN_, int STAGES_, int CTAS_ = 1, bool PERSISTENT_ = false>
struct DqTraits : BackwardShapes<Element_, HD_, BN_, STAGES_> {
  using Base = BackwardShapes<Element_, HD_, BN_, STAGES_>;
  using Element = Element_;
  static constexpr int HD = HD_, BM = Base::kOwnRows, BN = BN_, kStages = STAGES_;
  static constexpr int kOwnElems = Base::kOwnElems, kWalkElems = Base::kWalkElems;
  // dQ (64 x HD fp32 per warpgroup: HD / 2 registers per thread), S and dP (BN / 2 each) and
  // dS: about 180 at head dim 128, within the forward's split.
  // Two resident CTAs (configs.h rows 69-72): 80 registers a thread at launch, split 40/96.
  static constexpr int kMinBlocks = CTAS_;
  static_assert(CTAS_ == 1 || (CTAS_ == 2 && HD == 32 && BN == 32), "two CTAs per SM: d32 rows");
  static constexpr int kProducerRegs = CTAS_ == 2 ? 40 : 72;
  static constexpr int kConsumerRegs = CTAS_ == 2 ? 96 : 216;
  static constexpr bool kPersistent = PERSISTENT_;
  static_assert(!kPersistent || CTAS_ == 1, "the persistent variant: one-CTA-per-SM rows");
  static constexpr bool kWalkRowsByTma = false;  // the own queries' lse and Delta are read once
  static constexpr bool kOrderedDq = false;

  // A work item of the persistent variant: an own query box of query head `head` in batch `b`,
  // and each own query's window per axis (masks of partial key boxes).
  struct Item {
    TileWalk walk;
    int b, head;
    int2 win[3][BM];
  };

  // own_a/own_b: Q and dO; walk_a/walk_b: K and V.
  struct DefaultStorage : Base::Pipeline {
    int2 win[3][BM];  // each own query's window per axis
  };
  using SharedStorage = std::conditional_t<kPersistent, typename Base::template ItemPipeline<Item>, DefaultStorage>;
};

}  // namespace nattn::cuda::sm90
