// Layer: torch binding. nattn's forward and backward as torch dispatcher ops
// (nattn_native::na_forward / na_backward), built on torch's stable C ABI so one build loads
// into every torch from the target version on (NATTN_TORCH_TARGET_VERSION, cmake/torch_ops.cmake).
//
// Why: the ctypes path spends most of a small call's host time in Python (per-signature cache
// keys, struct marshalling, two torch.empty calls). Here one dispatcher call reads the tensors'
// sizes, strides and pointers, allocates outputs (and CUDA workspace) with torch's allocator and
// calls the same C entry points as the ctypes binding (c_api.h), so the conversions, the checks
// and every error message are the library's, identical on both paths. The fake (meta)
// implementations live in Python (python/nattn/_native.py); autograd in a per-torch-version C++
// library (src/torch_autograd: the stable ABI has no C++ autograd) or in Python. No kernel logic
// here.
//
// Errors: a failed status is thrown as "[nattn status N|where] message"; _native.py turns it
// back into the exception the status maps to (ValueError, NotImplementedError, RuntimeError).
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "nattn/c_api.h"

namespace {

using torch::stable::Tensor;
using Ints = std::vector<int64_t>;

constexpr size_t kErrLen = 1024;

[[noreturn]] void fail(int code, const std::string& where, const std::string& message) {
  throw std::runtime_error("[nattn status " + std::to_string(code) + "|" + where + "] " + message);
}

void check_shim(AOTITorchError e, const std::string& where, const char* what) {
  if (e != AOTI_TORCH_SUCCESS) fail(3, where, std::string("torch's ") + what + " failed");
}

// The `window` argument: [rank, dense, is_causal * rank, then (not dense) kernel_size, stride,
// dilation * rank each, then the placement: nothing or global_extent, query_origin, key_origin
// * rank each]. One list keeps the op's argument parsing short (it is per call).
struct Window {
  int rank = 0;
  bool dense = false;
  const int64_t* causal = nullptr;
  const int64_t* kernel = nullptr;  // kernel_size, stride, dilation follow, rank apart
  const int64_t* placement = nullptr;
};

Window parse_window(const Ints& w) {
  Window p;
  if (w.size() < 3 || w[0] < 1 || w[0] > 3)
    fail(1, "nattn_native",
         "window = list of " + std::to_string(w.size()) + " ints is invalid: must start with a rank of 1..3");
  p.rank = int(w[0]);
  p.dense = w[1] != 0;
  const size_t r = size_t(p.rank), plain = 2 + r + (p.dense ? 0 : 3 * r);
  if (w.size() != plain && (p.dense || w.size() != plain + 3 * r))
    fail(1, "nattn_native",
         "window = list of " + std::to_string(w.size()) + " ints is invalid: rank " + std::to_string(r) + " needs " +
             std::to_string(plain) + (p.dense ? "" : " or " + std::to_string(plain + 3 * r)));
  p.causal = w.data() + 2;
  if (!p.dense) p.kernel = p.causal + r;
  if (w.size() > plain) p.placement = p.kernel + 3 * r;
  return p;
}

std::string where(const Window& w, bool backward) {
  std::string name = w.dense ? "nattn.attention" : "nattn.na" + std::to_string(w.rank) + "d";
  return backward ? name + " backward" : name;
}

int32_t nattn_dtype(torch::headeronly::ScalarType t) {
  using torch::headeronly::ScalarType;
  switch (t) {
    case ScalarType::Float: return 0;
    case ScalarType::Half: return 1;
    case ScalarType::BFloat16: return 2;
    case ScalarType::Double: return 3;
    default: return -1;
  }
}

// The C view of `x` (absent when null), as python/nattn/_lib.py's view(): shapes and strides as
// they are, ndim past NATTN_C_MAX_DIMS passed on so that the library names the slot.
nattn_tensor describe(const Tensor* x, const char* slot, const std::string& at) {
  nattn_tensor t{};
  if (x == nullptr) return t;
  t.dtype = nattn_dtype(x->scalar_type());
  if (t.dtype < 0) fail(1, at, std::string(slot) + ".dtype is invalid: must be float32, float16, bfloat16 or float64");
  const int64_t n = x->dim();
  t.ndim = int32_t(n);
  const auto sizes = x->sizes();
  const auto strides = x->strides();
  for (int64_t i = 0; i < n && i < NATTN_C_MAX_DIMS; ++i) {
    t.shape[i] = sizes[i];
    t.stride[i] = strides[i];
  }
  if (x->is_cuda()) {
    t.device_type = 1;
  } else if (!x->is_cpu()) {
    fail(1, at, std::string(slot) + ".device is invalid: must be cpu or cuda");
  }
  t.device_index = t.device_type == 1 ? int32_t(x->get_device_index()) : 0;
  t.data = x->data_ptr();
  return t;
}

// A size the problem reads off a tensor, or 1 when the tensor lacks that dim (the library then
// reports the tensor's number of dims, which it checks first): _lib.py's _dim.
int64_t dim_or(const nattn_tensor& t, int index, int64_t fallback = 1) {
  const int need = index >= 0 ? index + 1 : -index;
  if (t.ndim < need) return fallback;
  const int i = index >= 0 ? index : t.ndim + index;
  return i < NATTN_C_MAX_DIMS ? t.shape[i] : fallback;
}

// _lib.py's problem(): the problem read off the views ([B, X.., H, D]) and the window.
// `extra`: additional_keys, or additional_values when only they were given (either gives Na;
// the library names the missing one); null when neither was.
nattn_problem make_problem(const Window& w, const nattn_tensor* v, const nattn_tensor* extra,
                           std::optional<double> scale) {
  const nattn_tensor &q = v[0], &k = v[1], &val = v[2];
  nattn_problem p{};
  p.rank = w.rank;
  p.batch = dim_or(q, 0);
  for (int a = 0; a < w.rank; ++a) {
    p.extent[a] = dim_or(q, 1 + a);
    if (!w.dense) {
      p.kernel_size[a] = w.kernel[a];
      p.stride[a] = w.kernel[w.rank + a];
      p.dilation[a] = w.kernel[2 * w.rank + a];
    }
    p.is_causal[a] = w.causal[a] != 0;
  }
  if (w.dense) {
    p.key_extent[0] = dim_or(k, 1);
  } else if (w.placement != nullptr) {
    for (int a = 0; a < w.rank; ++a) {
      p.global_extent[a] = w.placement[a];
      p.query_origin[a] = w.placement[w.rank + a];
      p.key_origin[a] = w.placement[2 * w.rank + a];
      p.key_extent[a] = dim_or(k, 1 + a);
    }
  }
  p.heads_q = dim_or(q, -2);
  p.head_dim = dim_or(q, -1);
  p.heads_kv = dim_or(k, -2);
  p.head_dim_v = dim_or(val, -1);
  if (scale) {
    p.has_scale = 1;
    p.scale = *scale;
  }
  p.num_additional = extra != nullptr ? dim_or(*extra, 1) : 0;
  return p;
}

// Device scratch from torch's caching allocator on the current stream (as _lib.py's callbacks):
// the library releases every block before the call returns, on the calling thread.
thread_local std::unordered_map<void*, AtenTensorHandle> t_workspace;

void* workspace_allocate(size_t bytes, void* ctx) {
  const int64_t n = int64_t(bytes > 0 ? bytes : 1), stride = 1;
  AtenTensorHandle h = nullptr;
  if (aoti_torch_empty_strided(1, &n, &stride, aoti_torch_dtype_uint8(), aoti_torch_device_type_cuda(),
                               int32_t(reinterpret_cast<intptr_t>(ctx)), &h) != AOTI_TORCH_SUCCESS)
    return nullptr;  // the library reports the failed allocation
  void* p = nullptr;
  aoti_torch_get_data_ptr(h, &p);
  t_workspace.emplace(p, h);
  return p;
}

void workspace_release(void* ptr, void*) {
  auto it = t_workspace.find(ptr);
  if (it == t_workspace.end()) return;
  aoti_torch_delete_tensor_object(it->second);
  t_workspace.erase(it);
}

// torch's current CUDA stream. The shim function lives in libtorch_cuda.so, which a CPU torch
// lacks, so it is looked up at run time (RTLD_NOLOAD: only the copy torch already loaded).
void* current_cuda_stream(int32_t device, const std::string& at) {
  using Fn = AOTITorchError (*)(int32_t, void**);
  static Fn fn = [] {
    void* lib = dlopen("libtorch_cuda.so", RTLD_LAZY | RTLD_NOLOAD);
    return lib ? reinterpret_cast<Fn>(dlsym(lib, "aoti_torch_get_current_cuda_stream")) : nullptr;
  }();
  if (fn == nullptr)
    fail(3, at, "CUDA tensors, but this torch has no aoti_torch_get_current_cuda_stream (libtorch_cuda.so)");
  void* stream = nullptr;
  check_shim(fn(device, &stream), at, "aoti_torch_get_current_cuda_stream");
  return stream;
}

// The `options` argument: [backend, deterministic, poison, config_ids * 4 (-1 unused),
// own_tile * 3, walk_tile * 3]. deterministic is a set of bits (nonzero: deterministic kernels):
// torch's flag and the call's own `deterministic` (python/nattn/_native.py DETERMINISTIC_*).
constexpr size_t kOptionsLen = 3 + NATTN_C_MAX_CONFIG_IDS + 6;

nattn_options make_options(const Ints& o, const std::string& family, const nattn_tensor& q, const std::string& at) {
  if (o.size() != kOptionsLen)
    fail(
        1, at,
        "options = list of " + std::to_string(o.size()) + " ints is invalid: must have " + std::to_string(kOptionsLen));
  nattn_options opt{};
  opt.backend = int32_t(o[0]);
  opt.deterministic = int32_t(o[1]);
  opt.family = family.c_str();
  for (int i = 0; i < NATTN_C_MAX_CONFIG_IDS; ++i) opt.config_ids[i] = int32_t(o[3 + i]);
  for (int a = 0; a < 3; ++a) {
    opt.own_tile[a] = int32_t(o[3 + NATTN_C_MAX_CONFIG_IDS + a]);
    opt.walk_tile[a] = int32_t(o[6 + NATTN_C_MAX_CONFIG_IDS + a]);
  }
  if (q.device_type == 1) {
    opt.stream = current_cuda_stream(q.device_index, at);
    opt.workspace_allocate = workspace_allocate;
    opt.workspace_release = workspace_release;
    opt.workspace_ctx = reinterpret_cast<void*>(intptr_t(q.device_index));
  }
  return opt;
}

// A contiguous tensor of `shape` on q's device (torch's allocator), and its C view in `view`.
Tensor allocate(const int64_t* shape, int n, int32_t torch_dtype, int32_t nattn_dt, const nattn_tensor& q, bool poison,
                nattn_tensor* view, const std::string& at) {
  int64_t strides[NATTN_C_MAX_DIMS + 2];
  int64_t s = 1;
  for (int i = n - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i] > 1 ? shape[i] : 1;
  }
  AtenTensorHandle h = nullptr;
  const int32_t device = q.device_type == 1 ? aoti_torch_device_type_cuda() : aoti_torch_device_type_cpu();
  check_shim(aoti_torch_empty_strided(n, shape, strides, torch_dtype, device, q.device_index, &h), at, "empty_strided");
  Tensor t(h);
  // NATTN_POISON_OUTPUTS=1 (the tests): unwritten elements show up as NaN.
  if (poison) torch::stable::fill_(t, std::nan(""));
  *view = nattn_tensor{};
  view->data = t.data_ptr();
  view->dtype = nattn_dt;
  view->ndim = n;
  for (int i = 0; i < n && i < NATTN_C_MAX_DIMS; ++i) {
    view->shape[i] = shape[i];
    view->stride[i] = strides[i];
  }
  view->device_type = q.device_type;
  view->device_index = q.device_index;
  return t;
}

using CheckFn = int (*)(const nattn_problem*, const nattn_tensor*, int32_t, char*, size_t);
using RunFn = int (*)(const nattn_problem*, const nattn_tensor*, const nattn_options*, char*, size_t);

void check(CheckFn fn, const nattn_problem& p, const nattn_tensor* views, bool dense, const std::string& at) {
  char err[kErrLen];
  const int code = fn(&p, views, int32_t(dense), err, kErrLen);
  if (code != 0) fail(code, at, err);
}

void run(RunFn fn, const nattn_problem& p, const nattn_tensor* views, const nattn_options& o, const std::string& at) {
  char err[kErrLen];
  const int code = fn(&p, views, &o, err, kErrLen);
  if (code != 0) fail(code, at, err);
}

const Tensor* ptr(const std::optional<Tensor>& x) { return x ? &*x : nullptr; }

// The view the problem reads Na off (views: the ak and av slots), as _lib.py's problem().
const nattn_tensor* extra_view(const std::optional<Tensor>& ak, const std::optional<Tensor>& av,
                               const nattn_tensor* views) {
  return ak ? views : av ? views + 1 : nullptr;
}

std::tuple<Tensor, Tensor> na_forward(Tensor query, Tensor key, Tensor value, std::optional<Tensor> additional_keys,
                                      std::optional<Tensor> additional_values, Ints window, std::optional<double> scale,
                                      Ints options, std::string family) {
  const Window w = parse_window(window);
  const std::string at = where(w, false);
  nattn_tensor v[NATTN_FWD_COUNT]{};
  v[NATTN_FWD_Q] = describe(&query, "query", at);
  v[NATTN_FWD_K] = describe(&key, "key", at);
  v[NATTN_FWD_V] = describe(&value, "value", at);
  v[NATTN_FWD_AK] = describe(ptr(additional_keys), "additional_keys", at);
  v[NATTN_FWD_AV] = describe(ptr(additional_values), "additional_values", at);
  const nattn_tensor& q = v[NATTN_FWD_Q];
  const nattn_problem p = make_problem(w, v, extra_view(additional_keys, additional_values, v + NATTN_FWD_AK), scale);
  const nattn_options o = make_options(options, family, q, at);
  // Outputs: out [B, X.., Hq, Dv], lse [B, X.., Hq]. nattn_forward validates everything before it
  // writes, so the outputs are allocated first and the call validates once (a second validation
  // cost a third of the op's host time); only views the outputs cannot mirror (q or v without
  // dims, or past NATTN_C_MAX_DIMS) are checked before allocating, for the library's message.
  const int n = q.ndim > 0 ? std::min<int>(q.ndim, NATTN_C_MAX_DIMS) : 1;
  int64_t out_shape[NATTN_C_MAX_DIMS + 1], lse_shape[NATTN_C_MAX_DIMS + 1];
  for (int i = 0; i + 1 < n; ++i) out_shape[i] = lse_shape[i] = q.shape[i];
  const nattn_tensor& val = v[NATTN_FWD_V];
  out_shape[n - 1] = val.ndim ? (val.ndim <= NATTN_C_MAX_DIMS ? val.shape[val.ndim - 1] : 1) : 1;
  auto planned = [&](const int64_t* shape, int m, int32_t dt) {
    nattn_tensor t{};
    t.dtype = dt;
    t.ndim = m;
    int64_t s = 1;
    for (int i = m - 1; i >= 0; --i) {
      t.shape[i] = shape[i];
      t.stride[i] = s;
      s *= shape[i] > 1 ? shape[i] : 1;
    }
    t.device_type = q.device_type;
    t.device_index = q.device_index;
    return t;
  };
  v[NATTN_FWD_OUT] = planned(out_shape, n, q.dtype);
  v[NATTN_FWD_LSE] = planned(lse_shape, n - 1, 0);
  if (q.ndim < 1 || q.ndim > NATTN_C_MAX_DIMS || val.ndim < 1 || val.ndim > NATTN_C_MAX_DIMS)
    check(nattn_check_forward_shapes, p, v, w.dense, at);
  const bool poison = options[2] != 0;
  int32_t torch_dtype = 0;
  check_shim(aoti_torch_get_dtype(query.get(), &torch_dtype), at, "get_dtype");
  Tensor out = allocate(out_shape, n, torch_dtype, q.dtype, q, poison, &v[NATTN_FWD_OUT], at);
  Tensor lse = allocate(lse_shape, n - 1, aoti_torch_dtype_float32(), 0, q, poison, &v[NATTN_FWD_LSE], at);
  run(w.dense ? nattn_attention_forward : nattn_forward, p, v, o, at);
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> na_backward(Tensor query, Tensor key, Tensor value,
                                                               std::optional<Tensor> additional_keys,
                                                               std::optional<Tensor> additional_values, Tensor out,
                                                               Tensor lse, Tensor dout, std::optional<Tensor> dlse,
                                                               Ints window, std::optional<double> scale, Ints options,
                                                               std::string family) {
  const Window w = parse_window(window);
  const std::string at = where(w, true);
  nattn_tensor v[NATTN_BWD_COUNT]{};
  v[NATTN_BWD_Q] = describe(&query, "query", at);
  v[NATTN_BWD_K] = describe(&key, "key", at);
  v[NATTN_BWD_V] = describe(&value, "value", at);
  v[NATTN_BWD_AK] = describe(ptr(additional_keys), "additional_keys", at);
  v[NATTN_BWD_AV] = describe(ptr(additional_values), "additional_values", at);
  v[NATTN_BWD_OUT] = describe(&out, "out", at);
  v[NATTN_BWD_LSE] = describe(&lse, "lse", at);
  v[NATTN_BWD_DOUT] = describe(&dout, "dout", at);
  v[NATTN_BWD_DLSE] = describe(ptr(dlse), "dlse", at);
  const nattn_tensor& q = v[NATTN_BWD_Q];
  const nattn_problem p = make_problem(w, v, extra_view(additional_keys, additional_values, v + NATTN_BWD_AK), scale);
  const nattn_options o = make_options(options, family, q, at);
  // Gradients: contiguous, q's dtype, the shapes of q, k, v (and ak, av) (_ops.py's _grad_buffers);
  // allocated before the one validation, as in na_forward, unless a view has more dims than the
  // C ABI holds (then the library's check names it first).
  const int sources[5] = {NATTN_BWD_Q, NATTN_BWD_K, NATTN_BWD_V, NATTN_BWD_AK, NATTN_BWD_AV};
  const bool present[5] = {true, true, true, bool(additional_keys), bool(additional_values)};
  for (int g = 0; g < 5; ++g) {
    const nattn_tensor& s = v[sources[g]];
    nattn_tensor& t = v[NATTN_BWD_DQ + g];
    t = nattn_tensor{};
    if (!present[g]) continue;
    t.dtype = q.dtype;
    t.ndim = s.ndim;
    int64_t st = 1;
    for (int i = std::min<int>(s.ndim, NATTN_C_MAX_DIMS) - 1; i >= 0; --i) {
      t.shape[i] = s.shape[i];
      t.stride[i] = st;
      st *= s.shape[i] > 1 ? s.shape[i] : 1;
    }
    t.device_type = q.device_type;
    t.device_index = q.device_index;
  }
  bool representable = true;
  for (const nattn_tensor& t : v) representable = representable && t.ndim <= NATTN_C_MAX_DIMS;
  if (!representable) check(nattn_check_backward_shapes, p, v, w.dense, at);
  const bool poison = options[2] != 0;
  int32_t torch_dtype = 0;
  check_shim(aoti_torch_get_dtype(query.get(), &torch_dtype), at, "get_dtype");
  std::vector<Tensor> grads;
  grads.reserve(5);
  for (int g = 0; g < 5; ++g) {
    const nattn_tensor& s = v[sources[g]];
    if (!present[g]) {  // ops cannot return None: an empty tensor stands for an absent gradient
      const int64_t zero = 0;
      grads.push_back(allocate(&zero, 1, torch_dtype, q.dtype, q, false, &v[NATTN_BWD_DQ + g], at));
      v[NATTN_BWD_DQ + g] = nattn_tensor{};
      continue;
    }
    grads.push_back(allocate(s.shape, s.ndim, torch_dtype, q.dtype, q, poison, &v[NATTN_BWD_DQ + g], at));
  }
  run(w.dense ? nattn_attention_backward : nattn_backward, p, v, o, at);
  return {grads[0], grads[1], grads[2], grads[3], grads[4]};
}

}  // namespace

STABLE_TORCH_LIBRARY(nattn_native, m) {
  m.def(
      "na_forward(Tensor query, Tensor key, Tensor value, Tensor? additional_keys, Tensor? additional_values, "
      "int[] window, float? scale, int[] options, str family) -> (Tensor, Tensor)");
  m.def(
      "na_backward(Tensor query, Tensor key, Tensor value, Tensor? additional_keys, Tensor? additional_values, "
      "Tensor out, Tensor lse, Tensor dout, Tensor? dlse, int[] window, float? scale, int[] options, str family) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(nattn_native, CPU, m) {
  m.impl("na_forward", TORCH_BOX(&na_forward));
  m.impl("na_backward", TORCH_BOX(&na_backward));
}

STABLE_TORCH_LIBRARY_IMPL(nattn_native, CUDA, m) {
  m.impl("na_forward", TORCH_BOX(&na_forward));
  m.impl("na_backward", TORCH_BOX(&na_backward));
}
