// Layer: tests (host only, no device). The configuration table's selection rules
// (cuda/common/configs.h): the default row of every (family, role, element, head dim) is a plain
// row (one CTA per SM, MUFU exponentials), so the opt-in rows (polynomial exponentials, two CTAs
// per SM) are taken only when asked for; each opt-in row has the plain row it shadows; the
// two-CTA backward rows come as dQ + dK/dV pairs in the same position among their siblings (as
// the config-row tests pair them); ids are positions.
#include <gtest/gtest.h>

#include <string>

#include "cuda/common/configs.h"

namespace nattn_test {
namespace {

using nattn::cuda::Elem;
using nattn::cuda::Family;
using nattn::cuda::find_config;
using nattn::cuda::KernelConfig;
using nattn::cuda::kKernelConfigs;
using nattn::cuda::kNumConfigs;
using nattn::cuda::Role;

std::string describe(const KernelConfig& c) {
  return "row " + std::to_string(c.id) + " (" + nattn::cuda::family_name(c.family) + " " +
         nattn::cuda::role_name(c.role) + " " + nattn::cuda::elem_name(c.elem) + " hd" + std::to_string(c.head_dim) +
         ")";
}

TEST(ConfigTable, DefaultRowsArePlain) {
  for (const KernelConfig& c : kKernelConfigs) {
    SCOPED_TRACE(describe(c));
    for (const bool pingpong : {false, true}) {
      const int id = find_config(c.family, c.role, c.elem, c.head_dim, pingpong);
      if (id < 0) continue;
      EXPECT_FALSE(kKernelConfigs[id].poly_exp);
      EXPECT_EQ(kKernelConfigs[id].ctas_per_sm, 1);
      EXPECT_EQ(kKernelConfigs[id].pingpong, pingpong);
    }
  }
}

TEST(ConfigTable, EveryOptInRowShadowsAPlainRow) {
  int poly = 0, two = 0;
  for (const KernelConfig& c : kKernelConfigs) {
    if (!c.poly_exp && c.ctas_per_sm == 1) continue;
    SCOPED_TRACE(describe(c));
    EXPECT_EQ(c.family, Family::kSm90);
    const int plain = find_config(c.family, c.role, c.elem, c.head_dim, c.pingpong);
    ASSERT_GE(plain, 0) << "no plain row for an opt-in row";
    EXPECT_EQ(find_config(c.family, c.role, c.elem, c.head_dim, c.pingpong, c.poly_exp, c.ctas_per_sm), c.id);
    if (c.poly_exp) {
      ++poly;
      EXPECT_EQ(c.role, Role::kForward);
      EXPECT_TRUE(c.head_dim == 32 || c.head_dim == 64);
    }
    if (c.ctas_per_sm == 2) {
      ++two;
      EXPECT_TRUE(c.role == Role::kBackwardDq || c.role == Role::kBackwardDkdv);
      EXPECT_EQ(c.head_dim, 32);
      EXPECT_EQ(c.role == Role::kBackwardDq ? c.block_kv : c.block_q, 32) << "walked boxes of 32 rows";
    }
  }
  EXPECT_EQ(poly, 4);
  EXPECT_EQ(two, 4);
}

// The config-row tests pair a backward row with the other role's row at the same position among
// the siblings of (family, dtype, head dim): the two-CTA dQ and dK/dV rows must pair up.
int sibling_position(const KernelConfig& c) {
  int at = 0;
  for (int i = 0; i < c.id; ++i) {
    const KernelConfig& o = kKernelConfigs[i];
    at += o.family == c.family && o.role == c.role && o.elem == c.elem && o.head_dim == c.head_dim;
  }
  return at;
}

TEST(ConfigTable, TwoCtaBackwardRowsPairUp) {
  for (const KernelConfig& c : kKernelConfigs) {
    if (c.ctas_per_sm != 2 || c.role != Role::kBackwardDq) continue;
    SCOPED_TRACE(describe(c));
    const int dkdv = find_config(c.family, Role::kBackwardDkdv, c.elem, c.head_dim, false, false, 2);
    ASSERT_GE(dkdv, 0);
    EXPECT_EQ(sibling_position(c), sibling_position(kKernelConfigs[dkdv]));
  }
}

TEST(ConfigTable, IdsArePositions) {
  for (int i = 0; i < kNumConfigs; ++i) EXPECT_EQ(kKernelConfigs[i].id, i);
}

}  // namespace
}  // namespace nattn_test
