"""Without the C++ ops (not built, disabled, or a library that fails to load) the fast path
calls the C ABI through ctypes, and nattn.op_path() says so and why: never a silent switch."""
import os
import subprocess
import sys

import pytest

PROBE = ("import torch, nattn; p = nattn.op_path(); q = torch.randn(1, 5, 4, 2, 8); "
         "out = nattn.na2d(q, q, q, 3); print(p.call); print(p.reason); "
         "print(nattn._native.CALLS['forward'])")


def probe(value):
    env = dict(os.environ, NATTN_TORCH_OPS=value)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split("\n")


@pytest.mark.parametrize("case", ["disabled", "missing", "broken"])
def test_fallback_to_ctypes_is_reported(case, tmp_path):
    if case == "disabled":
        value, why = "0", "NATTN_TORCH_OPS=0"
    elif case == "missing":
        value, why = str(tmp_path / "absent.so"), "not found"
    else:
        bad = tmp_path / "libnattn_torch_ops.so"
        bad.write_text("not a shared library")
        value, why = str(bad), "failed to load"
    call, reason, ran = probe(value)
    assert call == "ctypes" and why in reason and ran == "0"


def test_cuda_tensors_keep_the_ctypes_call_when_switched_off(monkeypatch):
    """CUDA tensors take the C++ ops unless NATTN_TORCH_OPS_CUDA=0 (read at import into
    _native.CUDA); CPU tensors whenever loaded."""
    from types import SimpleNamespace

    import torch

    import nattn
    from nattn import _native
    cuda_tensor = SimpleNamespace(device=SimpleNamespace(type="cuda"))
    monkeypatch.setattr(_native, "LOADED", True)
    monkeypatch.setattr(_native, "CUDA", False)
    assert not _native.takes(cuda_tensor)
    assert _native.takes(torch.empty(1))
    if nattn.op_path().name == "fast":  # op_path says which call each device's tensors take
        assert (nattn.op_path().call, nattn.op_path().cuda_call) == ("native", "ctypes")
    monkeypatch.setattr(_native, "CUDA", True)
    assert _native.takes(cuda_tensor)
    if nattn.op_path().name == "fast":
        assert (nattn.op_path().call, nattn.op_path().cuda_call) == ("native", "native")
    monkeypatch.setattr(_native, "LOADED", False)
    assert not _native.takes(torch.empty(1))
