// Layer: cpu. Merging partial attentions by their logsumexp (see api.h).
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/reference.h"
#include "cpu/strided.h"

namespace nattn {
namespace {

// Offset of row `row` (all dims but the last of `x`'s row shape) for a view whose first
// `ndim` dims are the row dims.
int64_t row_offset(const TensorView& x, const TensorView& shape_of, int ndim, int64_t row) {
  int64_t off = 0;
  for (int d = ndim - 1; d >= 0; --d) {
    off += (row % shape_of.shape[d]) * x.stride[d];
    row /= shape_of.shape[d];
  }
  return off;
}

template <class T>
void merge_typed(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                 const TensorView& lse) {
  const int nd = out.ndim - 1;  // row dims = [..., H]
  const int64_t Dv = out.shape[nd];
  int64_t rows = 1;
  for (int d = 0; d < nd; ++d) rows *= out.shape[d];
  cpu::parallel_for(rows, int64_t(outs.size()) * 2 * Dv, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(static_cast<size_t>(Dv)), w(outs.size());
    for (int64_t row = begin; row < end; ++row) {
      double m = -std::numeric_limits<double>::infinity();
      for (size_t i = 0; i < outs.size(); ++i) {
        w[i] = cpu::Strided<const float>(lses[i]).load(row_offset(lses[i], out, nd, row));
        m = std::max(m, w[i]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double total = m;
      if (std::isfinite(m)) {
        double sum = 0;
        for (double& x : w) {
          x = std::exp(x - m);
          sum += x;
        }
        total = m + std::log(sum);
        for (size_t i = 0; i < outs.size(); ++i) {
          if (w[i] == 0) continue;
          const cpu::Strided<const T> o(outs[i]);
          const int64_t base = row_offset(outs[i], out, nd, row);
          for (int64_t d = 0; d < Dv; ++d) acc[size_t(d)] += w[i] / sum * o.load(base + d * o.stride[nd]);
        }
      }
      const cpu::Strided<T> o(out);
      const int64_t base = row_offset(out, out, nd, row);
      for (int64_t d = 0; d < Dv; ++d) o.store(base + d * o.stride[nd], acc[size_t(d)]);
      cpu::Strided<float>(lse).store(row_offset(lse, out, nd, row), total);
    }
  });
}

}  // namespace

Status reference_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                       const TensorView& lse) {
  cpu::with_storage(out.dtype, [&](auto tag) { merge_typed<decltype(tag)>(outs, lses, out, lse); });
  return Status::Ok();
}

}  // namespace nattn
