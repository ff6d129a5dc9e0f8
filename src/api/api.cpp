// Layer: api. Public entry points: validate, pick a backend, plan (cached) and run or explain.
#include "nattn/api.h"

#include <string>

#include "core/axes.h"
#include "core/backend.h"
#include "core/host_trace.h"
#include "core/validate.h"

namespace nattn {
namespace {

Status run_forward(const Problem& p, const ForwardTensors& t, const Options& o, bool dense, Plan* explain) {
  HostPhaseTimer call(HostPhase::kCall);
  {
    HostPhaseTimer phase(HostPhase::kValidate);
    NATTN_RETURN_IF_ERROR(validate_forward(p, t, dense));
  }
  const Backend* b = nullptr;
  {
    HostPhaseTimer phase(HostPhase::kChooseBackend);
    NATTN_RETURN_IF_ERROR(choose_backend(p, t.q.dtype, t.q.device, false, o, &b));
  }
  if (explain != nullptr) return b->explain_forward(p, t, o, explain);
  if (p.batch == 0) return Status::Ok();  // nothing to compute, nothing written
  return b->forward(p, t, o);
}

Status run_backward(const Problem& p, const BackwardTensors& t, const Options& o, bool dense, Plan* explain) {
  HostPhaseTimer call(HostPhase::kCall);
  {
    HostPhaseTimer phase(HostPhase::kValidate);
    NATTN_RETURN_IF_ERROR(validate_backward(p, t, dense));
  }
  const Backend* b = nullptr;
  {
    HostPhaseTimer phase(HostPhase::kChooseBackend);
    NATTN_RETURN_IF_ERROR(choose_backend(p, t.q.dtype, t.q.device, true, o, &b));
  }
  if (explain != nullptr) return b->explain_backward(p, t, o, explain);
  if (p.batch == 0) return Status::Ok();
  return b->backward(p, t, o);
}

Status need_plan(const Plan* plan) {
  return plan != nullptr ? Status::Ok() : Status::Invalid("plan = null is invalid: explain needs a Plan to fill");
}

}  // namespace

Status forward(const Problem& p, const ForwardTensors& t, const Options& o) {
  return run_forward(p, t, o, false, nullptr);
}

Status backward(const Problem& p, const BackwardTensors& t, const Options& o) {
  return run_backward(p, t, o, false, nullptr);
}

Status attention_forward(const AttentionProblem& d, const ForwardTensors& t, const Options& o) {
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return run_forward(as_neighborhood(d), t, o, true, nullptr);
}

Status attention_backward(const AttentionProblem& d, const BackwardTensors& t, const Options& o) {
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return run_backward(as_neighborhood(d), t, o, true, nullptr);
}

Status explain_forward(const Problem& p, const ForwardTensors& t, const Options& o, Plan* plan) {
  NATTN_RETURN_IF_ERROR(need_plan(plan));
  return run_forward(p, t, o, false, plan);
}

Status explain_backward(const Problem& p, const BackwardTensors& t, const Options& o, Plan* plan) {
  NATTN_RETURN_IF_ERROR(need_plan(plan));
  return run_backward(p, t, o, false, plan);
}

Status explain_attention_forward(const AttentionProblem& d, const ForwardTensors& t, const Options& o, Plan* plan) {
  NATTN_RETURN_IF_ERROR(need_plan(plan));
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return run_forward(as_neighborhood(d), t, o, true, plan);
}

Status explain_attention_backward(const AttentionProblem& d, const BackwardTensors& t, const Options& o, Plan* plan) {
  NATTN_RETURN_IF_ERROR(need_plan(plan));
  NATTN_RETURN_IF_ERROR(validate_attention_problem(d));
  return run_backward(as_neighborhood(d), t, o, true, plan);
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
