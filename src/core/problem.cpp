// Layer: core. Problem helpers: default scale and work counts (SPEC.md "Counting work").
#include "nattn/problem.h"

#include <cmath>

#include "core/axes.h"
#include "core/window.h"

namespace nattn {

double Problem::effective_scale() const { return scale.has_value() ? *scale : 1.0 / std::sqrt(double(head_dim)); }

int64_t Problem::tokens() const {
  int64_t n = 1;
  for (int a = 0; a < rank; ++a) n *= extent[a];
  return n;
}

int64_t Problem::key_tokens() const {
  int64_t n = 1;
  for (int a = 0; a < rank; ++a) n *= key_extent(a);
  return n;
}

bool Problem::placed() const {
  for (int a = 0; a < rank; ++a)
    if (global_extent(a) != extent[a] || key_extent(a) != extent[a] || placement.query_origin[a] != 0 ||
        placement.key_origin[a] != 0)
      return true;
  return false;
}

int64_t attended_pairs(const Problem& p) {
  int64_t pairs = 1;
  for (int a = 0; a < p.rank; ++a)
    pairs *= p.placed() ? window::placed_window_size_sum(axis(p, a), boxes(p, a)) : window::window_size_sum(axis(p, a));
  return pairs + p.tokens() * p.num_additional;
}

static double flops_for_pairs(const Problem& p, double pairs) {
  return 2.0 * double(p.batch) * double(p.heads_q) * double(p.head_dim + p.head_dim_v) * pairs;
}

double forward_flops(const Problem& p) { return flops_for_pairs(p, double(attended_pairs(p))); }

double dense_forward_flops(const Problem& p) {
  const double n = double(p.tokens());
  return flops_for_pairs(p, n * (double(p.key_tokens()) + double(p.num_additional)));
}

double flopwise_speedup_limit(const Problem& p) {
  const double useful = forward_flops(p);
  return useful > 0 ? dense_forward_flops(p) / useful : 0.0;
}

}  // namespace nattn
