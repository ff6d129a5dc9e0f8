// Layer: public API. The description of one neighborhood-attention problem (SPEC.md).
#pragma once
#include <array>
#include <cstdint>
#include <optional>

namespace nattn {

inline constexpr int kMaxRank = 3;

// Per-axis window parameters. Axes past `rank` are ignored.
struct Window {
  std::array<int64_t, kMaxRank> kernel_size{2, 2, 2};
  std::array<int64_t, kMaxRank> stride{1, 1, 1};
  std::array<int64_t, kMaxRank> dilation{1, 1, 1};
  std::array<bool, kMaxRank> is_causal{false, false, false};

  // The same parameters on every axis ("an int applies to every axis").
  static Window uniform(int64_t kernel_size, int64_t stride = 1, int64_t dilation = 1, bool is_causal = false) {
    Window w;
    w.kernel_size.fill(kernel_size);
    w.stride.fill(stride);
    w.dilation.fill(dilation);
    w.is_causal.fill(is_causal);
    return w;
  }
};

// Tensors are heads-last (SPEC.md): q [B, X1..Xr, Hq, D], k [B, X.., Hkv, D],
// v [B, X.., Hkv, Dv], out [B, X.., Hq, Dv], lse [B, X.., Hq] (float32),
// additional keys [B, Na, Hkv, D] and values [B, Na, Hkv, Dv].
struct Problem {
  int rank = 2;
  int64_t batch = 1;
  std::array<int64_t, kMaxRank> extent{1, 1, 1};
  int64_t heads_q = 1;
  int64_t heads_kv = 1;
  int64_t head_dim = 64;
  int64_t head_dim_v = 64;
  Window window{};
  std::optional<double> scale;  // default 1/sqrt(head_dim); an explicit value (0.0 too) is used as given
  int64_t num_additional = 0;   // Na: extra keys/values every query attends to

  double effective_scale() const;
  int64_t tokens() const;  // X1 * .. * Xr
};

// Dense attention over [B, N, H, D]: every key, or every earlier-or-equal key when causal.
struct AttentionProblem {
  int64_t batch = 1;
  int64_t seq_len = 1;
  int64_t heads_q = 1;
  int64_t heads_kv = 1;
  int64_t head_dim = 64;
  int64_t head_dim_v = 64;
  bool is_causal = false;
  std::optional<double> scale;
};

// Work counts (SPEC.md "Counting work"). Pairs include the additional keys.
int64_t attended_pairs(const Problem& p);         // per (batch, query head)
double forward_flops(const Problem& p);           // 4 * B * Hq * D * pairs  (2*D for QK^T, 2*Dv for PV)
double dense_forward_flops(const Problem& p);     // same with every key attended
double flopwise_speedup_limit(const Problem& p);  // dense / useful

}  // namespace nattn
