// Layer: tests. Dense masked attention in double (see dense_reference.h).
#include "support/dense_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nattn_test {
namespace {

// One attended key of a query row: a pointer to its k row and v row (and, for backward,
// where their gradients go).
struct KeyRef {
  const double* k;
  const double* v;
  double* dk;
  double* dv;
};

// Walks every (batch, query token, query head) row with its attended keys.
template <class F>
void for_each_row(const DenseSizes& s, const TokenMask& mask, const DenseInputs& in, DenseGrads* g, F&& f) {
  const int64_t N = s.tokens, Na = s.num_additional, D = s.head_dim, Dv = s.head_dim_v;
  const int64_t group = s.heads_q / s.heads_kv;  // query head h reads key/value head h / group
  std::vector<KeyRef> keys;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t h = 0; h < s.heads_q; ++h) {
        const int64_t hk = h / group;
        keys.clear();
        for (int64_t j = 0; j < N; ++j) {
          if (!mask(i, j)) continue;
          const int64_t kr = (b * N + j) * s.heads_kv + hk;
          keys.push_back({&in.k[size_t(kr * D)], &in.v[size_t(kr * Dv)], g ? &g->dk[size_t(kr * D)] : nullptr,
                          g ? &g->dv[size_t(kr * Dv)] : nullptr});
        }
        for (int64_t j = 0; j < Na; ++j) {
          const int64_t kr = (b * Na + j) * s.heads_kv + hk;
          keys.push_back({&in.ka[size_t(kr * D)], &in.va[size_t(kr * Dv)], g ? &g->dka[size_t(kr * D)] : nullptr,
                          g ? &g->dva[size_t(kr * Dv)] : nullptr});
        }
        f((b * N + i) * s.heads_q + h, keys);
      }
}

double dot(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

// Softmax probabilities of a query row over `keys`; returns the logsumexp.
double softmax(const DenseSizes& s, const double* q, const std::vector<KeyRef>& keys, std::vector<double>* p) {
  p->resize(keys.size());
  double m = -std::numeric_limits<double>::infinity();
  for (size_t j = 0; j < keys.size(); ++j) {
    (*p)[j] = s.scale * dot(q, keys[j].k, s.head_dim);
    m = std::max(m, (*p)[j]);
  }
  double sum = 0;
  for (double& x : *p) sum += std::exp(x - m);
  const double lse = m + std::log(sum);
  for (double& x : *p) x = std::exp(x - lse);
  return lse;
}

}  // namespace

DenseSizes dense_sizes(const nattn::Problem& p) {
  DenseSizes s;
  s.batch = p.batch;
  s.tokens = 1;
  for (int a = 0; a < p.rank; ++a) s.tokens *= p.extent[a];
  s.heads_q = p.heads_q;
  s.heads_kv = p.heads_kv;
  s.head_dim = p.head_dim;
  s.head_dim_v = p.head_dim_v;
  s.num_additional = p.num_additional;
  s.scale = p.scale.has_value() ? *p.scale : 1.0 / std::sqrt(double(p.head_dim));
  return s;
}

DenseSizes dense_sizes(const nattn::AttentionProblem& p) {
  DenseSizes s;
  s.batch = p.batch;
  s.tokens = p.seq_len;
  s.heads_q = p.heads_q;
  s.heads_kv = p.heads_kv;
  s.head_dim = p.head_dim;
  s.head_dim_v = p.head_dim_v;
  s.scale = p.scale.has_value() ? *p.scale : 1.0 / std::sqrt(double(p.head_dim));
  return s;
}

DenseForward dense_forward(const DenseSizes& s, const TokenMask& mask, const DenseInputs& in) {
  DenseForward f;
  const int64_t rows = s.batch * s.tokens * s.heads_q, Dv = s.head_dim_v;
  f.out.assign(size_t(rows * Dv), 0.0);
  f.lse.assign(size_t(rows), 0.0);
  std::vector<double> p;
  for_each_row(s, mask, in, nullptr, [&](int64_t row, const std::vector<KeyRef>& keys) {
    f.lse[size_t(row)] = softmax(s, &in.q[size_t(row * s.head_dim)], keys, &p);
    double* o = &f.out[size_t(row * Dv)];
    for (size_t j = 0; j < keys.size(); ++j)
      for (int64_t d = 0; d < Dv; ++d) o[d] += p[j] * keys[j].v[d];
  });
  return f;
}

DenseGrads dense_backward(const DenseSizes& s, const TokenMask& mask, const DenseInputs& in,
                          const std::vector<double>& dout, const std::vector<double>* dlse,
                          const DenseForward* received) {
  DenseGrads g;
  const int64_t D = s.head_dim, Dv = s.head_dim_v;
  g.dq.assign(in.q.size(), 0.0);
  g.dk.assign(in.k.size(), 0.0);
  g.dv.assign(in.v.size(), 0.0);
  g.dka.assign(in.ka.size(), 0.0);
  g.dva.assign(in.va.size(), 0.0);
  std::vector<double> p, dp;
  for_each_row(s, mask, in, &g, [&](int64_t row, const std::vector<KeyRef>& keys) {
    const double* q = &in.q[size_t(row * D)];
    const double* d_o = &dout[size_t(row * Dv)];
    const double lse = softmax(s, q, keys, &p);
    if (received)  // P = exp(score - received lse)
      for (double& x : p) x *= std::exp(lse - received->lse[size_t(row)]);
    // dL/ds_j = P_j (dP_j - sum_l P_l dP_l) + P_j dlse, with s_j = scale * q.k_j.
    dp.resize(keys.size());
    double delta = 0;
    for (size_t j = 0; j < keys.size(); ++j) {
      dp[j] = dot(d_o, keys[j].v, Dv);
      delta += p[j] * dp[j];
    }
    if (received) delta = dot(d_o, &received->out[size_t(row * Dv)], Dv);
    const double extra = dlse ? (*dlse)[size_t(row)] : 0.0;
    double* dq = &g.dq[size_t(row * D)];
    for (size_t j = 0; j < keys.size(); ++j) {
      const double ds = p[j] * (dp[j] - delta + extra);
      for (int64_t d = 0; d < D; ++d) {
        dq[d] += s.scale * ds * keys[j].k[d];
        keys[j].dk[d] += s.scale * ds * q[d];
      }
      for (int64_t d = 0; d < Dv; ++d) keys[j].dv[d] += p[j] * d_o[d];
    }
  });
  return g;
}

}  // namespace nattn_test
