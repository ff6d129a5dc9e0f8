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

// Where the query box and the key box sit in a larger (global) grid (SPEC.md "Placed boxes"):
// windows are evaluated in global coordinates and only keys inside the key box are attended.
// A 0 in global_extent or key_extent means "the query box's extent" on that axis, so the
// default (all zeros) is the plain problem: one grid holds the queries and the keys.
struct Placement {
  std::array<int64_t, kMaxRank> global_extent{0, 0, 0};  // G per axis (0 = extent)
  std::array<int64_t, kMaxRank> query_origin{0, 0, 0};   // global index of the query box's first token
  std::array<int64_t, kMaxRank> key_origin{0, 0, 0};     // global index of the key box's first token
  std::array<int64_t, kMaxRank> key_extent{0, 0, 0};     // the key box's extent (0 = extent)
};

// Tensors are heads-last (SPEC.md): q [B, X1..Xr, Hq, D], k [B, K1..Kr, Hkv, D],
// v [B, K.., Hkv, Dv], out [B, X.., Hq, Dv], lse [B, X.., Hq] (float32),
// additional keys [B, Na, Hkv, D] and values [B, Na, Hkv, Dv]. X is the query box's extent
// (`extent`), K the key box's (placement.key_extent; = X unless placed).
struct Problem {
  int rank = 2;
  int64_t batch = 1;
  std::array<int64_t, kMaxRank> extent{1, 1, 1};  // the query box (the whole grid unless placed)
  int64_t heads_q = 1;
  int64_t heads_kv = 1;
  int64_t head_dim = 64;
  int64_t head_dim_v = 64;
  Window window{};
  std::optional<double> scale;  // default 1/sqrt(head_dim); an explicit value (0.0 too) is used as given
  int64_t num_additional = 0;   // Na: extra keys/values every query attends to
  Placement placement{};

  double effective_scale() const;
  int64_t tokens() const;      // X1 * .. * Xr (queries)
  int64_t key_tokens() const;  // K1 * .. * Kr (keys)
  // Per-axis placement with the defaults resolved.
  int64_t global_extent(int a) const { return placement.global_extent[a] > 0 ? placement.global_extent[a] : extent[a]; }
  int64_t key_extent(int a) const { return placement.key_extent[a] > 0 ? placement.key_extent[a] : extent[a]; }
  // True unless, on every axis, both boxes are the whole global grid.
  bool placed() const;
};

// Dense attention: queries [B, N, Hq, D], keys/values [B, Nk, Hkv, *]: every key, or when causal
// every key j <= i for query i (top-left aligned when Nk != N, as torch's SDPA).
struct AttentionProblem {
  int64_t batch = 1;
  int64_t seq_len = 1;     // N (queries)
  int64_t kv_seq_len = 0;  // Nk (keys); 0 = seq_len
  int64_t heads_q = 1;
  int64_t heads_kv = 1;
  int64_t head_dim = 64;
  int64_t head_dim_v = 64;
  bool is_causal = false;
  std::optional<double> scale;
};

// Work counts (SPEC.md "Counting work"). Pairs include the additional keys.
int64_t attended_pairs(const Problem& p);         // per (batch, query head); placed: keys inside the key box
double forward_flops(const Problem& p);           // 4 * B * Hq * D * pairs  (2*D for QK^T, 2*Dv for PV)
double dense_forward_flops(const Problem& p);     // same with every key attended
double flopwise_speedup_limit(const Problem& p);  // dense / useful

}  // namespace nattn
