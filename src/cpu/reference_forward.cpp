// Layer: cpu. Reference forward: for each query, the softmax over its neighborhood (the
// Cartesian product of per-axis windows) plus the additional keys, in double.
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/reference.h"
#include "cpu/strided.h"

namespace nattn {
namespace {

template <class T>
void forward_typed(const Problem& p, const ForwardTensors& t) {
  const cpu::Grid grid(p);
  const int r = p.rank;
  const int64_t D = p.head_dim, Dv = p.head_dim_v, Na = p.num_additional;
  const int64_t group = p.heads_q / p.heads_kv;
  const double scale = p.effective_scale();
  const cpu::Strided<const T> q(t.q), k(t.k), v(t.v);
  const cpu::Strided<T> out(t.out);
  const bool want_lse = t.lse.defined();
  const cpu::Strided<float> lse = want_lse ? cpu::Strided<float>(t.lse) : cpu::Strided<float>();
  const cpu::Strided<const T> ka = Na ? cpu::Strided<const T>(t.additional_k) : cpu::Strided<const T>();
  const cpu::Strided<const T> va = Na ? cpu::Strided<const T>(t.additional_v) : cpu::Strided<const T>();
  const int64_t N = grid.tokens();

  int64_t window = 1;
  for (int a = 0; a < r; ++a) window *= p.window.kernel_size[a];
  const int64_t work = p.heads_q * (window + Na) * (D + Dv);
  cpu::parallel_for(p.batch * N, work, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> lists[3], koff, voff;
    std::vector<double> qrow(static_cast<size_t>(D)), acc(static_cast<size_t>(Dv)), score;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / N, token = item % N;
      const auto c = grid.coords(token);
      for (int a = 0; a < r; ++a) grid.keys_along(a, c[a], &lists[a]);
      cpu::product_offsets(r, lists, t.k.stride, t.v.stride, &koff, &voff);
      const int64_t nk = int64_t(koff.size());
      score.resize(size_t(nk + Na));
      for (int64_t h = 0; h < p.heads_q; ++h) {
        const int64_t hk = h / group;
        const int64_t qbase = b * q.stride[0] + grid.spatial_offset(c, q.stride) + h * q.stride[r + 1];
        for (int64_t d = 0; d < D; ++d) qrow[size_t(d)] = q.load(qbase + d * q.stride[r + 2]);
        const int64_t kb = b * k.stride[0] + hk * k.stride[r + 1];
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < nk + Na; ++j) {
          double s = 0;
          if (j < nk) {
            for (int64_t d = 0; d < D; ++d) s += qrow[size_t(d)] * k.load(kb + koff[size_t(j)] + d * k.stride[r + 2]);
          } else {
            const int64_t base = b * ka.stride[0] + (j - nk) * ka.stride[1] + hk * ka.stride[2];
            for (int64_t d = 0; d < D; ++d) s += qrow[size_t(d)] * ka.load(base + d * ka.stride[3]);
          }
          s *= scale;
          score[size_t(j)] = s;
          m = std::max(m, s);
        }
        // A query with no key at all (placed boxes, SPEC.md) keeps acc = 0 and gets lse = -inf.
        double sum = 0;
        for (double& s : score) {
          s = std::exp(s - m);
          sum += s;
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        const int64_t vb = b * v.stride[0] + hk * v.stride[r + 1];
        for (int64_t j = 0; j < nk + Na; ++j) {
          const double w = score[size_t(j)] / sum;
          if (j < nk) {
            for (int64_t d = 0; d < Dv; ++d) acc[size_t(d)] += w * v.load(vb + voff[size_t(j)] + d * v.stride[r + 2]);
          } else {
            const int64_t base = b * va.stride[0] + (j - nk) * va.stride[1] + hk * va.stride[2];
            for (int64_t d = 0; d < Dv; ++d) acc[size_t(d)] += w * va.load(base + d * va.stride[3]);
          }
        }
        const int64_t ob = b * out.stride[0] + grid.spatial_offset(c, out.stride) + h * out.stride[r + 1];
        for (int64_t d = 0; d < Dv; ++d) out.store(ob + d * out.stride[r + 2], acc[size_t(d)]);
        if (want_lse)
          lse.store(b * lse.stride[0] + grid.spatial_offset(c, lse.stride) + h * lse.stride[r + 1], m + std::log(sum));
      }
    }
  });
}

}  // namespace

Status reference_forward(const Problem& p, const ForwardTensors& t) {
  cpu::with_storage(t.q.dtype, [&](auto tag) { forward_typed<decltype(tag)>(p, t); });
  return Status::Ok();
}

}  // namespace nattn
