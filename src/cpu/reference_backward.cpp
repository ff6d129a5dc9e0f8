// Layer: cpu. Reference backward, in double, as gathers (each output element is written by
// exactly one thread, so it is deterministic without atomics):
//   P_ij = exp(scale * q_i.k_j - lse_i),  dP_ij = do_i.v_j,  Delta_i = do_i.o_i - dlse_i,
//   dS_ij = P_ij (dP_ij - Delta_i),
//   dq_i = scale * sum_j dS_ij k_j,  dk_j = scale * sum_i dS_ij q_i,  dv_j = sum_i P_ij do_i.
// dk/dv visit, for each key, the queries whose window holds it (the inverse map), and every
// query head of the key's group.
#include <cmath>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/reference.h"
#include "cpu/strided.h"

namespace nattn {
namespace {

template <class T>
struct BackwardRun {
  const Problem& p;
  const BackwardTensors& t;
  cpu::Grid grid;
  int r;
  int64_t D, Dv, Na, group, N;
  double scale;
  cpu::Strided<const T> q, k, v, o, dout, ka, va;
  cpu::Strided<const float> lse, dlse;
  cpu::Strided<T> dq, dk, dv, dka, dva;
  std::vector<double> delta;  // [B, N, Hq]

  BackwardRun(const Problem& p_, const BackwardTensors& t_)
      : p(p_),
        t(t_),
        grid(p_),
        r(p_.rank),
        D(p_.head_dim),
        Dv(p_.head_dim_v),
        Na(p_.num_additional),
        group(p_.heads_q / p_.heads_kv),
        N(grid.tokens()),
        scale(p_.effective_scale()),
        q(t_.q),
        k(t_.k),
        v(t_.v),
        o(t_.out),
        dout(t_.dout),
        lse(t_.lse),
        dq(t_.dq),
        dk(t_.dk),
        dv(t_.dv) {
    if (Na) {
      ka = cpu::Strided<const T>(t.additional_k);
      va = cpu::Strided<const T>(t.additional_v);
      dka = cpu::Strided<T>(t.d_additional_k);
      dva = cpu::Strided<T>(t.d_additional_v);
    }
    if (t.dlse.defined()) dlse = cpu::Strided<const float>(t.dlse);
  }

  // Element offsets of the row (b, coords, h) of a [B, X.., H, *] tensor, and of a token's lse.
  template <class S>
  int64_t row(const S& x, int64_t b, const std::array<int64_t, 3>& c, int64_t h) const {
    return b * x.stride[0] + grid.spatial_offset(c, x.stride) + h * x.stride[r + 1];
  }
  double dot(const cpu::Strided<const T>& x, int64_t xo, int64_t xs, const cpu::Strided<const T>& y, int64_t yo,
             int64_t ys, int64_t n) const {
    double s = 0;
    for (int64_t d = 0; d < n; ++d) s += x.load(xo + d * xs) * y.load(yo + d * ys);
    return s;
  }
  double p_of(double s_raw, double lse_i) const { return std::exp(scale * s_raw - lse_i); }
  // Keys in a query's window (the work estimate of parallel_for).
  int64_t window() const {
    int64_t n = 1;
    for (int a = 0; a < r; ++a) n *= p.window.kernel_size[a];
    return n;
  }

  void compute_delta() {
    delta.assign(size_t(p.batch * N * p.heads_q), 0.0);
    cpu::parallel_for(p.batch * N, p.heads_q * Dv, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / N;
        const auto c = grid.coords(item % N);
        for (int64_t h = 0; h < p.heads_q; ++h) {
          double s = dot(dout, row(dout, b, c, h), dout.stride[r + 2], o, row(o, b, c, h), o.stride[r + 2], Dv);
          if (t.dlse.defined())
            s -= dlse.load(b * dlse.stride[0] + grid.spatial_offset(c, dlse.stride) + h * dlse.stride[r + 1]);
          delta[size_t(item * p.heads_q + h)] = s;
        }
      }
    });
  }

  double lse_at(int64_t b, const std::array<int64_t, 3>& c, int64_t h) const {
    return lse.load(b * lse.stride[0] + grid.spatial_offset(c, lse.stride) + h * lse.stride[r + 1]);
  }

  void compute_dq() {
    cpu::parallel_for(p.batch * N, p.heads_q * (window() + Na) * (2 * D + Dv), [&](int64_t begin, int64_t end) {
      std::vector<int64_t> lists[3], koff, voff;
      std::vector<double> acc(static_cast<size_t>(D));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / N;
        const auto c = grid.coords(item % N);
        for (int a = 0; a < r; ++a) grid.keys_along(a, c[a], &lists[a]);
        cpu::product_offsets(r, lists, k.stride, v.stride, &koff, &voff);
        for (int64_t h = 0; h < p.heads_q; ++h) {
          const int64_t hk = h / group;
          const int64_t qo = row(q, b, c, h), doo = row(dout, b, c, h);
          const double li = lse_at(b, c, h), di = delta[size_t(item * p.heads_q + h)];
          std::fill(acc.begin(), acc.end(), 0.0);
          auto add_key = [&](const cpu::Strided<const T>& kk, int64_t ko, int64_t kst, const cpu::Strided<const T>& vv,
                             int64_t vo, int64_t vst) {
            const double pij = p_of(dot(q, qo, q.stride[r + 2], kk, ko, kst, D), li);
            const double ds = pij * (dot(dout, doo, dout.stride[r + 2], vv, vo, vst, Dv) - di);
            for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += ds * kk.load(ko + d * kst);
          };
          const int64_t kb = b * k.stride[0] + hk * k.stride[r + 1], vb = b * v.stride[0] + hk * v.stride[r + 1];
          for (size_t j = 0; j < koff.size(); ++j)
            add_key(k, kb + koff[j], k.stride[r + 2], v, vb + voff[j], v.stride[r + 2]);
          for (int64_t j = 0; j < Na; ++j)
            add_key(ka, b * ka.stride[0] + j * ka.stride[1] + hk * ka.stride[2], ka.stride[3], va,
                    b * va.stride[0] + j * va.stride[1] + hk * va.stride[2], va.stride[3]);
          const int64_t out = row(dq, b, c, h);
          for (int64_t d = 0; d < D; ++d) dq.store(out + d * dq.stride[r + 2], scale * acc[size_t(d)]);
        }
      }
    });
  }

  // dk/dv of one key row (ko/vo offsets in k-like/v-like tensors) from a list of query
  // (batch, coords) items; `for_each_query` enumerates them.
  template <class ForEachQuery>
  void key_grads(const cpu::Strided<const T>& kk, int64_t ko, int64_t kst, const cpu::Strided<const T>& vv, int64_t vo,
                 int64_t vst, int64_t b, int64_t hk, ForEachQuery&& for_each_query, std::vector<double>* gk,
                 std::vector<double>* gv) const {
    std::fill(gk->begin(), gk->end(), 0.0);
    std::fill(gv->begin(), gv->end(), 0.0);
    for_each_query([&](const std::array<int64_t, 3>& c, int64_t token) {
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const int64_t qo = row(q, b, c, h), doo = row(dout, b, c, h);
        const double pij = p_of(dot(q, qo, q.stride[r + 2], kk, ko, kst, D), lse_at(b, c, h));
        const double ds = pij * (dot(dout, doo, dout.stride[r + 2], vv, vo, vst, Dv) -
                                 delta[size_t((b * N + token) * p.heads_q + h)]);
        for (int64_t d = 0; d < D; ++d) (*gk)[size_t(d)] += ds * q.load(qo + d * q.stride[r + 2]);
        for (int64_t d = 0; d < Dv; ++d) (*gv)[size_t(d)] += pij * dout.load(doo + d * dout.stride[r + 2]);
      }
    });
  }

  void compute_dkdv() {
    const int64_t Nk = grid.key_tokens();
    cpu::parallel_for(p.batch * Nk, p.heads_q * window() * 2 * (D + Dv), [&](int64_t begin, int64_t end) {
      std::vector<int64_t> lists[3];
      std::vector<double> gk(static_cast<size_t>(D)), gv(static_cast<size_t>(Dv));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / Nk;
        const auto kc = grid.key_coords(item % Nk);
        for (int a = 0; a < r; ++a) grid.queries_along(a, kc[a], &lists[a]);
        auto queries = [&](auto&& fn) {
          const size_t n1 = r > 1 ? lists[1].size() : 1, n2 = r > 2 ? lists[2].size() : 1;
          for (int64_t i0 : lists[0])
            for (size_t j1 = 0; j1 < n1; ++j1)
              for (size_t j2 = 0; j2 < n2; ++j2) {
                std::array<int64_t, 3> c{i0, r > 1 ? lists[1][j1] : 0, r > 2 ? lists[2][j2] : 0};
                fn(c, grid.token_of(c));
              }
        };
        for (int64_t hk = 0; hk < p.heads_kv; ++hk) {
          const int64_t ko = row(k, b, kc, hk), vo = row(v, b, kc, hk);
          key_grads(k, ko, k.stride[r + 2], v, vo, v.stride[r + 2], b, hk, queries, &gk, &gv);
          const int64_t dko = row(dk, b, kc, hk), dvo = row(dv, b, kc, hk);
          for (int64_t d = 0; d < D; ++d) dk.store(dko + d * dk.stride[r + 2], scale * gk[size_t(d)]);
          for (int64_t d = 0; d < Dv; ++d) dv.store(dvo + d * dv.stride[r + 2], gv[size_t(d)]);
        }
      }
    });
  }

  // Every query attends to every additional key.
  void compute_additional() {
    if (Na == 0) return;
    cpu::parallel_for(p.batch * Na * p.heads_kv, group * N * 2 * (D + Dv), [&](int64_t begin, int64_t end) {
      std::vector<double> gk(static_cast<size_t>(D)), gv(static_cast<size_t>(Dv));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t hk = item % p.heads_kv, j = (item / p.heads_kv) % Na, b = item / (p.heads_kv * Na);
        auto queries = [&](auto&& fn) {
          for (int64_t token = 0; token < N; ++token) fn(grid.coords(token), token);
        };
        const int64_t ko = b * ka.stride[0] + j * ka.stride[1] + hk * ka.stride[2];
        const int64_t vo = b * va.stride[0] + j * va.stride[1] + hk * va.stride[2];
        key_grads(ka, ko, ka.stride[3], va, vo, va.stride[3], b, hk, queries, &gk, &gv);
        const int64_t dko = b * dka.stride[0] + j * dka.stride[1] + hk * dka.stride[2];
        const int64_t dvo = b * dva.stride[0] + j * dva.stride[1] + hk * dva.stride[2];
        for (int64_t d = 0; d < D; ++d) dka.store(dko + d * dka.stride[3], scale * gk[size_t(d)]);
        for (int64_t d = 0; d < Dv; ++d) dva.store(dvo + d * dva.stride[3], gv[size_t(d)]);
      }
    });
  }
};

}  // namespace

Status reference_backward(const Problem& p, const BackwardTensors& t) {
  cpu::with_storage(t.q.dtype, [&](auto tag) {
    BackwardRun<decltype(tag)> run(p, t);
    run.compute_delta();
    run.compute_dq();
    run.compute_dkdv();
    run.compute_additional();
  });
  return Status::Ok();
}

}  // namespace nattn
