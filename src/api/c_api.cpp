// Layer: api. The C ABI (c_api.h) over the C++ API: converts plain structs to views and
// Status to (code, message). Enum values arriving from foreign callers are checked here.
#include "nattn/c_api.h"

#include <array>
#include <cstddef>
#include <cstring>
#include <exception>
#include <string>

#include "core/axes.h"
#include "core/validate.h"
#include "nattn/api.h"
#include "nattn/host_trace.h"

namespace {

using namespace nattn;

int report(const Status& s, char* err, size_t len) {
  if (err && len) {
    const std::string& m = s.message();
    const size_t n = std::min(len - 1, m.size());
    std::memcpy(err, m.data(), n);
    err[n] = '\0';
  }
  return int(s.code());
}

Status to_view(const nattn_tensor& c, const char* slot, TensorView* out) {
  if (c.ndim < 0 || c.ndim > NATTN_C_MAX_DIMS)
    return Status::Invalid(std::string(slot) + ".ndim = " + std::to_string(c.ndim) + " is invalid: must be 0.." +
                           std::to_string(NATTN_C_MAX_DIMS));
  if (c.dtype < 0 || c.dtype > int(DType::kFloat64))
    return Status::Invalid(std::string(slot) + ".dtype = " + std::to_string(c.dtype) +
                           " is invalid: must be float32, float16, bfloat16 or float64");
  if (c.device_type < 0 || c.device_type > int(DeviceType::kCUDA))
    return Status::Invalid(std::string(slot) + ".device = " + std::to_string(c.device_type) +
                           " is invalid: must be cpu or cuda");
  TensorView v;
  v.data = c.data;
  v.dtype = DType(c.dtype);
  v.ndim = c.ndim;
  for (int i = 0; i < c.ndim; ++i) {
    v.shape[i] = c.shape[i];
    v.stride[i] = c.stride[i];
  }
  v.device = {DeviceType(c.device_type), c.device_index};
  *out = v;
  return Status::Ok();
}

Problem to_problem(const nattn_problem& c) {
  Problem p;
  p.rank = c.rank;
  p.batch = c.batch;
  p.heads_q = c.heads_q;
  p.heads_kv = c.heads_kv;
  p.head_dim = c.head_dim;
  p.head_dim_v = c.head_dim_v;
  for (int a = 0; a < 3; ++a) {
    p.extent[a] = c.extent[a];
    p.window.kernel_size[a] = c.kernel_size[a];
    p.window.stride[a] = c.stride[a];
    p.window.dilation[a] = c.dilation[a];
    p.window.is_causal[a] = c.is_causal[a] != 0;
  }
  if (c.has_scale) p.scale = c.scale;
  p.num_additional = c.num_additional;
  for (int a = 0; a < 3; ++a) {
    p.placement.global_extent[a] = c.global_extent[a];
    p.placement.query_origin[a] = c.query_origin[a];
    p.placement.key_origin[a] = c.key_origin[a];
    p.placement.key_extent[a] = c.key_extent[a];
  }
  return p;
}

AttentionProblem to_attention(const nattn_problem& c) {
  AttentionProblem d;
  d.batch = c.batch;
  d.seq_len = c.extent[0];
  d.kv_seq_len = c.key_extent[0];
  d.heads_q = c.heads_q;
  d.heads_kv = c.heads_kv;
  d.head_dim = c.head_dim;
  d.head_dim_v = c.head_dim_v;
  d.is_causal = c.is_causal[0] != 0;
  if (c.has_scale) d.scale = c.scale;
  return d;
}

Options to_options(const nattn_options* o) {
  Options opt;
  if (o) {
    opt.backend = BackendKind(o->backend);
    opt.deterministic = o->deterministic != 0;
    opt.stream = o->stream;
    if (o->family != nullptr) opt.choice.family = o->family;
    for (int i = 0; i < NATTN_C_MAX_CONFIG_IDS; ++i)
      if (o->config_ids[i] >= 0) opt.choice.config_ids.push_back(o->config_ids[i]);
    for (int a = 0; a < 3; ++a) {
      opt.choice.own_tile[a] = o->own_tile[a];
      opt.choice.walk_tile[a] = o->walk_tile[a];
    }
    opt.workspace.allocate = o->workspace_allocate;
    opt.workspace.release = o->workspace_release;
    opt.workspace.ctx = o->workspace_ctx;
  }
  return opt;
}

// Copies `text` into a caller buffer of `len` bytes, or says how many it needs.
Status write_text(const std::string& text, char* out, size_t len, const char* name) {
  if (out == nullptr || len < text.size() + 1)
    return Status::Invalid(std::string(name) + "_len = " + std::to_string(len) + " is invalid: the text needs " +
                           std::to_string(text.size() + 1) + " bytes");
  std::memcpy(out, text.data(), text.size());
  out[text.size()] = '\0';
  return Status::Ok();
}

std::string configs_json() {
  std::string j = "[";
  bool first = true;
  for (const KernelConfigInfo& c : kernel_configs()) {
    j += std::string(first ? "" : ", ") + "{\"id\": " + std::to_string(c.id) + ", \"family\": \"" + c.family +
         "\", \"role\": \"" + c.role + "\", \"dtype\": \"" + c.dtype +
         "\", \"head_dim\": " + std::to_string(c.head_dim) + ", \"block_q\": " + std::to_string(c.block_q) +
         ", \"block_kv\": " + std::to_string(c.block_kv) + ", \"warps\": " + std::to_string(c.warps) +
         ", \"stages\": " + std::to_string(c.stages) + ", \"pingpong\": " + (c.pingpong ? "true" : "false") +
         ", \"poly_exp\": " + (c.poly_exp ? "true" : "false") + ", \"ctas_per_sm\": " + std::to_string(c.ctas_per_sm) +
         ", \"built\": " + (c.built ? "true" : "false") + "}";
    first = false;
  }
  return j + "]";
}

Status check_options(const nattn_options* o) {
  if (o && (o->backend < 0 || o->backend > int(BackendKind::kCuda)))
    return Status::Invalid("backend = " + std::to_string(o->backend) + " is invalid: must be auto, reference or cuda");
  if (o && (o->workspace_allocate == nullptr) != (o->workspace_release == nullptr))
    return Status::Invalid("workspace_allocate/workspace_release = one null is invalid: give both or neither");
  return Status::Ok();
}

const char* const kFwdNames[] = {"q", "k", "v", "additional_k", "additional_v", "out", "lse"};
const char* const kBwdNames[] = {"q",    "k",  "v",  "additional_k", "additional_v",   "out",           "lse", "dout",
                                 "dlse", "dq", "dk", "dv",           "d_additional_k", "d_additional_v"};

Status forward_tensors(const nattn_tensor* c, ForwardTensors* t) {
  TensorView* slots[] = {&t->q, &t->k, &t->v, &t->additional_k, &t->additional_v, &t->out, &t->lse};
  for (int i = 0; i < NATTN_FWD_COUNT; ++i) NATTN_RETURN_IF_ERROR(to_view(c[i], kFwdNames[i], slots[i]));
  return Status::Ok();
}

Status backward_tensors(const nattn_tensor* c, BackwardTensors* t) {
  TensorView* slots[] = {
      &t->q,    &t->k,  &t->v,  &t->additional_k, &t->additional_v,   &t->out,           &t->lse, &t->dout,
      &t->dlse, &t->dq, &t->dk, &t->dv,           &t->d_additional_k, &t->d_additional_v};
  for (int i = 0; i < NATTN_BWD_COUNT; ++i) NATTN_RETURN_IF_ERROR(to_view(c[i], kBwdNames[i], slots[i]));
  return Status::Ok();
}

// The views of a merge call (nattn_merge, nattn_merge_on_stream, nattn_check_merge_shapes).
struct MergeViews {
  std::vector<TensorView> outs, lses;
  TensorView out, lse;
};

Status merge_views(int32_t n, const nattn_tensor* outs, const nattn_tensor* lses, const nattn_tensor* out,
                   const nattn_tensor* lse, MergeViews* m) {
  m->outs.resize(size_t(n > 0 ? n : 0));
  m->lses.resize(m->outs.size());
  for (size_t i = 0; i < m->outs.size(); ++i) {
    const std::string index = std::to_string(i);
    NATTN_RETURN_IF_ERROR(to_view(outs[i], ("outs[" + index + "]").c_str(), &m->outs[i]));
    NATTN_RETURN_IF_ERROR(to_view(lses[i], ("lses[" + index + "]").c_str(), &m->lses[i]));
  }
  NATTN_RETURN_IF_ERROR(to_view(*out, "out", &m->out));
  return to_view(*lse, "lse", &m->lse);
}

// Validation without memory (nattn_check_*_shapes): the calls' checks on views whose data may be null.
Status check_forward_shapes(const nattn_problem& c, const ForwardTensors& t, bool dense) {
  if (!dense) return validate_forward(to_problem(c), t, false, Validation::kShapes);
  const AttentionProblem d = to_attention(c);
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return validate_forward(as_neighborhood(d), t, true, Validation::kShapes);
}

Status check_backward_shapes(const nattn_problem& c, const BackwardTensors& t, bool dense) {
  if (!dense) return validate_backward(to_problem(c), t, false, Validation::kShapes);
  const AttentionProblem d = to_attention(c);
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return validate_backward(as_neighborhood(d), t, true, Validation::kShapes);
}

// Struct layouts (nattn_struct_layout). Each table lists every field of its struct in order;
// covers() proves that at compile time (a gap between fields, or after the last, as wide as
// the next field's alignment would be an unlisted field).
struct Field {
  const char* name;
  size_t offset, size, align;
};
#define NATTN_FIELD(S, f) \
  Field { #f, offsetof(S, f), sizeof(S::f), alignof(decltype(S::f)) }

template <size_t N>
constexpr bool covers(const std::array<Field, N>& fields, size_t size, size_t align) {
  size_t end = 0;
  for (const Field& f : fields) {
    if (f.offset < end || f.offset - end >= f.align) return false;
    end = f.offset + f.size;
  }
  return end <= size && size - end < align;
}

constexpr std::array<Field, 7> kTensorFields{
    NATTN_FIELD(nattn_tensor, data),        NATTN_FIELD(nattn_tensor, dtype),  NATTN_FIELD(nattn_tensor, ndim),
    NATTN_FIELD(nattn_tensor, shape),       NATTN_FIELD(nattn_tensor, stride), NATTN_FIELD(nattn_tensor, device_type),
    NATTN_FIELD(nattn_tensor, device_index)};
constexpr std::array<Field, 18> kProblemFields{
    NATTN_FIELD(nattn_problem, rank),          NATTN_FIELD(nattn_problem, is_causal),
    NATTN_FIELD(nattn_problem, batch),         NATTN_FIELD(nattn_problem, extent),
    NATTN_FIELD(nattn_problem, heads_q),       NATTN_FIELD(nattn_problem, heads_kv),
    NATTN_FIELD(nattn_problem, head_dim),      NATTN_FIELD(nattn_problem, head_dim_v),
    NATTN_FIELD(nattn_problem, kernel_size),   NATTN_FIELD(nattn_problem, stride),
    NATTN_FIELD(nattn_problem, dilation),      NATTN_FIELD(nattn_problem, has_scale),
    NATTN_FIELD(nattn_problem, scale),         NATTN_FIELD(nattn_problem, num_additional),
    NATTN_FIELD(nattn_problem, global_extent), NATTN_FIELD(nattn_problem, query_origin),
    NATTN_FIELD(nattn_problem, key_origin),    NATTN_FIELD(nattn_problem, key_extent)};
constexpr std::array<Field, 10> kOptionsFields{NATTN_FIELD(nattn_options, backend),
                                               NATTN_FIELD(nattn_options, deterministic),
                                               NATTN_FIELD(nattn_options, stream),
                                               NATTN_FIELD(nattn_options, family),
                                               NATTN_FIELD(nattn_options, config_ids),
                                               NATTN_FIELD(nattn_options, own_tile),
                                               NATTN_FIELD(nattn_options, walk_tile),
                                               NATTN_FIELD(nattn_options, workspace_allocate),
                                               NATTN_FIELD(nattn_options, workspace_release),
                                               NATTN_FIELD(nattn_options, workspace_ctx)};
#undef NATTN_FIELD
static_assert(covers(kTensorFields, sizeof(nattn_tensor), alignof(nattn_tensor)), "kTensorFields misses a field");
static_assert(covers(kProblemFields, sizeof(nattn_problem), alignof(nattn_problem)), "kProblemFields misses a field");
static_assert(covers(kOptionsFields, sizeof(nattn_options), alignof(nattn_options)), "kOptionsFields misses a field");

template <size_t N>
Status write_layout(const std::array<Field, N>& fields, size_t struct_size, int64_t* size, int32_t* num_fields,
                    int64_t* offsets, int64_t* sizes, int32_t max_fields, char* names, size_t names_len) {
  if (size == nullptr || num_fields == nullptr)
    return Status::Invalid("size/num_fields = null is invalid: both are outputs");
  if (max_fields > 0 && (offsets == nullptr || sizes == nullptr))
    return Status::Invalid("offsets/sizes = null is invalid: needed when max_fields = " + std::to_string(max_fields) +
                           " > 0");
  std::string list;
  for (size_t i = 0; i < N; ++i) {
    list += std::string(i ? "," : "") + fields[i].name;
    if (int64_t(i) < max_fields) {
      offsets[i] = int64_t(fields[i].offset);
      sizes[i] = int64_t(fields[i].size);
    }
  }
  *size = int64_t(struct_size);
  *num_fields = int32_t(N);
  return write_text(list, names, names_len, "names");
}

Status struct_layout(const char* name, int64_t* size, int32_t* num_fields, int64_t* offsets, int64_t* sizes,
                     int32_t max_fields, char* names, size_t names_len) {
  const std::string n = name != nullptr ? name : "";
  if (n == "nattn_tensor")
    return write_layout(kTensorFields, sizeof(nattn_tensor), size, num_fields, offsets, sizes, max_fields, names,
                        names_len);
  if (n == "nattn_problem")
    return write_layout(kProblemFields, sizeof(nattn_problem), size, num_fields, offsets, sizes, max_fields, names,
                        names_len);
  if (n == "nattn_options")
    return write_layout(kOptionsFields, sizeof(nattn_options), size, num_fields, offsets, sizes, max_fields, names,
                        names_len);
  return Status::Invalid("name = \"" + n + "\" is invalid: must be nattn_tensor, nattn_problem or nattn_options");
}

// Runs `f` and turns exceptions (allocation failures) into a status: none may cross the ABI.
template <class F>
int guarded(char* err, size_t len, F&& f) {
  try {
    return report(f(), err, len);
  } catch (const std::exception& e) {
    return report(Status::Runtime(std::string("internal error: ") + e.what()), err, len);
  } catch (...) {
    return report(Status::Runtime("internal error"), err, len);
  }
}

}  // namespace

extern "C" {

int nattn_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* err,
                  size_t err_len) {
  return guarded(err, err_len, [&] {
    ForwardTensors t;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(forward_tensors(tensors, &t));
    return forward(to_problem(*p), t, to_options(o));
  });
}

int nattn_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* err,
                   size_t err_len) {
  return guarded(err, err_len, [&] {
    BackwardTensors t;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(backward_tensors(tensors, &t));
    return backward(to_problem(*p), t, to_options(o));
  });
}

int nattn_attention_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* err,
                            size_t err_len) {
  return guarded(err, err_len, [&] {
    ForwardTensors t;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(forward_tensors(tensors, &t));
    return attention_forward(to_attention(*p), t, to_options(o));
  });
}

int nattn_attention_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* err,
                             size_t err_len) {
  return guarded(err, err_len, [&] {
    BackwardTensors t;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(backward_tensors(tensors, &t));
    return attention_backward(to_attention(*p), t, to_options(o));
  });
}

int nattn_explain_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* plan_json,
                          size_t plan_len, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    ForwardTensors t;
    Plan plan;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(forward_tensors(tensors, &t));
    NATTN_RETURN_IF_ERROR(explain_forward(to_problem(*p), t, to_options(o), &plan));
    return write_text(plan.to_json(), plan_json, plan_len, "plan");
  });
}

int nattn_explain_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o, char* plan_json,
                           size_t plan_len, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    BackwardTensors t;
    Plan plan;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(backward_tensors(tensors, &t));
    NATTN_RETURN_IF_ERROR(explain_backward(to_problem(*p), t, to_options(o), &plan));
    return write_text(plan.to_json(), plan_json, plan_len, "plan");
  });
}

int nattn_explain_attention_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o,
                                    char* plan_json, size_t plan_len, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    ForwardTensors t;
    Plan plan;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(forward_tensors(tensors, &t));
    NATTN_RETURN_IF_ERROR(explain_attention_forward(to_attention(*p), t, to_options(o), &plan));
    return write_text(plan.to_json(), plan_json, plan_len, "plan");
  });
}

int nattn_explain_attention_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o,
                                     char* plan_json, size_t plan_len, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    BackwardTensors t;
    Plan plan;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(backward_tensors(tensors, &t));
    NATTN_RETURN_IF_ERROR(explain_attention_backward(to_attention(*p), t, to_options(o), &plan));
    return write_text(plan.to_json(), plan_json, plan_len, "plan");
  });
}

int nattn_kernel_configs(char* json, size_t json_len, char* err, size_t err_len) {
  return guarded(err, err_len, [&] { return write_text(configs_json(), json, json_len, "json"); });
}

int nattn_release_cached_workspace(char* err, size_t err_len) {
  return guarded(err, err_len, [&] { return release_cached_workspace(); });
}

int nattn_host_trace(int32_t action, char* json, size_t json_len, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    switch (action) {
      case 0:
      case 1: set_host_trace(action == 1); return Status::Ok();
      case 2: return write_text(host_trace_json(), json, json_len, "json");
    }
    return Status::Invalid("action = " + std::to_string(action) + " is invalid: must be 0 (off), 1 (on) or 2 (read)");
  });
}

int nattn_check_problem(const nattn_problem* p, char* err, size_t err_len) {
  return guarded(err, err_len, [&] { return validate_problem(to_problem(*p)); });
}

int nattn_merge(int32_t n, const nattn_tensor* outs, const nattn_tensor* lses, const nattn_tensor* out,
                const nattn_tensor* lse, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    MergeViews m;
    NATTN_RETURN_IF_ERROR(merge_views(n, outs, lses, out, lse, &m));
    return merge_attentions(m.outs, m.lses, m.out, m.lse);
  });
}

int nattn_merge_on_stream(int32_t n, const nattn_tensor* outs, const nattn_tensor* lses, const nattn_tensor* out,
                          const nattn_tensor* lse, const nattn_options* o, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    MergeViews m;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(merge_views(n, outs, lses, out, lse, &m));
    return merge_attentions(m.outs, m.lses, m.out, m.lse, to_options(o));
  });
}

int nattn_check_forward_shapes(const nattn_problem* p, const nattn_tensor* tensors, int32_t dense, char* err,
                               size_t err_len) {
  return guarded(err, err_len, [&] {
    ForwardTensors t;
    NATTN_RETURN_IF_ERROR(forward_tensors(tensors, &t));
    return check_forward_shapes(*p, t, dense != 0);
  });
}

int nattn_check_backward_shapes(const nattn_problem* p, const nattn_tensor* tensors, int32_t dense, char* err,
                                size_t err_len) {
  return guarded(err, err_len, [&] {
    BackwardTensors t;
    NATTN_RETURN_IF_ERROR(backward_tensors(tensors, &t));
    return check_backward_shapes(*p, t, dense != 0);
  });
}

int nattn_check_merge_shapes(int32_t n, const nattn_tensor* outs, const nattn_tensor* lses, const nattn_tensor* out,
                             const nattn_tensor* lse, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    MergeViews m;
    NATTN_RETURN_IF_ERROR(merge_views(n, outs, lses, out, lse, &m));
    return validate_merge(m.outs, m.lses, m.out, m.lse, Validation::kShapes);
  });
}

int nattn_struct_layout(const char* name, int64_t* size, int32_t* num_fields, int64_t* offsets, int64_t* sizes,
                        int32_t max_fields, char* names, size_t names_len, char* err, size_t err_len) {
  return guarded(err, err_len,
                 [&] { return struct_layout(name, size, num_fields, offsets, sizes, max_fields, names, names_len); });
}

int nattn_backend_available(int32_t kind, char* reason, size_t reason_len) {
  for (const BackendInfo& b : backends()) {
    if (int(b.kind) != kind) continue;
    if (b.available) {
      report(Status::Ok(), reason, reason_len);
      return 1;
    }
    report(Status::Unsupported(b.reason), reason, reason_len);
    return 0;
  }
  report(Status::Invalid("backend = " + std::to_string(kind) + " is invalid: unknown backend"), reason, reason_len);
  return 0;
}

const char* nattn_version(void) { return "0.1.0"; }

}  // extern "C"
