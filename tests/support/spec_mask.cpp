// Layer: tests. SPEC.md "The neighborhood of query index i along one axis", line by line.
#include "support/spec_mask.h"

#include <algorithm>

namespace nattn_test {

bool spec_attends(const SpecAxis& axis, int64_t L, int64_t i, int64_t j) {
  const int64_t k = axis.kernel_size, s = axis.stride, d = axis.dilation;
  // Dilation splits the axis into d interleaved groups: group g = i mod d, position
  // p = i div d, group length Lg = L div d + (1 if g < L mod d else 0).
  const int64_t g = i % d;
  const int64_t p = i / d;
  const int64_t Lg = L / d + (g < L % d ? 1 : 0);
  // wl = k div 2; wr = k div 2 + (k mod 2) - 1
  const int64_t wl = k / 2;
  const int64_t wr = k / 2 + (k % 2) - 1;
  int64_t start = 0, end = 0;
  if (!axis.is_causal) {
    const int64_t leader = std::min((p / s) * s + s / 2, Lg - 1);
    start = std::max(leader - wl, int64_t(0));
    if (leader + wr >= Lg) start += Lg - wr - leader - 1;
    end = start + k;
  } else {
    const int64_t leader = std::min((p / s) * s + s - 1, Lg - 1);
    start = std::max(leader - (k - 1), int64_t(0));
    end = std::min(p + 1, Lg);
  }
  // The keys are group positions start .. end-1, i.e. axis indices j * d + g.
  if (j % d != g) return false;
  const int64_t t = j / d;
  return start <= t && t < end;
}

SpecAxis spec_axis(const nattn::Problem& p, int a) {
  return {p.window.kernel_size[a], p.window.stride[a], p.window.dilation[a], p.window.is_causal[a]};
}

bool spec_attends(const nattn::Problem& p, int64_t query_token, int64_t key_token) {
  for (int a = p.rank - 1; a >= 0; --a) {
    const int64_t X = p.extent[a];
    if (!spec_attends(spec_axis(p, a), X, query_token % X, key_token % X)) return false;
    query_token /= X;
    key_token /= X;
  }
  return true;
}

TokenMask spec_mask(const nattn::Problem& p) {
  TokenMask m;
  m.tokens = 1;
  for (int a = 0; a < p.rank; ++a) m.tokens *= p.extent[a];
  m.allowed.resize(size_t(m.tokens * m.tokens));
  for (int64_t q = 0; q < m.tokens; ++q)
    for (int64_t k = 0; k < m.tokens; ++k) m.allowed[size_t(q * m.tokens + k)] = spec_attends(p, q, k);
  return m;
}

TokenMask dense_mask(int64_t tokens, bool is_causal) {
  TokenMask m;
  m.tokens = tokens;
  m.allowed.resize(size_t(tokens * tokens));
  for (int64_t q = 0; q < tokens; ++q)
    for (int64_t k = 0; k < tokens; ++k) m.allowed[size_t(q * tokens + k)] = !is_causal || k <= q;
  return m;
}

}  // namespace nattn_test
