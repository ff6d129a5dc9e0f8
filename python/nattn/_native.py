"""The dispatcher ops of libnattn_torch_ops.so (src/torch_ops/ops.cpp), when that library was built:
`nattn_native::na_forward` / `na_backward`, registered from C++ through torch's stable C ABI.

The eager fast path (_fast.py) calls them instead of the ctypes entry points: one dispatcher call
reads the tensors' sizes, strides and pointers in C++, allocates the outputs (and CUDA workspace)
with torch's allocator and calls the same C functions as the ctypes path, with the same checks
and messages, so the per-signature cache, the struct marshalling and the Python-side allocation
drop out of a call. Autograd is recorded by a C++ node where libnattn_torch_autograd is built for
the running torch (_native_autograd.py; torch's stable ABI has no C++ autograd, so that library
is per torch version), else by _fast.py's autograd.Function; the fake implementations below let
torch.compile and fake tensors trace the ops.

The library is looked for beside the libnattn.so that _lib loaded (so both come from one build;
NATTN_TORCH_OPS=/path overrides, NATTN_TORCH_OPS=0 turns it off). Absent or failing to load,
the fast path keeps its ctypes call, and nattn.op_path() says so and why.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Tuple

import torch

from . import _lib, _ops

_NAME = "libnattn_torch_ops.so"
# Calls that ran through the C++ ops (for tests and diagnostics; the fast path counts its own
# calls in _ops.CALLS either way).
CALLS = {"forward": 0, "backward": 0}


def _candidate() -> Optional[Path]:
    env = os.environ.get("NATTN_TORCH_OPS")
    if env == "0":
        return None
    return Path(env) if env else Path(_lib.LIBRARY_PATH).resolve().parent / _NAME


def _load() -> Tuple[bool, str]:
    path = _candidate()
    if path is None:
        return False, "disabled (NATTN_TORCH_OPS=0)"
    if not path.is_file():
        return False, f"{path} not found (built only where torch's stable-ABI headers were found)"
    try:
        torch.ops.load_library(str(path))
        torch.ops.nattn_native.na_forward.default  # noqa: B018 - registered by the library
        torch.ops.nattn_native.na_backward.default  # noqa: B018
    except Exception as e:  # noqa: BLE001 - any failure leaves the ctypes path, with the reason
        return False, f"{path} failed to load: {type(e).__name__}: {e}"
    return True, str(path)


LOADED, REASON = _load()
# CUDA tensors take the ops too (current stream, workspace from torch's caching allocator, graph
# capture). On the H100 (2026-12-05, bench/overhead.py, one run) a small forward+backward step
# cost 299 us of host time through them against 471 through ctypes (forward 25 against 26).
# NATTN_TORCH_OPS_CUDA=0 keeps CUDA tensors on the ctypes call (a developer switch for A/B timing).
CUDA = os.environ.get("NATTN_TORCH_OPS_CUDA") != "0"


def takes(t: torch.Tensor) -> bool:
    """Whether the fast path calls the C++ ops for a call on t's device."""
    return LOADED and (CUDA or t.device.type != "cuda")
_FORWARD = torch.ops.nattn_native.na_forward.default if LOADED else None
_BACKWARD = torch.ops.nattn_native.na_backward.default if LOADED else None


def window(kernel_size, stride, dilation, is_causal, dense, placement) -> list:
    """The ops' `window` list (src/torch_ops/ops.cpp): [rank, dense, is_causal.., then (not
    dense) kernel_size.., stride.., dilation.., then placement (empty, or global_extent +
    query_origin + key_origin)]. Bools pass as ints (torch's int[] parser takes them)."""
    if dense:
        return [len(is_causal), 1, *is_causal]
    return [len(is_causal), 0, *is_causal, *kernel_size, *stride, *dilation, *placement]


# NATTN_POISON_OUTPUTS=1 (the tests): outputs start as NaN. Read once: os.environ.get costs
# more than a microsecond per call (the ctypes fast path also reads it once per signature).
POISON = int(os.environ.get("NATTN_POISON_OUTPUTS") == "1")
_CHOICES = {}
# options[1], the determinism, as bits (the op runs deterministic kernels when it is nonzero):
# torch.use_deterministic_algorithms when the list was built, and the call's own `deterministic`.
# They are kept apart because the C++ autograd node (src/torch_autograd/autograd.cpp) replaces
# the first with torch's flag when the backward runs and keeps the second.
DETERMINISTIC_TORCH, DETERMINISTIC_CALL = 1, 2


def options(backend: int, choice, deterministic: bool = False) -> list:
    """The ops' `options` list: [backend, deterministic (DETERMINISTIC_* bits), poison,
    config_ids x4 (-1 unused), own_tile x3, walk_tile x3]."""
    tail = _CHOICES.get(choice)
    if tail is None:
        ids = list(choice.config_ids) + [-1] * (_lib.MAX_CONFIG_IDS - len(choice.config_ids))
        tail = _CHOICES[choice] = ids + (list(choice.tiles) if choice.tiles else [0] * 6)
    det = ((DETERMINISTIC_CALL if deterministic else 0)
           | (DETERMINISTIC_TORCH if torch.are_deterministic_algorithms_enabled() else 0))
    return [backend, det, POISON, *tail]


_STATUS = re.compile(r"\[nattn status (\d+)\|([^\]]*)\] ([^\n]*)")


def _raise(e: RuntimeError):
    """Re-raises a status thrown by the C++ op as the exception the ctypes path raises."""
    m = _STATUS.search(str(e))
    if m is None:
        raise e
    _lib.raise_for_status(int(m.group(1)), m.group(3), m.group(2))


def forward(tensors, params, choice, op=None):
    """(out, lse) of the fast path's forward; tensors = (q, k, v, ak, av), params as _fast's.
    op: an op of na_forward's schema to call instead (_native_autograd's, which also records
    the C++ autograd node)."""
    ks, st, dil, causal, scale, dense, backend, placement, det = params
    try:
        out = (op or _FORWARD)(*tensors, window(ks, st, dil, causal, dense, placement), scale,
                               options(backend, choice, det), choice.family)
    except RuntimeError as e:
        _raise(e)
    CALLS["forward"] += 1
    return out


def backward(tensors, params, choice):
    """(dq, dk, dv, dak, dav), the last two None without additional keys; tensors = (q, k, v,
    ak, av, out, lse, dout, dlse)."""
    ks, st, dil, causal, scale, dense, backend, placement, det = params
    try:
        dq, dk, dv, dak, dav = _BACKWARD(*tensors, window(ks, st, dil, causal, dense, placement),
                                         scale, options(backend, choice, det), choice.family)
    except RuntimeError as e:
        _raise(e)
    CALLS["backward"] += 1
    if tensors[3] is None:
        dak = dav = None
    return dq, dk, dv, dak, dav


def _params(w):
    """Inverse of window(): (kernel_size, stride, dilation, is_causal, dense, placement)."""
    rank, dense = w[0], bool(w[1])
    causal = [bool(c) for c in w[2:2 + rank]]
    if dense:
        return [], [], [], causal, True, []
    rest = w[2 + rank:]
    return rest[:rank], rest[rank:2 * rank], rest[2 * rank:3 * rank], causal, False, rest[3 * rank:]


if LOADED:
    # Shapes for fake tensors (torch.compile, FakeTensorMode), with the library's checks, as the
    # custom ops' fake implementations in _ops.py.
    @torch.library.register_fake("nattn_native::na_forward")
    def _(query, key, value, additional_keys, additional_values, window, scale, options, family):
        ks, st, dil, causal, dense, placement = _params(window)
        try:
            _ops._forward_check(query, key, value, additional_keys, additional_values, ks, st, dil,
                                causal, scale, dense, placement, data=False)
        except _lib.Symbolic:
            pass  # a size without a value yet: the real op checks it
        out_shape, lse_shape = _ops._out_shapes(query, value)
        return query.new_empty(out_shape), query.new_empty(lse_shape, dtype=torch.float32)

    @torch.library.register_fake("nattn_native::na_backward")
    def _(query, key, value, additional_keys, additional_values, out, lse, dout, dlse, window,
          scale, options, family):
        ks, st, dil, causal, dense, placement = _params(window)
        try:
            _ops._backward_check(query, key, value, additional_keys, additional_values, out, lse,
                                 dout, dlse, ks, st, dil, causal, scale, dense, placement,
                                 data=False)
        except _lib.Symbolic:
            pass
        return tuple(_ops._grad_buffers(query, key, value, additional_keys, additional_values))
