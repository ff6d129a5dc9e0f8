// Layer: core. Argument validation (see validate.h).
#include "core/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

namespace nattn {
namespace {

std::string axis_name(const char* name, int a) { return std::string(name) + "[" + std::to_string(a) + "]"; }

Status invalid(const std::string& arg, const std::string& value, const std::string& rule) {
  return Status::Invalid(arg + " = " + value + " is invalid: " + rule);
}
Status invalid(const std::string& arg, int64_t value, const std::string& rule) {
  return invalid(arg, std::to_string(value), rule);
}

bool mul_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool add_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out); }

// Largest element offset of a view (0 for empty views); false on 64-bit overflow.
bool max_offset(const TensorView& t, int64_t* out) {
  int64_t off = 0;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] == 0) {
      *out = 0;
      return true;
    }
    int64_t term;
    if (mul_overflows(t.shape[i] - 1, t.stride[i], &term) || add_overflows(off, term, &off)) return false;
  }
  *out = off;
  return true;
}

// True when some dimension is 0 (computed without the product, which could overflow).
bool is_empty(const TensorView& t) {
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] == 0) return true;
  return false;
}

// Byte range [lo, hi) a view touches; empty views touch nothing.
struct ByteRange {
  uintptr_t lo = 0, hi = 0;
  bool empty() const { return hi <= lo; }
};
ByteRange byte_range(const TensorView& t) {
  int64_t off = 0;
  if (!t.defined() || is_empty(t) || !max_offset(t, &off)) return {};
  const uintptr_t base = reinterpret_cast<uintptr_t>(t.data);
  return {base, base + uintptr_t(off + 1) * uintptr_t(dtype_size(t.dtype))};
}

// True when two distinct indices of the view map to the same element (an output like that
// would be written twice).
bool self_overlapping(const TensorView& t) {
  int idx[kMaxDims];
  int n = 0;
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] > 1) idx[n++] = i;
  for (int i = 1; i < n; ++i)  // insertion sort by stride (n <= 6)
    for (int j = i; j > 0 && t.stride[idx[j]] < t.stride[idx[j - 1]]; --j) std::swap(idx[j], idx[j - 1]);
  int64_t span = 1;  // elements covered by the faster dims so far
  for (int j = 0; j < n; ++j) {
    const int d = idx[j];
    if (t.stride[d] < span) return true;
    span = t.stride[d] * (t.shape[d] - 1) + span;
  }
  return false;
}

// The dims a tensor must have (a grid tensor has at most kMaxDims: batch, 3 axes, heads, dim).
struct Shape {
  int64_t d[kMaxDims] = {};
  int n = 0;
  void push(int64_t v) { d[n++] = v; }
};

// What one tensor must look like. Nothing here allocates: a call that passes validation builds
// no strings (the layout text of a wrong number of dims is made only for that message).
struct Spec {
  const char* name;
  const TensorView* view;
  Shape shape;
  bool is_output;
  bool float32_only;  // lse / dlse
  // The dims' names ("[batch, X1, heads_q, head_dim]"): `fixed`, or grid_layout(*grid, dense,
  // heads, dim, keys) when grid is set.
  const char* fixed = "";
  const Problem* grid = nullptr;
  bool dense = false;
  const char* heads = nullptr;
  const char* dim = nullptr;
  bool keys = false;
};

std::string shape_of(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (int i = 0; i < s.n; ++i) o << (i ? ", " : "") << s.d[i];
  o << "]";
  return o.str();
}

Status check_one(const Spec& s, DType dtype, const char* dtype_from, Device device, const char* device_from,
                 Validation v) {
  const TensorView& t = *s.view;
  const auto arg = [&s](const char* field) { return std::string(s.name) + field; };
  if (t.ndim != s.shape.n)
    return invalid(arg(".ndim"), t.ndim,
                   "expected " + std::to_string(s.shape.n) + " dimensions, shape " + shape_of(s.shape));
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] != s.shape.d[i]) return invalid(arg(".shape"), shape_string(t), "expected " + shape_of(s.shape));
    if (t.stride[i] < 0) return invalid(arg(".stride[") + std::to_string(i) + "]", t.stride[i], "strides must be >= 0");
  }
  if (s.float32_only) {
    if (t.dtype != DType::kFloat32) return invalid(arg(".dtype"), dtype_name(t.dtype), "must be float32");
  } else if (t.dtype != dtype) {
    return invalid(arg(".dtype"), dtype_name(t.dtype),
                   std::string("must match ") + dtype_from + ".dtype (" + dtype_name(dtype) + ")");
  }
  if (t.device != device)
    return invalid(arg(".device"), device_name(t.device),
                   std::string("must match ") + device_from + ".device (" + device_name(device) + ")");
  int64_t off = 0;
  if (!max_offset(t, &off) || off > INT64_MAX / 8)
    return invalid(arg(".shape"), shape_string(t), "element offsets overflow 64-bit arithmetic");
  if (v == Validation::kFull && !is_empty(t) && t.data == nullptr)
    return invalid(arg(".data"), "null", "a non-empty tensor needs a data pointer");
  if (s.is_output && self_overlapping(t))
    return invalid(arg(".stride"), shape_string(t) + " strides", "an output must not map two indices to one element");
  return Status::Ok();
}

Status check_all(const std::vector<Spec>& specs, Validation v) {
  // dtype and device are taken from the first tensor that is not float32-only.
  const Spec* ref = nullptr;
  for (const Spec& s : specs)
    if (!s.float32_only) {
      ref = &s;
      break;
    }
  for (const Spec& s : specs)
    NATTN_RETURN_IF_ERROR(check_one(s, ref->view->dtype, ref->name, ref->view->device, ref->name, v));
  if (v == Validation::kShapes) return Status::Ok();  // aliasing needs real addresses
  for (size_t i = 0; i < specs.size(); ++i) {
    if (!specs[i].is_output) continue;
    const ByteRange a = byte_range(*specs[i].view);
    if (a.empty()) continue;
    for (size_t j = 0; j < specs.size(); ++j) {
      if (i == j) continue;
      const ByteRange b = byte_range(*specs[j].view);
      if (b.empty() || (j < i && specs[j].is_output)) continue;
      if (a.lo < b.hi && b.lo < a.hi)
        return invalid(std::string(specs[i].name) + ".data", "overlapping " + std::string(specs[j].name),
                       "outputs must not share memory with inputs or other outputs");
    }
  }
  return Status::Ok();
}

// keys: the key box's extents (k, v and their gradients), else the query box's.
Shape grid_shape(const Problem& p, int64_t heads, int64_t dim, bool keys = false) {
  Shape s;
  s.push(p.batch);
  for (int a = 0; a < p.rank; ++a) s.push(keys ? p.key_extent(a) : p.extent[a]);
  s.push(heads);
  if (dim >= 0) s.push(dim);
  return s;
}

// The names of a grid tensor's dims: "[batch, X1, X2, heads_q, head_dim]" (dense: "[batch,
// seq_len, ...]"); `dim` null for lse-like tensors.
std::string grid_layout(const Problem& p, bool dense, const char* heads, const char* dim, bool keys = false) {
  std::string s = "[batch, ";
  if (dense) {
    s += keys ? "kv_seq_len, " : "seq_len, ";
  } else {
    for (int a = 0; a < p.rank; ++a) s += std::string(keys ? "K" : "X") + std::to_string(a + 1) + ", ";
  }
  s += heads;
  if (dim != nullptr) s += std::string(", ") + dim;
  return s + "]";
}

std::string layout_of(const Spec& s) {
  return s.grid != nullptr ? grid_layout(*s.grid, s.dense, s.heads, s.dim, s.keys) : std::string(s.fixed);
}

Spec grid_spec(const char* name, const TensorView* t, const Problem& p, bool dense, bool heads_q, bool value,
               bool is_output) {
  const int64_t heads = heads_q ? p.heads_q : p.heads_kv;
  const int64_t dim = value ? p.head_dim_v : p.head_dim;
  const bool keys = !heads_q;  // k, v, dk, dv live on the key box (named K.. when it differs)
  Spec s{name, t, grid_shape(p, heads, dim, keys), is_output, false};
  s.grid = &p;
  s.dense = dense;
  s.heads = heads_q ? "heads_q" : "heads_kv";
  s.dim = value ? "head_dim_v" : "head_dim";
  s.keys = keys && p.placed();
  return s;
}

Spec lse_spec(const char* name, const TensorView* t, const Problem& p, bool dense, bool is_output) {
  Spec s{name, t, grid_shape(p, p.heads_q, -1), is_output, true};
  s.grid = &p;
  s.dense = dense;
  s.heads = "heads_q";
  return s;
}

Spec additional_spec(const char* name, const TensorView* t, const Problem& p, bool value, bool is_output) {
  Spec s{name, t, {}, is_output, false};
  for (int64_t d : {p.batch, p.num_additional, p.heads_kv, value ? p.head_dim_v : p.head_dim}) s.shape.push(d);
  s.fixed = value ? "[batch, num_additional, heads_kv, head_dim_v]" : "[batch, num_additional, heads_kv, head_dim]";
  return s;
}

// Each tensor's number of dims first: the other rules read the problem off the tensors'
// shapes in a binding, and mean little when a tensor has the wrong rank.
Status check_ndims(const std::vector<Spec>& specs) {
  for (const Spec& s : specs)
    if (s.view->ndim != s.shape.n)
      return invalid(std::string(s.name) + ".ndim", s.view->ndim,
                     "expected " + std::to_string(s.shape.n) + " dimensions " + layout_of(s));
  return Status::Ok();
}

Status validate_rank(const Problem& p) {
  if (p.rank < 1 || p.rank > 3) return invalid("rank", p.rank, "must be 1, 2 or 3");
  return Status::Ok();
}

Status check_additional_present(const Problem& p, const TensorView& t, const char* name) {
  if (p.num_additional > 0 && !t.defined())
    return invalid(name, "absent", "required when num_additional = " + std::to_string(p.num_additional) + " > 0");
  if (p.num_additional == 0 && t.defined())
    return invalid(name, shape_string(t), "must be absent when num_additional = 0");
  return Status::Ok();
}

// SPEC.md "Placed boxes": both boxes inside the global grid (0 = default in the extents).
Status validate_placement(const Problem& p) {
  const Placement& pl = p.placement;
  for (int a = 0; a < p.rank; ++a) {
    if (pl.global_extent[a] < 0)
      return invalid(axis_name("placement.global_extent", a), pl.global_extent[a],
                     "must be >= 1 (or 0: the query extent)");
    if (pl.key_extent[a] < 0)
      return invalid(axis_name("placement.key_extent", a), pl.key_extent[a], "must be >= 1 (or 0: the query extent)");
    const int64_t G = p.global_extent(a);
    const auto in_grid = [&] {
      return " must lie inside the global grid: 0 <= origin and origin + extent <= " + axis_name("global_extent", a) +
             " = " + std::to_string(G);
    };
    int64_t end;
    if (pl.query_origin[a] < 0 || __builtin_add_overflow(pl.query_origin[a], p.extent[a], &end) || end > G)
      return invalid(
          axis_name("placement.query_origin", a), pl.query_origin[a],
          "the query box (" + axis_name("extent", a) + " = " + std::to_string(p.extent[a]) + ")" + in_grid());
    if (pl.key_origin[a] < 0 || __builtin_add_overflow(pl.key_origin[a], p.key_extent(a), &end) || end > G)
      return invalid(
          axis_name("placement.key_origin", a), pl.key_origin[a],
          "the key box (" + axis_name("key_extent", a) + " = " + std::to_string(p.key_extent(a)) + ")" + in_grid());
  }
  return Status::Ok();
}

// Dense attention reads the number of keys off k (0 there would mean "seq_len"): say so.
Status check_some_keys(const TensorView& k, bool dense) {
  if (dense && k.ndim == 4 && k.shape[1] == 0)
    return invalid("k.shape", shape_string(k), "attention needs at least one key (kv_seq_len >= 1)");
  return Status::Ok();
}

}  // namespace

Status validate_problem(const Problem& p, bool dense) {
  NATTN_RETURN_IF_ERROR(validate_rank(p));
  if (p.batch < 0) return invalid("batch", p.batch, "must be >= 0");
  for (int a = 0; a < p.rank; ++a)
    if (p.extent[a] < 1) return invalid(axis_name("extent", a), p.extent[a], "must be >= 1");
  if (p.heads_q < 1) return invalid("heads_q", p.heads_q, "must be >= 1");
  if (p.heads_kv < 1) return invalid("heads_kv", p.heads_kv, "must be >= 1");
  if (p.heads_q % p.heads_kv != 0)
    return invalid("heads_q", p.heads_q, "must be a multiple of heads_kv = " + std::to_string(p.heads_kv));
  if (p.head_dim < 1) return invalid("head_dim", p.head_dim, "must be >= 1");
  if (p.head_dim_v < 1) return invalid("head_dim_v", p.head_dim_v, "must be >= 1");
  if (p.num_additional < 0) return invalid("num_additional", p.num_additional, "must be >= 0");
  if (p.scale.has_value() && !std::isfinite(*p.scale)) {
    std::ostringstream v;
    v << *p.scale;
    return invalid("scale", v.str(), "must be finite");
  }
  NATTN_RETURN_IF_ERROR(validate_placement(p));
  for (int a = 0; a < p.rank; ++a) {
    const int64_t k = p.window.kernel_size[a], s = p.window.stride[a], d = p.window.dilation[a];
    if (k < (dense ? 1 : 2)) return invalid(axis_name("kernel_size", a), k, dense ? "must be >= 1" : "must be >= 2");
    if (d < 1) return invalid(axis_name("dilation", a), d, "must be >= 1");
    if (s < 1 || s > k)
      return invalid(axis_name("stride", a), s,
                     "must satisfy 1 <= stride <= kernel_size (kernel_size[" + std::to_string(a) +
                         "] = " + std::to_string(k) + ")");
    int64_t span;
    const char* grid = p.placed() ? "global_extent" : "extent";
    if (__builtin_mul_overflow(k, d, &span) || span > p.global_extent(a))
      return invalid(axis_name("kernel_size", a), k,
                     std::string("kernel_size * dilation must be <= ") + grid + " (dilation[" + std::to_string(a) +
                         "] = " + std::to_string(d) + ", " + grid + "[" + std::to_string(a) +
                         "] = " + std::to_string(p.global_extent(a)) + ")");
  }
  return Status::Ok();
}

Status validate_attention_problem(const AttentionProblem& d) {
  if (d.seq_len < 1) return invalid("seq_len", d.seq_len, "must be >= 1");
  if (d.kv_seq_len < 0) return invalid("kv_seq_len", d.kv_seq_len, "must be >= 1 (or 0: seq_len)");
  return Status::Ok();
}

Status validate_forward(const Problem& p, const ForwardTensors& t, bool dense, Validation v) {
  NATTN_RETURN_IF_ERROR(validate_rank(p));
  NATTN_RETURN_IF_ERROR(check_additional_present(p, t.additional_k, "additional_k"));
  NATTN_RETURN_IF_ERROR(check_additional_present(p, t.additional_v, "additional_v"));
  std::vector<Spec> specs{
      grid_spec("q", &t.q, p, dense, true, false, false),
      grid_spec("k", &t.k, p, dense, false, false, false),
      grid_spec("v", &t.v, p, dense, false, true, false),
      grid_spec("out", &t.out, p, dense, true, true, true),
  };
  if (t.lse.defined()) specs.push_back(lse_spec("lse", &t.lse, p, dense, true));
  if (p.num_additional > 0) {
    specs.push_back(additional_spec("additional_k", &t.additional_k, p, false, false));
    specs.push_back(additional_spec("additional_v", &t.additional_v, p, true, false));
  }
  NATTN_RETURN_IF_ERROR(check_ndims(specs));
  NATTN_RETURN_IF_ERROR(check_some_keys(t.k, dense));
  NATTN_RETURN_IF_ERROR(validate_problem(p, dense));
  return check_all(specs, v);
}

Status validate_backward(const Problem& p, const BackwardTensors& t, bool dense, Validation v) {
  NATTN_RETURN_IF_ERROR(validate_rank(p));
  NATTN_RETURN_IF_ERROR(check_additional_present(p, t.additional_k, "additional_k"));
  NATTN_RETURN_IF_ERROR(check_additional_present(p, t.additional_v, "additional_v"));
  NATTN_RETURN_IF_ERROR(check_additional_present(p, t.d_additional_k, "d_additional_k"));
  NATTN_RETURN_IF_ERROR(check_additional_present(p, t.d_additional_v, "d_additional_v"));
  if (!t.lse.defined()) return invalid("lse", "absent", "backward needs forward's logsumexp");
  std::vector<Spec> specs{
      grid_spec("q", &t.q, p, dense, true, false, false),      grid_spec("k", &t.k, p, dense, false, false, false),
      grid_spec("v", &t.v, p, dense, false, true, false),      grid_spec("out", &t.out, p, dense, true, true, false),
      grid_spec("dout", &t.dout, p, dense, true, true, false), lse_spec("lse", &t.lse, p, dense, false),
      grid_spec("dq", &t.dq, p, dense, true, false, true),     grid_spec("dk", &t.dk, p, dense, false, false, true),
      grid_spec("dv", &t.dv, p, dense, false, true, true),
  };
  if (t.dlse.defined()) specs.push_back(lse_spec("dlse", &t.dlse, p, dense, false));
  if (p.num_additional > 0) {
    specs.push_back(additional_spec("additional_k", &t.additional_k, p, false, false));
    specs.push_back(additional_spec("additional_v", &t.additional_v, p, true, false));
    specs.push_back(additional_spec("d_additional_k", &t.d_additional_k, p, false, true));
    specs.push_back(additional_spec("d_additional_v", &t.d_additional_v, p, true, true));
  }
  NATTN_RETURN_IF_ERROR(check_ndims(specs));
  NATTN_RETURN_IF_ERROR(check_some_keys(t.k, dense));
  NATTN_RETURN_IF_ERROR(validate_problem(p, dense));
  return check_all(specs, v);
}

Status validate_merge(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                      const TensorView& lse, Validation v) {
  if (outs.empty()) return invalid("outs", "an empty list", "needs at least one partial");
  if (outs.size() != lses.size())
    return invalid("lses", std::to_string(lses.size()) + " tensors",
                   "needs one per partial output (" + std::to_string(outs.size()) + ")");
  const TensorView& o0 = outs[0];
  if (o0.ndim < 2) return invalid("outs[0].ndim", o0.ndim, "must be >= 2 ([..., H, Dv])");
  Shape oshape, lshape;
  for (int i = 0; i < o0.ndim && i < kMaxDims; ++i) oshape.push(o0.shape[i]);
  for (int i = 0; i + 1 < o0.ndim && i < kMaxDims; ++i) lshape.push(o0.shape[i]);
  std::vector<std::string> names;
  names.reserve(2 * outs.size() + 2);
  std::vector<Spec> specs;
  for (size_t i = 0; i < outs.size(); ++i) {
    names.push_back("outs[" + std::to_string(i) + "]");
    names.push_back("lses[" + std::to_string(i) + "]");
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    specs.push_back(Spec{names[2 * i].c_str(), &outs[i], oshape, false, false});
    specs.push_back(Spec{names[2 * i + 1].c_str(), &lses[i], lshape, false, true});
  }
  specs.push_back(Spec{"out", &out, oshape, true, false});
  specs.push_back(Spec{"lse", &lse, lshape, true, true});
  return check_all(specs, v);
}

}  // namespace nattn
