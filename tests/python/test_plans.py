"""nattn.explain, nattn.kernel_configs and nattn.kernel_choice on CPU, and the load-time check of
the ctypes mirrors of the C structs. CUDA plans: test_plans_cuda.py."""
import ctypes
import dataclasses

import pytest
import torch

import nattn
from nattn import _lib, _native

_CUDA = {b.name: b for b in nattn.backends()}["cuda"]
CUDA_BUILT = _CUDA.available or "has no CUDA backend" not in _CUDA.reason  # built, maybe without a device


def qkv(*extents, hq=4, hkv=2, d=8, dv=6, b=2):
    return (torch.randn(b, *extents, hq, d), torch.randn(b, *extents, hkv, d),
            torch.randn(b, *extents, hkv, dv))


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("extents", [(12,), (6, 7), (3, 4, 5)])
def test_explain_on_cpu_plans_the_reference(extents, backward):
    q, k, v = qkv(*extents)
    plan = nattn.explain(q, k, v, 3, backward=backward)
    assert isinstance(plan, nattn.Plan)
    assert (plan.backend, plan.family) == ("reference", "reference")
    assert [tuple(f) for f in plan.families] == [("reference", True, plan.families[0].reason)]
    assert plan.families[0].reason  # says what it runs
    assert plan.copies == () and plan.workspace_bytes == 0
    role = "backward" if backward else "forward"
    assert [k["role"] for k in plan.kernels] == [role] and plan.kernels_of(role)
    text = str(plan)
    assert "reference" in text and role in text


def test_explain_dense_additional_keys_and_expanded_gradient():
    q, k, v = qkv(10)
    assert nattn.explain(q, k, v, dense=True, is_causal=True).family == "reference"
    ak, av = torch.randn(2, 3, 2, 8), torch.randn(2, 3, 2, 6)
    grad_out = torch.ones(()).expand(2, 10, 4, 6)  # what out.sum().backward() passes
    plan = nattn.explain(q, k, v, (3,), stride=2, dilation=2, is_causal=True, scale=0.5,
                         additional_keys=ak, additional_values=av, backward=True,
                         grad_out=grad_out)
    assert plan.family == "reference" and plan.copies == ()


def test_explain_runs_nothing():
    q, k, v = qkv(6, 7)
    before = [x.clone() for x in (q, k, v)]
    nattn.explain(q, k, v, 3, backward=True)
    for x, y in zip((q, k, v), before):
        assert torch.equal(x, y)


def test_plan_is_frozen():
    q, k, v = qkv(8)
    plan = nattn.explain(q, k, v, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.family = "sm80"


def test_kernel_configs_rows():
    rows = nattn.kernel_configs()
    assert isinstance(rows, list)
    if not CUDA_BUILT:
        assert rows == []  # a CPU-only build has no fused kernels
    for r in rows:
        assert isinstance(r, nattn.KernelConfig)
        assert r.role in ("forward", "backward_dq", "backward_dkdv", "backward_dkdv_dq")
        if r.family == "generic":
            assert r.dtype == "any" and r.torch_dtype is None and r.head_dim == 0
        else:
            assert r.torch_dtype in (torch.float16, torch.bfloat16) and r.head_dim > 0
        assert r.block_q > 0 and r.block_kv > 0 and r.warps > 0
    assert len({r.id for r in rows}) == len(rows)


def test_json_buffer_grows_to_what_the_text_needs():
    assert _lib._json(_lib.LIB.nattn_kernel_configs, "nattn.kernel_configs", size=1) == \
        _lib.kernel_configs()
    q, k, v = qkv(6, 7)
    arr = _lib.slots([q, k, v, None, None, torch.empty(2, 6, 7, 4, 6), torch.empty(2, 6, 7, 4)])
    p = _lib.problem(q, k, v, None, None, [3, 3], [1, 1], [1, 1], [False, False], None, False)
    plan = _lib._json(_lib.LIB.nattn_explain_forward, "x", ctypes.byref(p), arr,
                      ctypes.byref(_lib.options(0, q.device)), size=8)
    assert plan["family"] == "reference"


def test_kernel_choice_reaches_forward_and_backward(monkeypatch):
    # The choice travels as op arguments: the forward's options carry it, and the backward runs
    # with the forward's choice even when called outside the block.
    # This spies on the ctypes call's options; test_native_ops.py has the C++ ops' version.
    monkeypatch.setattr(_native, "LOADED", False)
    seen = []
    real = _lib.options

    def spy(backend, device, family="", config_ids=(), tiles=(), deterministic=False):
        seen.append((family, tuple(config_ids), tuple(tiles)))
        return real(backend, device, "", (), (), deterministic)  # the reference takes no choice
    monkeypatch.setattr(_lib, "options", spy)
    q, k, v = (x.requires_grad_() for x in qkv(6, 7))
    with nattn.kernel_choice(family="reference", config=[3, 4], tile=((2, 4), (1, 2))) as c:
        assert nattn._choice.current() is c
        out = nattn.na2d(q, k, v, 3)
    assert nattn._choice.current() == nattn._choice.AUTO
    out.sum().backward()
    want = ("reference", (3, 4), (2, 4, 1, 1, 2, 1))
    assert seen == [want, want]


def test_kernel_choice_nests_and_is_per_thread():
    import threading
    with nattn.kernel_choice(family="reference"):
        with nattn.kernel_choice(config=1):
            assert nattn._choice.current() == ("", (1,), ())
        assert nattn._choice.current().family == "reference"
        other = []
        t = threading.Thread(target=lambda: other.append(nattn._choice.current()))
        t.start()
        t.join()
        assert other == [nattn._choice.AUTO]
    assert nattn._choice.current() == nattn._choice.AUTO


def test_kernel_choice_under_compile_retraces():
    # A compiled graph records the choice it was traced with (op arguments), so a different
    # choice in force makes it trace again instead of running the old one.
    torch._dynamo.reset()
    q, k, v = qkv(6, 7)
    fn = torch.compile(lambda q, k, v: nattn.na2d(q, k, v, 3), fullgraph=True, backend="eager")
    expected = nattn.na2d(q, k, v, 3)
    torch.testing.assert_close(fn(q, k, v), expected)
    with nattn.kernel_choice(family="reference"):
        torch.testing.assert_close(fn(q, k, v), expected)
    with nattn.kernel_choice(family="sm99"):
        with pytest.raises(ValueError, match='choice.family = "sm99" is invalid'):
            fn(q, k, v)
    torch.testing.assert_close(fn(q, k, v), expected)


def test_explain_uses_the_choice_in_force():
    q, k, v = qkv(6, 7)
    with nattn.kernel_choice(family="sm99"):
        with pytest.raises(ValueError, match="sm99"):
            nattn.explain(q, k, v, 3)
        # Explicit arguments replace the choice in force.
        assert nattn.explain(q, k, v, 3, family="reference").family == "reference"


# Struct layouts: the ctypes mirrors were compared with the library when nattn was imported.
def test_struct_layouts_match_the_library():
    _lib.check_layouts(_lib.LIB, _lib.MIRRORS)
    for cname, mirror in _lib.MIRRORS.items():
        size, count = ctypes.c_int64(), ctypes.c_int32()
        offsets, sizes = (ctypes.c_int64 * 32)(), (ctypes.c_int64 * 32)()
        names, err = ctypes.create_string_buffer(1024), ctypes.create_string_buffer(256)
        assert _lib.LIB.nattn_struct_layout(cname.encode(), ctypes.byref(size), ctypes.byref(count),
                                            offsets, sizes, 32, names, 1024, err, 256) == 0
        assert size.value == ctypes.sizeof(mirror)
        assert names.value.decode().split(",") == [f[0] for f in mirror._fields_]
        assert count.value == len(mirror._fields_)


def _mirror(fields):
    return type("Options", (ctypes.Structure,), {"_fields_": fields})


def test_stale_mirror_fails_the_import():
    fields = list(_lib.Options._fields_)
    missing = _mirror([f for f in fields if f[0] != "family"])
    with pytest.raises(ImportError, match=r"struct nattn_options .* field 3 is 'family' in the "
                                          r"library and 'config_ids' in Python"):
        _lib.check_layouts(_lib.LIB, {"nattn_options": missing})
    retyped = _mirror([(n, ctypes.c_int32 if n == "stream" else t) for n, t in fields])
    with pytest.raises(ImportError, match=r"nattn_options .* field 'stream' has offset 8, size 8 "
                                          r"in the library and offset 8, size 4 in Python"):
        _lib.check_layouts(_lib.LIB, {"nattn_options": retyped})
    extra = _mirror(fields + [("spare", ctypes.c_int64)])
    with pytest.raises(ImportError, match=r"field 10 is None in the library and 'spare'"):
        _lib.check_layouts(_lib.LIB, {"nattn_options": extra})
    with pytest.raises(ImportError, match="nattn_struct_layout\\(nattn_bogus\\) failed: name = "
                                          "\"nattn_bogus\" is invalid"):
        _lib.check_layouts(_lib.LIB, {"nattn_bogus": _lib.Tensor})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure path without CUDA")
def test_workspace_allocator_returns_null_without_cuda():
    # No Python exception may cross into C: a failed allocation is a NULL pointer.
    assert _lib.WORKSPACE_ALLOCATE(64, None) is None
    _lib.WORKSPACE_RELEASE(None, None)
    assert _lib._WORKSPACE == {}
