"""The fast path's autograd in C++ (src/torch_autograd/autograd.cpp), when built for this torch.

`nattn_autograd::na_attention` runs the native forward (_native.py) and records a C++ autograd
node whose backward calls the native backward from torch's autograd engine, without the GIL.
A Python torch.autograd.Function (_fast._Attention) costs ~340 us of host time per small
forward+backward step before any nattn work (bench/overhead.py's floor on the H100), more than
dense SDPA's whole step; this node is what torch's own ops use.

torch's C++ autograd API is not in its stable ABI, so the library is built for one torch version
and named for it (libnattn_torch_autograd_<version>.so beside libnattn_torch_ops.so). Only the
file for the running torch is loaded; otherwise _fast keeps its Python autograd.Function and
nattn.op_path().autograd says "python" and why. NATTN_TORCH_AUTOGRAD=0 turns it off (the A/B
switch for benchmarks), NATTN_TORCH_AUTOGRAD=/path loads that file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import torch

from . import _native

_TAG = torch.__version__.replace("+", "_")
_NAME = f"libnattn_torch_autograd_{_TAG}.so"


def _load() -> Tuple[bool, str]:
    env = os.environ.get("NATTN_TORCH_AUTOGRAD")
    if env == "0":
        return False, "disabled (NATTN_TORCH_AUTOGRAD=0)"
    if not _native.LOADED:
        return False, f"needs the C++ ops, which are not loaded ({_native.REASON})"
    path = Path(env) if env else Path(_native.REASON).parent / _NAME
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("libnattn_torch_autograd_*.so"))
        built = f"; built here only for: {', '.join(others)}" if others else ""
        return False, (f"{path} not found (it is built for the torch of the build, and this is "
                       f"torch {torch.__version__}{built})")
    try:
        torch.ops.load_library(str(path))
        torch.ops.nattn_autograd.na_attention.default  # noqa: B018 - registered by the library
    except Exception as e:  # noqa: BLE001 - any failure keeps the Python autograd, with the reason
        return False, f"{path} failed to load: {type(e).__name__}: {e}"
    return True, str(path)


LOADED, REASON = _load()
_OP = torch.ops.nattn_autograd.na_attention.default if LOADED else None
_BACKWARD_CALLS = torch.ops.nattn_autograd.backward_calls.default if LOADED else None


def takes(t: torch.Tensor) -> bool:
    """Whether a recorded fast-path call on t's device takes the C++ node."""
    return LOADED and _native.takes(t)


def attention(tensors, params, choice):
    """(out, lse) with the C++ autograd node recorded; tensors = (q, k, v, ak, av). The native
    forward's arguments, errors and call count (_native.forward), through this library's op."""
    return _native.forward(tensors, params, choice, _OP)


def backward_calls() -> int:
    """Backward calls the C++ node made through the native op (0 when not loaded)."""
    return _BACKWARD_CALLS() if LOADED else 0
