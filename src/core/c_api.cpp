// Layer: core. The C ABI (c_api.h) over the C++ API: converts plain structs to views and
// Status to (code, message). Enum values arriving from foreign callers are checked here.
#include "nattn/c_api.h"

#include <cstring>
#include <exception>
#include <string>

#include "core/validate.h"
#include "nattn/api.h"

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
  for (int i = 0; i < c.ndim; ++i) { v.shape[i] = c.shape[i]; v.stride[i] = c.stride[i]; }
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
  return p;
}

AttentionProblem to_attention(const nattn_problem& c) {
  AttentionProblem d;
  d.batch = c.batch;
  d.seq_len = c.extent[0];
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
  }
  return opt;
}

Status check_options(const nattn_options* o) {
  if (o && (o->backend < 0 || o->backend > int(BackendKind::kCuda)))
    return Status::Invalid("backend = " + std::to_string(o->backend) + " is invalid: must be auto, reference or cuda");
  return Status::Ok();
}

const char* const kFwdNames[] = {"q", "k", "v", "additional_k", "additional_v", "out", "lse"};
const char* const kBwdNames[] = {"q", "k", "v", "additional_k", "additional_v", "out", "lse",
                                 "dout", "dlse", "dq", "dk", "dv", "d_additional_k", "d_additional_v"};

Status forward_tensors(const nattn_tensor* c, ForwardTensors* t) {
  TensorView* slots[] = {&t->q, &t->k, &t->v, &t->additional_k, &t->additional_v, &t->out, &t->lse};
  for (int i = 0; i < NATTN_FWD_COUNT; ++i) NATTN_RETURN_IF_ERROR(to_view(c[i], kFwdNames[i], slots[i]));
  return Status::Ok();
}

Status backward_tensors(const nattn_tensor* c, BackwardTensors* t) {
  TensorView* slots[] = {&t->q, &t->k, &t->v, &t->additional_k, &t->additional_v, &t->out, &t->lse,
                         &t->dout, &t->dlse, &t->dq, &t->dk, &t->dv, &t->d_additional_k, &t->d_additional_v};
  for (int i = 0; i < NATTN_BWD_COUNT; ++i) NATTN_RETURN_IF_ERROR(to_view(c[i], kBwdNames[i], slots[i]));
  return Status::Ok();
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

int nattn_attention_forward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o,
                            char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    ForwardTensors t;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(forward_tensors(tensors, &t));
    return attention_forward(to_attention(*p), t, to_options(o));
  });
}

int nattn_attention_backward(const nattn_problem* p, const nattn_tensor* tensors, const nattn_options* o,
                             char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    BackwardTensors t;
    NATTN_RETURN_IF_ERROR(check_options(o));
    NATTN_RETURN_IF_ERROR(backward_tensors(tensors, &t));
    return attention_backward(to_attention(*p), t, to_options(o));
  });
}

int nattn_check_problem(const nattn_problem* p, char* err, size_t err_len) {
  return guarded(err, err_len, [&] { return validate_problem(to_problem(*p)); });
}

int nattn_merge(int32_t n, const nattn_tensor* outs, const nattn_tensor* lses, const nattn_tensor* out,
                const nattn_tensor* lse, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    std::vector<TensorView> o(size_t(n > 0 ? n : 0)), l(o.size());
    for (size_t i = 0; i < o.size(); ++i) {
      const std::string index = "[" + std::to_string(i) + "]";
      NATTN_RETURN_IF_ERROR(to_view(outs[i], ("outs" + index).c_str(), &o[i]));
      NATTN_RETURN_IF_ERROR(to_view(lses[i], ("lses" + index).c_str(), &l[i]));
    }
    TensorView ov, lv;
    NATTN_RETURN_IF_ERROR(to_view(*out, "out", &ov));
    NATTN_RETURN_IF_ERROR(to_view(*lse, "lse", &lv));
    return merge_attentions(o, l, ov, lv);
  });
}

int nattn_backend_available(int32_t kind, char* reason, size_t reason_len) {
  for (const BackendInfo& b : backends()) {
    if (int(b.kind) != kind) continue;
    if (b.available) { report(Status::Ok(), reason, reason_len); return 1; }
    report(Status::Unsupported(b.reason), reason, reason_len);
    return 0;
  }
  report(Status::Invalid("backend = " + std::to_string(kind) + " is invalid: unknown backend"), reason, reason_len);
  return 0;
}

const char* nattn_version(void) { return "0.1.0"; }

}  // extern "C"
