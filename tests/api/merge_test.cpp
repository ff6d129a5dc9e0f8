// Layer: tests. merge_attentions: one softmax from partials, the formula of api.h, -inf partials.
// NA without additional keys merged with dense attention over the additional keys alone must
// reproduce NA with additional keys; the formula is checked in double with n-way merges,
// -inf partials and strided views.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "support/call_check.h"
#include "support/problems.h"

namespace nattn_test {
namespace {

using nattn::DType;

using Merge = SeededTest;

// A contiguous [B, X.., H, Dv] (or [B, X.., H]) view read as [B, N, H, Dv] (or [B, N, H]).
nattn::TensorView flat_tokens(nattn::TensorView v, int rank) {
  nattn::TensorView f = v;
  f.ndim = v.ndim - rank + 1;
  f.shape[1] = 1;
  for (int a = 0; a < rank; ++a) f.shape[1] *= v.shape[1 + a];
  for (int d = 2; d < f.ndim; ++d) {
    f.shape[d] = v.shape[d + rank - 1];
    f.stride[d] = v.stride[d + rank - 1];
  }
  f.stride[1] = v.stride[rank];
  return f;
}

TEST_F(Merge, NeighborhoodPlusDenseOverAdditionalKeysIsOneSoftmax) {
  CallConfig full;
  full.problem = make_problem(2, {3, 5, 1}, make_window({2, 3, 2}, {1, 2, 1}, {1, 1, 1}, {true, false, false}));
  full.problem.batch = 2;
  full.problem.heads_q = 4;
  full.problem.heads_kv = 2;
  full.problem.head_dim_v = 3;
  full.problem.num_additional = 15;  // == tokens, so dense attention can read them as keys
  full.problem.scale = 0.7;
  const CallTensors t = make_forward_call(full, rng);
  ASSERT_TRUE(run_forward(full, t).ok());

  // The neighborhood alone.
  CallConfig na = full;
  na.problem.num_additional = 0;
  CallTensors part = make_forward_call(na, rng);
  nattn::ForwardTensors na_views = t.forward_views();
  na_views.additional_k = na_views.additional_v = {};
  na_views.out = part.out.view();
  na_views.lse = part.lse.view();
  ASSERT_TRUE(nattn::forward(na.problem, na_views).ok());

  // Dense attention of the same queries over the additional keys alone.
  nattn::AttentionProblem dense;
  dense.batch = 2;
  dense.seq_len = 15;
  dense.heads_q = 4;
  dense.heads_kv = 2;
  dense.head_dim = 4;
  dense.head_dim_v = 3;
  dense.scale = 0.7;
  TestTensor out2({2, 15, 4, 3}, DType::kFloat32, Layout::kPermuted, rng),
      lse2({2, 15, 4}, DType::kFloat32, Layout::kPadded, rng);
  nattn::ForwardTensors dv;
  dv.q = flat_tokens(t.q.view(), 2);
  dv.k = t.ka.view();
  dv.v = t.va.view();
  dv.out = out2.view();
  dv.lse = lse2.view();
  const nattn::Status ds = nattn::attention_forward(dense, dv);
  ASSERT_TRUE(ds.ok()) << ds.message();

  TestTensor merged({2, 15, 4, 3}, DType::kFloat32, Layout::kPadded, rng),
      merged_lse({2, 15, 4}, DType::kFloat32, Layout::kPermuted, rng);
  const nattn::Status ms =
      nattn::merge_attentions({flat_tokens(part.out.view(), 2), out2.view()},
                              {flat_tokens(part.lse.view(), 2), lse2.view()}, merged.view(), merged_lse.view());
  ASSERT_TRUE(ms.ok()) << ms.message();
  expect_fully_written(merged, "out");
  expect_fully_written(merged_lse, "lse");
  // The partial lses are float32, so agreement is to ~1e-7 relative.
  expect_close(merged.read(), t.out.read(), {1e-6, 1e-6}, "merged out");
  expect_close(merged_lse.read(), t.lse.read(), {1e-6, 1e-6}, "merged lse");
}

// api.h: lse = log(sum_i exp(lse_i)), out = sum_i exp(lse_i - lse) out_i; -inf partials
// contribute nothing (whatever their out holds); all -inf gives out = 0, lse = -inf.
void check_merge_formula(int n, DType dtype, Rng& rng) {
  SCOPED_TRACE(std::to_string(n) + "-way merge, " + nattn::dtype_name(dtype));
  const std::vector<int64_t> oshape{2, 7, 3, 5}, lshape{2, 7, 3};
  const int64_t rows = 2 * 7 * 3, dv = 5;
  std::vector<TestTensor> outs, lses;
  std::vector<nattn::TensorView> ov, lv;
  std::vector<std::vector<double>> o(static_cast<size_t>(n)), l(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    outs.emplace_back(oshape, dtype, random_layout(rng, false), rng);
    lses.emplace_back(lshape, DType::kFloat32, random_layout(rng, false), rng);
    std::vector<double> lv_i(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      // The first row of each batch is -inf in every partial (broadcast views included);
      // other rows are -inf in some.
      const bool empty = r % (rows / 2) == 0 || rng.coin(0.2);
      lv_i[size_t(r)] = empty ? -std::numeric_limits<double>::infinity() : rng.uniform(-4.0, 4.0);
    }
    outs.back().fill_random(rng);
    lses.back().write(lv_i);
    l[size_t(i)] = lses.back().read();
    o[size_t(i)] = outs.back().read();
    // The out rows of -inf partials hold NaN: they must be ignored, not multiplied by 0.
    std::vector<double> poisoned = o[size_t(i)];
    for (int64_t r = 0; r < rows; ++r)
      if (std::isinf(l[size_t(i)][size_t(r)]))
        for (int64_t d = 0; d < dv; ++d) poisoned[size_t(r * dv + d)] = std::nan("");
    if (outs.back().layout() != Layout::kBroadcast) outs.back().write(poisoned);
    o[size_t(i)] = outs.back().read();
    ov.push_back(outs.back().view());
    lv.push_back(lses.back().view());
  }
  // What a broadcast view stores is its last write; the expectation reads the stored values.
  for (int i = 0; i < n; ++i) l[size_t(i)] = lses[size_t(i)].read();
  std::vector<double> want_out(size_t(rows * dv), 0.0), want_lse(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += std::exp(l[size_t(i)][size_t(r)]);
    want_lse[size_t(r)] = std::log(sum);
    for (int i = 0; i < n; ++i) {
      const double w = std::exp(l[size_t(i)][size_t(r)]) / sum;
      if (w > 0)
        for (int64_t d = 0; d < dv; ++d) want_out[size_t(r * dv + d)] += w * o[size_t(i)][size_t(r * dv + d)];
    }
  }
  TestTensor out(oshape, dtype, random_layout(rng, true), rng),
      lse(lshape, DType::kFloat32, random_layout(rng, true), rng);
  const nattn::Status s = nattn::merge_attentions(ov, lv, out.view(), lse.view());
  ASSERT_TRUE(s.ok()) << s.message();
  expect_fully_written(out, "out");
  expect_fully_written(lse, "lse");
  std::vector<double> got_lse = lse.read();
  for (int64_t r = 0; r < rows; ++r)
    if (std::isinf(want_lse[size_t(r)])) {
      EXPECT_TRUE(std::isinf(got_lse[size_t(r)]) && got_lse[size_t(r)] < 0)
          << "row " << r << ": " << got_lse[size_t(r)];
      got_lse[size_t(r)] = want_lse[size_t(r)] = 0;
    }
  expect_close(out.read(), want_out, storage_tolerance(dtype), "out");
  expect_close(got_lse, want_lse, lse_tolerance(), "lse");
}

TEST_F(Merge, FormulaWithInfinitePartialsAndStridedViews) {
  for (int n : {1, 2, 3, 5})
    for (DType dt : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16})
      check_merge_formula(n, dt, rng);
}

}  // namespace
}  // namespace nattn_test
