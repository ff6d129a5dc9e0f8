// Layer: api. Public entry points: validate, pick a backend, plan (cached) and run or explain.
#include "nattn/api.h"

#include <string>

#include "core/axes.h"
#include "core/backend.h"
#include "core/host_trace.h"
#include "core/validate.h"

namespace nattn {
namespace {

// The direction-specific steps of a call, so that run() below is written once.
Status validate_call(const Problem& p, const ForwardTensors& t, bool dense) { return validate_forward(p, t, dense); }
Status validate_call(const Problem& p, const BackwardTensors& t, bool dense) { return validate_backward(p, t, dense); }
constexpr bool is_backward(const ForwardTensors*) { return false; }
constexpr bool is_backward(const BackwardTensors*) { return true; }
Status explain_call(const Backend* b, const Problem& p, const ForwardTensors& t, const Options& o, Plan* plan) {
  return b->explain_forward(p, t, o, plan);
}
Status explain_call(const Backend* b, const Problem& p, const BackwardTensors& t, const Options& o, Plan* plan) {
  return b->explain_backward(p, t, o, plan);
}
Status run_call(const Backend* b, const Problem& p, const ForwardTensors& t, const Options& o) {
  return b->forward(p, t, o);
}
Status run_call(const Backend* b, const Problem& p, const BackwardTensors& t, const Options& o) {
  return b->backward(p, t, o);
}

// Validates, picks a backend, then explains (explain set) or runs the call; each step a traced
// host phase (core/host_trace.h).
template <class Tensors>
Status run(const Problem& p, const Tensors& t, const Options& o, bool dense, Plan* explain) {
  HostPhaseTimer call(HostPhase::kCall);
  {
    HostPhaseTimer phase(HostPhase::kValidate);
    NATTN_RETURN_IF_ERROR(validate_call(p, t, dense));
  }
  const Backend* b = nullptr;
  {
    HostPhaseTimer phase(HostPhase::kChooseBackend);
    NATTN_RETURN_IF_ERROR(choose_backend(p, t.q.dtype, t.q.device, is_backward(&t), o, &b));
  }
  if (explain != nullptr) return explain_call(b, p, t, o, explain);
  if (p.batch == 0) return Status::Ok();  // nothing to compute, nothing written
  return run_call(b, p, t, o);
}

Status need_plan(const Plan* plan) {
  return plan != nullptr ? Status::Ok() : Status::Invalid("plan = null is invalid: explain needs a Plan to fill");
}

}  // namespace

Status forward(const Problem& p, const ForwardTensors& t, const Options& o) { return run(p, t, o, false, nullptr); }

Status backward(const Problem& p, const BackwardTensors& t, const Options& o) { return run(p, t, o, false, nullptr); }

Status attention_forward(const AttentionProblem& d, const ForwardTensors& t, const Options& o) {
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return run(as_neighborhood(d), t, o, true, nullptr);
}

Status attention_backward(const AttentionProblem& d, const BackwardTensors& t, const Options& o) {
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return run(as_neighborhood(d), t, o, true, nullptr);
}

Status explain_forward(const Problem& p, const ForwardTensors& t, const Options& o, Plan* plan) {
  NATTN_RETURN_IF_ERROR(need_plan(plan));
  return run(p, t, o, false, plan);
}

Status explain_backward(const Problem& p, const BackwardTensors& t, const Options& o, Plan* plan) {
  NATTN_RETURN_IF_ERROR(need_plan(plan));
  return run(p, t, o, false, plan);
}

Status explain_attention_forward(const AttentionProblem& d, const ForwardTensors& t, const Options& o, Plan* plan) {
  NATTN_RETURN_IF_ERROR(need_plan(plan));
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return run(as_neighborhood(d), t, o, true, plan);
}

Status explain_attention_backward(const AttentionProblem& d, const BackwardTensors& t, const Options& o, Plan* plan) {
  NATTN_RETURN_IF_ERROR(need_plan(plan));
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return run(as_neighborhood(d), t, o, true, plan);
}

Status merge_attentions(const std::vector<TensorView>& outs, const std::vector<TensorView>& lses, const TensorView& out,
                        const TensorView& lse, const Options& o) {
  NATTN_RETURN_IF_ERROR(validate_merge(outs, lses, out, lse));
  std::string reasons;
  for (const Backend* b : registry()) {
    if (o.backend != BackendKind::kAuto && b->kind() != o.backend) continue;
    Status s = b->available();
    if (s.ok()) s = b->supports(Problem{}, out.dtype, out.device, false);
    if (s.ok()) return b->merge(outs, lses, out, lse, o);
    reasons += std::string(reasons.empty() ? "" : "; ") + b->name() + ": " + s.message();
  }
  return Status::Unsupported("merge_attentions: no backend can merge these tensors: " + reasons);
}

}  // namespace nattn
