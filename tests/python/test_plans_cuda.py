"""Which kernel family runs on a CUDA device, asserted through nattn.explain.

The layouts people use (contiguous [B, X.., H, D]; q, k, v unbound from a packed [B, X.., 3, H, D]
projection; [B, H, X.., D] permuted to heads-last) run a fused family (sm90 or sm80, never the
generic kernels) in float16 and bfloat16, reading every tensor in place; the backward of
out.sum() gets an expanded (stride-0) gradient, which the plan copies (dout) rather than falling
back to the generic kernels. float32 runs the generic kernels, and the plan says why sm80 does not.
Every built sm80 row of the configuration table runs, automatically and when forced, against the
CPU reference.

"The plan that ran": explain is called after the call it describes, and its plan must come from
the library's plan cache (`cached`), whose key is everything that decides a plan (problem,
dtype, strides, alignment, device, options), so the call ran that very plan.

Skipped without torch.cuda (conftest: the `cuda` marker); tests that need nattn's CUDA backend
take the `cuda_backend` fixture (NATTN_REQUIRE_CUDA=1 fails them instead of skipping).
"""
import pytest
import torch

import nattn
from na_reference import reference_na

pytestmark = pytest.mark.cuda

FUSED = ("sm90", "sm80")
# (forward, gradients) tolerances against the float64 oracle, as in test_cuda.py.
TOL = {torch.float16: (5e-3, 2e-2), torch.bfloat16: (3e-2, 6e-2), torch.float32: (2e-3, 5e-3)}
NA = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}
HALF = [torch.float16, torch.bfloat16]

PROBLEMS = [  # (extents, kernel_size, heads, head_dim)
    ((200,), 31, 4, 64),
    ((20, 24), (7, 9), 2, 128),
    ((6, 8, 10), 3, 2, 64),
]
LAYOUTS = ["contiguous", "packed", "heads_first"]


def inputs(layout, extents, heads, d, dtype, b=1):
    """q, k, v [B, X.., H, D] (requires_grad) in one of the layouts people use."""
    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=dtype)
    if layout == "contiguous":
        q, k, v = (r(b, *extents, heads, d) for _ in range(3))
    elif layout == "packed":  # a fused qkv projection's output: [B, X.., 3, H, D]
        q, k, v = r(b, *extents, 3, heads, d).unbind(-3)
        assert not q.is_contiguous()
    elif layout == "heads_first":  # [B, H, X.., D] permuted to heads-last
        q, k, v = (r(b, heads, *extents, d).movedim(1, -2) for _ in range(3))
        assert not q.is_contiguous() and q.stride(-1) == 1
    else:
        raise ValueError(layout)
    return [x.requires_grad_() for x in (q, k, v)]


def copied(plan):
    """The names of the tensors a plan copies ("dout: copied into a dense buffer (...)")."""
    return sorted(c.split(":")[0] for c in plan.copies)


def chosen(plan):
    return [f.family for f in plan.families if f.chosen]


def verdict(plan, family):
    return {f.family: f for f in plan.families}[family]


def check_plan_is_fused(plan):
    assert plan.backend == "cuda", str(plan)
    assert plan.family in FUSED and plan.family != "generic", str(plan)
    assert chosen(plan) == [plan.family], str(plan)
    assert all(f.reason for f in plan.families), str(plan)  # every family says why (not)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("extents,ks,heads,d", PROBLEMS)
def test_forward_of_common_layouts_runs_fused_in_place(cuda_backend, extents, ks, heads, d,
                                                       layout, dtype):
    q, k, v = inputs(layout, extents, heads, d, dtype)
    out, lse = NA[len(extents)](q, k, v, ks, return_lse=True)
    plan = nattn.explain(q, k, v, ks)
    assert plan.cached, str(plan)  # the call above ran this plan
    check_plan_is_fused(plan)
    assert copied(plan) == [], str(plan)  # read in place: no copy, no generic fallback
    (fwd,) = plan.kernels_of("forward")
    assert fwd["config_id"] >= 0 and fwd["threads"] > 0
    ref, ref_lse = reference_na(q, k, v, ks)
    tol = TOL[dtype][0]
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_of_sum_copies_the_expanded_gradient(cuda_backend, layout, dtype):
    extents, ks, heads, d = (20, 24), (7, 9), 2, 64
    q, k, v = inputs(layout, extents, heads, d, dtype)
    out = nattn.na2d(q, k, v, ks)
    seen = []
    out.register_hook(seen.append)
    out.sum().backward()
    (grad_out,) = seen
    assert grad_out.stride() == (0,) * out.dim()  # autograd's gradient of .sum(): expanded
    expanded = torch.ones((), device="cuda", dtype=dtype).expand_as(out)
    plan = nattn.explain(q, k, v, ks, backward=True, grad_out=expanded)
    assert plan.cached, str(plan)  # the backward above ran this plan
    check_plan_is_fused(plan)
    assert copied(plan) == ["dout"], str(plan)  # copied, not sent to the generic kernels
    # The deterministic pair (sm80, or sm90 under use_deterministic_algorithms) or sm90's fast kernel.
    rows = sorted(kk["role"] for kk in plan.kernels if kk["config_id"] >= 0)
    assert rows in (["backward_dkdv", "backward_dq"], ["backward_dkdv_dq"]), str(plan)
    assert plan.workspace_bytes > 0  # the copied dout and the Delta rows
    ref, _ = reference_na(q, k, v, ks)
    want = torch.autograd.grad(ref, (q, k, v), torch.ones_like(ref))
    gtol = TOL[dtype][1]
    for g, w, name in zip((q.grad, k.grad, v.grad), want, "qkv"):
        torch.testing.assert_close(g, w, atol=gtol, rtol=gtol, msg=f"d{name}")


@pytest.mark.parametrize("backward", [False, True])
def test_float32_plans_generic_with_the_reason(cuda_backend, backward):
    q, k, v = inputs("contiguous", (20, 24), 2, 64, torch.float32)
    plan = nattn.explain(q, k, v, (7, 9), backward=backward)
    assert plan.backend == "cuda" and plan.family == "generic", str(plan)
    assert chosen(plan) == ["generic"], str(plan)
    sm80 = verdict(plan, "sm80")
    assert not sm80.chosen and "float32" in sm80.reason, str(plan)


def test_kernel_choice_generic_on_half(cuda_backend):
    q, k, v = inputs("contiguous", (20, 24), 2, 64, torch.float16)
    with nattn.kernel_choice(family="generic"):
        out = nattn.na2d(q, k, v, (7, 9))
        plan = nattn.explain(q, k, v, (7, 9))
    assert plan.cached and plan.family == "generic" and chosen(plan) == ["generic"], str(plan)
    assert "choice.family = generic" in verdict(plan, "sm80").reason, str(plan)
    check_plan_is_fused(nattn.explain(q, k, v, (7, 9)))  # outside the block: automatic again
    ref, _ = reference_na(q, k, v, (7, 9))
    torch.testing.assert_close(out, ref, atol=5e-3, rtol=5e-3)


def test_kernel_choice_sm80_on_float32_names_the_dtype(cuda_backend):
    q, k, v = inputs("contiguous", (20, 24), 2, 64, torch.float32)
    with nattn.kernel_choice(family="sm80"):
        with pytest.raises(NotImplementedError, match="float32") as info:
            nattn.na2d(q, k, v, (7, 9))
        assert "sm80" in str(info.value)
        with pytest.raises(NotImplementedError, match="float32"):
            nattn.explain(q, k, v, (7, 9))


def _built_sm80_rows():
    return [r for r in nattn.kernel_configs() if r.family == "sm80" and r.built]


def _row_id(row):
    return f"{row.id}-{row.role}-{row.dtype}-d{row.head_dim}"


@pytest.mark.parametrize("row", _built_sm80_rows(), ids=_row_id)
def test_every_built_sm80_row_runs(cuda_backend, row):
    # A problem of the row's dtype and head dim (partial tiles on both axes, grouped heads) plans
    # the row for its role, automatically and when forced, and matches the CPU reference.
    dtype, d = row.torch_dtype, row.head_dim
    backward = row.role != "forward"
    extents, ks = (20, 26), (5, 7)
    q, k, v = (torch.randn(1, *extents, h, d, device="cuda", dtype=dtype, requires_grad=True)
               for h in (4, 2, 2))
    siblings = [r for r in _built_sm80_rows()
                if (r.role, r.dtype, r.head_dim) == (row.role, row.dtype, row.head_dim)]
    for forced in (False, True):
        # Pinned to sm80: on Hopper the sm90 family plans these forwards first.
        with nattn.kernel_choice(family="sm80", config=row.id if forced else None):
            try:
                plan = nattn.explain(q, k, v, ks, backward=backward)
            except NotImplementedError as e:
                if "shared memory" in str(e):  # a device smaller than the row was sized for
                    pytest.skip(str(e))
                raise
            if forced or siblings == [row]:
                assert plan.family == "sm80", str(plan)
                assert [kk["config_id"] for kk in plan.kernels_of(row.role)] == [row.id], str(plan)
            out, lse = nattn.na2d(q, k, v, ks, return_lse=True)
            dout, dlse = torch.randn_like(out), torch.randn_like(lse)
            got = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse)) if backward else ()
        ref, ref_lse = reference_na(q, k, v, ks)
        tol, gtol = TOL[dtype]
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
        torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)
        if backward:
            want = torch.autograd.grad((ref, ref_lse), (q, k, v), (dout, dlse))
            for g, w, name in zip(got, want, "qkv"):
                torch.testing.assert_close(g, w, atol=gtol, rtol=gtol, msg=f"d{name}")
