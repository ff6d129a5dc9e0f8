// Layer: torch binding. The autograd of the eager fast path in C++: the op
// nattn_autograd::na_attention records a C++ autograd node whose backward calls the dispatcher op
// nattn_native::na_backward (src/torch_ops/ops.cpp) straight from torch's autograd engine.
//
// Why: with a Python torch.autograd.Function (python/nattn/_fast.py) a small forward+backward
// step costs ~340 us of host time before any nattn work (bench/overhead.py's floor, H100,
// 2026-12-05): the engine runs a CUDA backward on its device thread, which must take the GIL and
// enter Python for the node. dense SDPA's whole step costs ~300 us there. A C++ node keeps the
// backward off the GIL, as torch's own ops do.
//
// The price: torch's C++ autograd API is not in its stable ABI, so this library is built for one
// torch version (the build folder's; its file name carries that version, see CMakeLists.txt) and
// python/nattn/_native_autograd.py loads it only into that version. No nattn logic here: the
// forward and backward are the native ops' (same checks, same messages, same kernels); this file
// only records the graph. It does not link libnattn: the ops are looked up by name.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>
#include <tuple>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Ints = std::vector<int64_t>;

// Backward calls that ran here (the forward is counted in Python, where it is called). Read by
// nattn._native_autograd.calls() for the tests' which-path-ran assertions.
std::atomic<int64_t> g_backward_calls{0};

// The bits of options[1] (python/nattn/_native.py DETERMINISTIC_*): torch's
// use_deterministic_algorithms when the list was built, and the call's own `deterministic`.
constexpr int64_t kDeterministicTorch = 1, kDeterministicCall = 2;

using ForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                                     c10::IntArrayRef, std::optional<double>, c10::IntArrayRef,
                                                     c10::string_view);
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, c10::IntArrayRef, std::optional<double>, c10::IntArrayRef, c10::string_view);

// Looked up on first use: libnattn_torch_ops.so is loaded before this library (_native_autograd.py)
// but registration order inside one process is not something to rely on at load time.
const c10::TypedOperatorHandle<ForwardFn>& native_forward() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("nattn_native::na_forward", "").typed<ForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& native_backward() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("nattn_native::na_backward", "").typed<BackwardFn>();
  return op;
}

std::optional<at::Tensor> present(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// A backward that is itself differentiated (create_graph=True) goes to the torch.library custom
// op nattn::na_backward (python/nattn/_ops.py), as the Python fast path does: that op says what
// double backward supports (it has no formula, so differentiating it raises), and both paths
// end the same way. Its arguments are spelled out, so the packed `window` and `options` lists
// (their layout: _native.py window() and options()) are unpacked here; of the determinism only the
// call's own bit is passed (the op reads torch's flag itself).
std::vector<c10::IValue> custom_op_backward(const variable_list& s, const at::Tensor& dout,
                                            const std::optional<at::Tensor>& dlse, const Ints& w,
                                            const std::optional<double>& scale, const Ints& o,
                                            const std::string& family) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("nattn::na_backward", "");
  const int64_t rank = w.at(0);
  const bool dense = w.at(1) != 0;
  const auto slice = [&](size_t from, size_t n) { return Ints(w.begin() + from, w.begin() + from + n); };
  c10::List<bool> causal;
  for (int64_t a = 0; a < rank; ++a) causal.push_back(w.at(2 + a) != 0);
  Ints kernel, stride, dilation, placement;
  if (!dense) {
    kernel = slice(2 + rank, rank);
    stride = slice(2 + 2 * rank, rank);
    dilation = slice(2 + 3 * rank, rank);
    placement = Ints(w.begin() + 2 + 4 * rank, w.end());
  }
  Ints config_ids, tiles(o.begin() + 7, o.begin() + 13);
  for (size_t i = 3; i < 7; ++i)
    if (o.at(i) >= 0) config_ids.push_back(o[i]);
  if (std::all_of(tiles.begin(), tiles.end(), [](int64_t t) { return t == 0; })) tiles.clear();
  const bool deterministic = (o.at(1) & kDeterministicCall) != 0;
  std::vector<c10::IValue> stack{s[0],  s[1],    s[2],      present(s[3]), present(s[4]), s[5],   s[6],
                                 dout,  dlse,    kernel,    stride,        dilation,      causal, scale,
                                 dense, o.at(0), placement, family,        config_ids,    tiles,  deterministic};
  // A boxed call does not fill in defaults, and a stack of the wrong length is undefined
  // behaviour: arguments the op gained since this file was written take their defaults, and a
  // library and package from different versions fail with a message instead.
  const auto& args = op.schema().arguments();
  for (size_t i = stack.size(); i < args.size() && args[i].default_value(); ++i)
    stack.push_back(*args[i].default_value());
  TORCH_CHECK(stack.size() == args.size(), "nattn: nattn::na_backward takes ", args.size(), " arguments, ",
              "libnattn_torch_autograd passes ", stack.size(),
              ": it was built for another version of nattn; rebuild it");
  op.callBoxed(stack);
  return stack;
}

struct NaAttention : public torch::autograd::Function<NaAttention> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& ak, const std::optional<at::Tensor>& av,
                               c10::IntArrayRef window, std::optional<double> scale, c10::IntArrayRef options,
                               c10::string_view family) {
    // Below autograd: the native op has no autograd kernel, and torch's fallback for one would
    // only add work (grad mode is off here anyway).
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, lse] = native_forward().call(q, k, v, ak, av, window, scale, options, family);
    // An output that fed nothing gets an undefined gradient, not zeros (as _fast._Attention).
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({q, k, v, ak.value_or(at::Tensor()), av.value_or(at::Tensor()), out, lse});
    ctx->saved_data["window"] = window.vec();
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["options"] = options.vec();
    ctx->saved_data["family"] = std::string(family);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    RECORD_FUNCTION("nattn::na_backward", std::vector<c10::IValue>());  // the custom op's name
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor dout = grads[0].defined() ? grads[0] : at::zeros_like(s[5]);  // only lse fed
    const std::optional<at::Tensor> dlse = present(grads[1]);
    const Ints window = ctx->saved_data["window"].toIntVector();
    const std::optional<double> scale = ctx->saved_data["scale"].toOptional<double>();
    Ints options = ctx->saved_data["options"].toIntVector();
    // torch's flag is read when the backward runs, as the Python path does; the call's own
    // requirement (deterministic=True) is kept: the backward is deterministic if either asks.
    options.at(1) = (options.at(1) & kDeterministicCall) |
                    (at::globalContext().deterministicAlgorithms() ? kDeterministicTorch : 0);
    const std::string family = ctx->saved_data["family"].toStringRef();
    at::Tensor g[5];
    if (c10::GradMode::is_enabled()) {
      auto out = custom_op_backward(s, dout, dlse, window, scale, options, family);
      for (int i = 0; i < 5; ++i) g[i] = out[i].toTensor();
    } else {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(g[0], g[1], g[2], g[3], g[4]) = native_backward().call(
          s[0], s[1], s[2], present(s[3]), present(s[4]), s[5], s[6], dout, dlse, window, scale, options, family);
      g_backward_calls.fetch_add(1, std::memory_order_relaxed);
    }
    if (!s[3].defined()) g[3] = g[4] = at::Tensor();  // the ops return empty tensors for "none"
    return {g[0], g[1], g[2], g[3], g[4], at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> na_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const std::optional<at::Tensor>& ak,
                                                const std::optional<at::Tensor>& av, c10::IntArrayRef window,
                                                std::optional<double> scale, c10::IntArrayRef options,
                                                c10::string_view family) {
  auto out = NaAttention::apply(q, k, v, ak, av, window, scale, options, family);
  return {out[0], out[1]};
}

// Without an autograd key (inference tensors) the call is the native forward itself.
std::tuple<at::Tensor, at::Tensor> na_attention_plain(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& ak,
                                                      const std::optional<at::Tensor>& av, c10::IntArrayRef window,
                                                      std::optional<double> scale, c10::IntArrayRef options,
                                                      c10::string_view family) {
  return native_forward().call(q, k, v, ak, av, window, scale, options, family);
}

int64_t backward_calls() { return g_backward_calls.load(std::memory_order_relaxed); }

}  // namespace

TORCH_LIBRARY(nattn_autograd, m) {
  m.def(
      "na_attention(Tensor query, Tensor key, Tensor value, Tensor? additional_keys, "
      "Tensor? additional_values, int[] window, float? scale, int[] options, str family) -> "
      "(Tensor, Tensor)");
  m.def("backward_calls() -> int", &backward_calls);
}

TORCH_LIBRARY_IMPL(nattn_autograd, Autograd, m) { m.impl("na_attention", &na_attention); }

TORCH_LIBRARY_IMPL(nattn_autograd, CompositeExplicitAutograd, m) { m.impl("na_attention", &na_attention_plain); }
