// Layer: tests. The sm90 backward's shared-memory layouts as CuTe sees them, checked on the host
// (no device): what the kernels assume of the layouts CuTe builds, element by element.
//  - The column part of a walked stage (DkdvTraits::SmemWalkHalfT, head dim 256): the view a
//    dK/dV CTA of a split head dim reads its gradient products' B operand through, placed part *
//    BQ * HDO elements into the stage, is the full stage's (SmemWalkT) columns of that part.
//  - The fast kernel's dQ product fragments (FastDqShapes::MmaDq): the (row, column) of each
//    accumulator element that reduce_dq writes to the staging tile, for the product split over
//    both warpgroups (head dim 128) and the one-warpgroup product (below).
//  - The staging tile's offsets (FastDqShapes::staged): CuTe's 128-byte swizzle of 32-bit
//    elements (Swizzle<3, 2, 3>) over 32-column panels, which is how the TMA lays out a box.
//  - The fast kernel's dS^T store with stmatrix (fna_backward_dkdv.cuh): the tiled copy built
//    from the S^T product's accumulator layout reads register i of each thread where
//    partition_C places it, so every dS^T element lands at its own (key, query).
#include <cute/atom/copy_traits_sm90.hpp>
#include <cute/tensor.hpp>
#include <gtest/gtest.h>

#include "cuda/sm90/kernel/backward_traits.cuh"

namespace nattn_test {
namespace {

using namespace cute;

template <class Element>
void expect_column_parts_are_views_of_the_stage() {
  using Tr = nattn::cuda::sm90::DkdvTraits<Element, 256, 32, 2, false>;
  static_assert(Tr::kColumnSplit == 2, "head dim 256 splits its dK/dV columns");
  const auto full = typename Tr::SmemWalkT{};      // (HD, BQ, stages) -> element offset
  const auto part = typename Tr::SmemWalkHalfT{};  // (HDO, BQ) -> element offset from the part's start
  int mismatches = 0;
  for (int p = 0; p < Tr::kColumnSplit; ++p)
    for (int stage = 0; stage < Tr::kStages; ++stage)
      for (int i = 0; i < Tr::HDO; ++i)
        for (int j = 0; j < Tr::BQ; ++j) {
          const int want = int(full(p * Tr::HDO + i, j, stage));
          const int got = stage * Tr::kWalkElems + p * Tr::BQ * Tr::HDO + int(part(i, j));
          if (want != got && mismatches++ < 5)
            ADD_FAILURE() << "part " << p << " stage " << stage << " column " << i << " row " << j << ": " << got
                          << " vs the stage's " << want;
        }
  EXPECT_EQ(mismatches, 0);
}

TEST(Sm90Layouts, ColumnPartOfAWalkedStageIsItsOwnSwizzledTile) {
  expect_column_parts_are_views_of_the_stage<cutlass::bfloat16_t>();
  expect_column_parts_are_views_of_the_stage<cutlass::half_t>();
}

// Thread ctid (0..255 over the consumer warpgroups) holds the fast dQ product's element i at
// (row, column): as reduce_dq writes it, element i = 4 qi + 2 hr + c of warpgroup wg's columns.
template <int HD>
void expect_dq_fragments_where_reduce_dq_writes_them() {
  using Tr = nattn::cuda::sm90::DkdvTraits<cutlass::bfloat16_t, HD, 64, 2, true>;
  using F = typename Tr::Fast;
  typename F::MmaDq mma;
  const auto coords = make_identity_tensor(Shape<Int<Tr::BQ>, Int<HD>>{});
  const int threads = F::kDqSplit == 2 ? 256 : 128;
  int mismatches = 0, elements = 0;
  for (int ctid = 0; ctid < threads; ++ctid) {
    const auto frag = mma.get_thread_slice(ctid).partition_C(coords);
    const int t = ctid % 128, wg = ctid / 128, lane = t % 32;
    const int col0 = F::kDqSplit == 2 ? wg * F::kDqCols : 0;
    for (int i = 0; i < int(size(frag)); ++i) {
      const int qi = i / 4, hr = (i % 4) / 2, c = i % 2;
      const int row = (t / 32) * 16 + lane / 4 + hr * 8, col = col0 + qi * 8 + 2 * (lane % 4) + c;
      ++elements;
      if ((int(get<0>(frag(i))) != row || int(get<1>(frag(i))) != col) && mismatches++ < 5)
        ADD_FAILURE() << "head dim " << HD << ", thread " << ctid << ", element " << i << ": CuTe ("
                      << int(get<0>(frag(i))) << ", " << int(get<1>(frag(i))) << "), reduce_dq (" << row << ", " << col
                      << ")";
    }
  }
  EXPECT_EQ(elements, Tr::BQ * HD);  // every element of the product, once
  EXPECT_EQ(mismatches, 0);
}

TEST(Sm90Layouts, FastDqFragmentsLandWhereReduceDqWritesThem) {
  expect_dq_fragments_where_reduce_dq_writes_them<128>();  // both warpgroups, 64 columns each
  expect_dq_fragments_where_reduce_dq_writes_them<64>();   // one warpgroup, every column
  expect_dq_fragments_where_reduce_dq_writes_them<32>();
}

TEST(Sm90Layouts, DqStagingIsTheSwizzledBoxLayout) {
  using F = nattn::cuda::sm90::DkdvTraits<cutlass::bfloat16_t, 128, 64, 2, true>::Fast;
  constexpr int BQ = 64, PC = F::kPanelCols;
  const Swizzle<3, 2, 3> sw128;  // 128-byte swizzle in 4-byte elements
  for (int r = 0; r < BQ; ++r)
    for (int c = 0; c < 128; ++c) {
      const int panel = c / PC;
      ASSERT_EQ(F::staged(r, c), panel * BQ * PC + int(sw128(r * PC + c % PC))) << "row " << r << ", column " << c;
    }
}

// reduce_dq adds its store offsets up from a per-thread base and key (FastDqShapes::thread_base):
// every (thread, qi, hr) lands where staged() puts its two columns.
template <int HD>
void expect_reduce_dq_offsets_are_staged() {
  using F = typename nattn::cuda::sm90::DkdvTraits<cutlass::bfloat16_t, HD, 64, 2, true>::Fast;
  constexpr int QI = F::kDqCols / 8;
  int mismatches = 0;
  for (int wg = 0; wg < F::kDqSplit; ++wg)
    for (int t = 0; t < 128; ++t) {
      const int lane = t % 32, r0 = (t / 32) * 16 + lane / 4, col0 = wg * F::kDqCols;
      const int base = F::thread_base(r0, lane, col0), key = F::thread_key(r0, lane);
      for (int qi = 0; qi < QI; ++qi)
        for (int hr = 0; hr < 2; ++hr)
          for (int c = 0; c < 2; ++c) {
            const int got = base + F::chunk_offset(key, qi) + hr * F::kHalfRowStep + c;
            const int want = F::staged(r0 + 8 * hr, col0 + 8 * qi + 2 * (lane % 4) + c);
            if (got != want && mismatches++ < 5)
              ADD_FAILURE() << "head dim " << HD << ", warpgroup " << wg << ", thread " << t << ", qi " << qi << ", hr "
                            << hr << ", c " << c << ": " << got << " vs staged " << want;
          }
    }
  EXPECT_EQ(mismatches, 0);
}

TEST(Sm90Layouts, ReduceDqOffsetsAreTheStagedLayout) {
  expect_reduce_dq_offsets_are_staged<128>();
  expect_reduce_dq_offsets_are_staged<64>();
  expect_reduce_dq_offsets_are_staged<32>();
}

// As the fast kernel stores dS^T: copy(r2s, r2s.retile_S(rDs), r2s.partition_D(sDsT)). Slot j of
// the copy's source holds the accumulator register retile_S puts there; the copy writes it to
// the logical (key, query) partition_S gives slot j, which must be that register's
// partition_C coordinate.
template <class Element, int HD>
void expect_stmatrix_copy_keeps_accumulator_coordinates() {
  using Tr = nattn::cuda::sm90::DkdvTraits<Element, HD, 64, 2, true>;
  typename Tr::MmaS mma_s;
  const auto r2s = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_s);
  const auto coords = make_identity_tensor(Shape<Int<Tr::BK>, Int<Tr::BQ>>{});
  using Acc = decltype(partition_fragment_C(mma_s, Shape<Int<Tr::BK>, Int<Tr::BQ>>{}));
  int index[cosize_v<typename Acc::layout_type>];
  const auto registers = make_tensor(&index[0], typename Acc::layout_type{});
  for (int i = 0; i < int(size(registers)); ++i) registers(i) = i;
  int mismatches = 0, slots = 0;
  for (int ctid = 0; ctid < 256; ++ctid) {
    const auto c_frag = mma_s.get_thread_slice(ctid).partition_C(coords);
    const auto thr = r2s.get_thread_slice(ctid);
    const auto src = thr.retile_S(registers);
    const auto where = thr.partition_S(coords);
    ASSERT_EQ(int(size(src)), int(size(c_frag)));
    ASSERT_EQ(int(size(where)), int(size(c_frag)));
    for (int j = 0; j < int(size(src)); ++j) {
      ++slots;
      const auto want = c_frag(src(j));
      const auto got = where(j);
      if ((int(get<0>(want)) != int(get<0>(got)) || int(get<1>(want)) != int(get<1>(got))) && mismatches++ < 5)
        ADD_FAILURE() << "head dim " << HD << ", thread " << ctid << ", slot " << j << ": register " << src(j)
                      << " is at (" << int(get<0>(want)) << ", " << int(get<1>(want)) << "), the copy writes ("
                      << int(get<0>(got)) << ", " << int(get<1>(got)) << ")";
    }
  }
  EXPECT_EQ(slots, Tr::BK * Tr::BQ);  // every element of dS^T, once
  EXPECT_EQ(mismatches, 0);
}

TEST(Sm90Layouts, FastDsStmatrixCopyKeepsAccumulatorCoordinates) {
  expect_stmatrix_copy_keeps_accumulator_coordinates<cutlass::bfloat16_t, 128>();
  expect_stmatrix_copy_keeps_accumulator_coordinates<cutlass::half_t, 128>();
  expect_stmatrix_copy_keeps_accumulator_coordinates<cutlass::bfloat16_t, 64>();
  expect_stmatrix_copy_keeps_accumulator_coordinates<cutlass::bfloat16_t, 32>();
}

}  // namespace
}  // namespace nattn_test
