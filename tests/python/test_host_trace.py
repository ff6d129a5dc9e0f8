"""Host-time tracing of the library's calls (nattn/host_trace.h, nattn._lib.host_trace): every
call counted once per phase it passes through while tracing is on, nothing counted while off."""
import pytest
import torch

import nattn
from nattn import _lib

CUDA_PHASES = ("plan_lookup", "family", "copy_out")


@pytest.fixture(autouse=True)
def _trace_off():
    yield
    _lib.host_trace("off")


def _fwd_bwd(device, dtype, calls):
    q, k, v = (torch.randn(2, 9, 7, 2, 16, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    g = torch.randn(2, 9, 7, 2, 16, device=device, dtype=dtype)
    for _ in range(calls):
        torch.autograd.grad(nattn.na2d(q, k, v, (3, 5)), (q, k, v), g)


def test_counts_each_phase_of_each_call_while_on():
    _fwd_bwd("cpu", torch.float32, 1)  # warm-up
    _lib.host_trace("on")
    calls = 3
    _fwd_bwd("cpu", torch.float32, calls)
    t = _lib.host_trace("read")
    assert list(t)[:3] == ["call", "validate", "choose_backend"]
    for phase in ("call", "validate", "choose_backend"):  # a forward and a backward per step
        assert t[phase][0] == 2 * calls, (phase, t[phase])
        assert t[phase][1] > 0, (phase, t[phase])
    # A phase is part of the whole call.
    assert t["validate"][1] < t["call"][1]
    for phase in CUDA_PHASES + ("encode_maps", "encode", "launch", "delta"):
        assert t[phase] == (0, 0), (phase, t[phase])  # the reference backend has none


def test_nothing_counted_while_off_and_on_resets():
    _lib.host_trace("on")
    _fwd_bwd("cpu", torch.float32, 1)
    _lib.host_trace("off")
    before = _lib.host_trace("read")
    _fwd_bwd("cpu", torch.float32, 2)
    assert _lib.host_trace("read") == before
    _lib.host_trace("on")
    assert all(v == (0, 0) for v in _lib.host_trace("read").values())


def test_invalid_action_names_the_value():
    with pytest.raises(ValueError, match="action = 'start' is invalid"):
        _lib.host_trace("start")
    # The C entry point checks its action too (the binding never sends this one).
    import ctypes
    err = ctypes.create_string_buffer(_lib._ERR_LEN)
    assert _lib.LIB.nattn_host_trace(7, None, 0, err, _lib._ERR_LEN) == _lib.STATUS_INVALID
    assert b"action = 7 is invalid" in err.value


def test_cuda_calls_trace_their_plan_lookup_family_and_launches(cuda_backend):
    _fwd_bwd("cuda", torch.bfloat16, 1)
    torch.cuda.synchronize()
    _lib.host_trace("on")
    _fwd_bwd("cuda", torch.bfloat16, 2)
    torch.cuda.synchronize()
    t = _lib.host_trace("read")
    assert t["call"][0] == 4
    for phase in CUDA_PHASES:
        assert t[phase][0] == 4, (phase, t[phase])
    assert t["delta"][0] == 2  # one Delta pre-pass per backward
    x = torch.empty(2, 9, 7, 2, 16, device="cuda", dtype=torch.bfloat16)
    plans = [nattn.explain(x, x, x, kernel_size=(3, 5), backward=b) for b in (False, True)]
    # sm90 traces each kernel launch it plans (the Delta pre-pass, a phase of its own, and the dQ
    # conversion of its fast mode are not its launches).
    per_step = sum(len([k for k in p.kernels if k["role"] not in ("delta", "dq_convert")])
                   for p in plans if p.family == "sm90")
    assert t["launch"][0] == 2 * per_step, ([p.family for p in plans], t["launch"])
    assert t["encode_maps"][0] == t["launch"][0]


def test_repeated_cuda_calls_encode_no_tensor_maps(cuda_backend):
    """sm90 keeps the tensor maps it encoded: a call on the same tensors again takes them from the
    cache (phase encode_maps counts every launch's maps, encode only the driver's encodes)."""
    q, k, v = (torch.randn(2, 9, 7, 2, 16, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out, lse = torch.empty_like(q), torch.empty(2, 9, 7, 2, device="cuda", dtype=torch.float32)
    plan = nattn.explain(q, k, v, kernel_size=(3, 5))
    if plan.family != "sm90":
        pytest.skip(f"the sm90 family encodes tensor maps; this call runs {plan.family}")
    p = _lib.problem(q, k, v, None, None, [3, 5], [1, 1], [1, 1], [False, False], None, False)
    arr = _lib.slots([q, k, v, None, None, out, lse], True)
    o = _lib.options(_lib.BACKEND_AUTO, q.device)
    _lib.forward(False, p, arr, o, "repeated call")  # encodes (or finds) its maps
    _lib.host_trace("on")
    for _ in range(3):
        _lib.forward(False, p, arr, o, "repeated call")
    torch.cuda.synchronize()
    t = _lib.host_trace("read")
    assert t["encode_maps"][0] == 3, t["encode_maps"]
    assert t["encode"] == (0, 0), t["encode"]
    # Another query tensor is another map: encoded once, then found.
    q2 = torch.randn_like(q)
    arr2 = _lib.slots([q2, k, v, None, None, out, lse], True)
    _lib.host_trace("on")
    _lib.forward(False, p, arr2, o, "new query")
    _lib.forward(False, p, arr2, o, "new query")
    torch.cuda.synchronize()
    assert _lib.host_trace("read")["encode"][0] == 1
