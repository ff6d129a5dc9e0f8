"""The eager fast path of nattn's ops: one C call per op, no torch.library dispatch.

A plain eager call (no torch.compile, no tracing, no dispatch or function mode, no functorch
transform, no forward-mode AD, plain torch.Tensor inputs) does not need what the custom ops
`nattn::na_forward` / `nattn::na_backward` (_ops.py) provide: schema, fake implementation,
redispatch through the Autograd and backend keys. Going through them costs ~150 us of host
time per call (custom_op wrappers, the autograd wrapper, the dynamo-disable wrapper, two ctypes
calls and per-call struct building), more than a small kernel takes. Here such a call instead:

  * looks up a per-signature entry (shapes, strides, dtypes, devices, window parameters, kernel
    choice, determinism: the call's `deterministic` and torch's flag): the first call of a
    signature runs the library's check without memory (the same check and message as the op,
    before anything is allocated) and builds the C problem, the tensor views (without data)
    and the options; later calls reuse them;
  * allocates the outputs with torch, copies the cached views, fills in the data pointers and
    makes the one C call (which validates again, as every C call does);
  * records autograd through a torch.autograd.Function whose backward takes the same path (or
    the custom op `na_backward` when the backward itself is being differentiated or traced).

Everything else (compile, export, fake tensors, subclasses, modes, vmap/grad transforms) takes
the custom ops, so they keep one source of truth for tracing. Set NATTN_FAST_PATH=0 (before
import) or nattn._fast.ENABLED = False to route every call through the custom ops.
`_ops.CALLS` counts which path ran; `nattn.backends.op_path()` says which one is active. Where
libnattn_torch_ops.so is loaded (_native.py), the one C call is a call of its C++ dispatcher
ops, which read the tensors and allocate the outputs themselves (no signature cache needed).
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.autograd.forward_ad as _forward_ad
from torch.autograd import profiler as _profiler

from . import _lib, _native, _native_autograd, _ops

# torch's own answers to "is anything intercepting this call?"; without one of them (a torch
# that renamed it) the fast path stays off and op_path() says why.
_PROBES = {n: getattr(torch._C, n, None) for n in (
    "_len_torch_dispatch_stack", "_is_torch_function_mode_enabled",
    "_are_functorch_transforms_active")}
_MISSING = [n for n, f in _PROBES.items() if f is None]
ENABLED = os.environ.get("NATTN_FAST_PATH", "1") != "0" and not _MISSING
_dispatch_modes = _PROBES["_len_torch_dispatch_stack"]
_function_modes = _PROBES["_is_torch_function_mode_enabled"]
_transforms = _PROBES["_are_functorch_transforms_active"]

_MAX_ENTRIES = 512  # signatures cached per direction; past that the cache starts over
_TLS = threading.local()
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def enabled_reason() -> Tuple[bool, str]:
    """Whether eager calls take the fast path, and why not."""
    if _MISSING:
        return False, (f"unavailable: this torch ({torch.__version__}) lacks torch._C."
                       f"{', torch._C.'.join(_MISSING)}; every call goes through the custom ops")
    if not ENABLED:
        return False, ("disabled (NATTN_FAST_PATH=0 or nattn._fast.ENABLED = False): every call "
                       "goes through the torch.library custom ops")
    call = (f"one call of the C++ dispatcher ops nattn_native::* ({_native.REASON})" if _native.LOADED
            else f"one ctypes C call (C++ ops not loaded: {_native.REASON})")
    if _native.LOADED and not _native.CUDA:
        call += "; CUDA tensors take the ctypes call (NATTN_TORCH_OPS_CUDA=0)"
    if _native_autograd.LOADED:
        call += "; autograd by a C++ node"
    else:
        call += f"; autograd by a Python autograd.Function (C++ node: {_native_autograd.REASON})"
    return True, (f"plain eager calls make {call}; compile, tracing, modes, subclasses and "
                  "transforms go through the custom ops")


def eligible(tensors) -> bool:
    """True when nothing needs the custom ops' dispatch: see the module docstring. The caller
    checks torch.compiler.is_compiling() first (dynamo folds it, and must not trace this)."""
    if (not ENABLED or _dispatch_modes() or _function_modes() or _transforms()
            or _forward_ad._current_level >= 0):
        return False
    for x in tensors:
        if x is not None and type(x) is not torch.Tensor:
            return False
    return True


def calls() -> Dict[str, int]:
    """_ops.CALLS plus the backward calls the C++ autograd node made (it counts them in C++:
    its backward never enters Python). What the tests read to see which path ran."""
    c = dict(_ops.CALLS)
    n = _native_autograd.backward_calls()
    if n:
        c["fast_backward"] = c.get("fast_backward", 0) + n
    return c


def _signature(x: Optional[torch.Tensor]):
    return None if x is None else (x.shape, x.stride(), x.dtype, x.device)


class _Entry(NamedTuple):
    problem: _lib.Problem
    poison: bool  # NATTN_POISON_OUTPUTS=1 when the entry was made (_ops._poisoned)
    views: bytes  # the C tensor array without data pointers
    array_type: type
    out_shapes: Tuple  # forward: (out, lse); backward: the gradients' shapes
    fn: object  # the C entry point
    where: str
    options: Dict[int, _lib.Options]  # per CUDA stream (0 on the CPU)
    backend: int
    choice: object
    deterministic: bool  # the call's own requirement (torch's flag is part of the key)


_FORWARD: Dict[tuple, _Entry] = {}
_BACKWARD: Dict[tuple, _Entry] = {}


def _options(entry: _Entry, device: torch.device) -> _lib.Options:
    if device.type != "cuda":
        stream = 0
    elif _raw_stream is not None:
        stream = _raw_stream(device.index)
    else:  # pragma: no cover - older torch
        stream = torch.cuda.current_stream(device).cuda_stream
    o = entry.options.get(stream)
    if o is None:
        c = entry.choice
        o = _lib.options(entry.backend, device, c.family, c.config_ids, c.tiles,
                         entry.deterministic)
        o.stream = stream or None
        entry.options[stream] = o
    return o


def _error_buffer():
    err = getattr(_TLS, "err", None)
    if err is None:
        err = _TLS.err = ctypes.create_string_buffer(_lib._ERR_LEN)
    return err


def _launch(entry: _Entry, tensors, device: torch.device) -> None:
    arr = entry.array_type.from_buffer_copy(entry.views)
    for i, x in enumerate(tensors):
        if x is not None:
            arr[i].data = x.data_ptr()
    err = _error_buffer()
    code = entry.fn(entry.problem, arr, _options(entry, device), err, _lib._ERR_LEN)
    if code != _lib.STATUS_OK:
        _lib.raise_for_status(code, err.value.decode(errors="replace"), entry.where)


def _poison() -> bool:
    return os.environ.get("NATTN_POISON_OUTPUTS") == "1"


def _store(cache: Dict[tuple, _Entry], key: tuple, entry: _Entry) -> _Entry:
    if len(cache) >= _MAX_ENTRIES:
        cache.clear()
    cache[key] = entry
    return entry


# `params`: the non-tensor fields of a functional.Call, in order: kernel_size, stride,
# dilation, is_causal, scale, dense, backend, placement, deterministic.

def _key(tensors, params, choice) -> tuple:
    ks, st, dil, causal, scale, dense, backend, placement, det = params
    return (tuple(map(_signature, tensors)), tuple(ks), tuple(st), tuple(dil), tuple(causal),
            scale, dense, backend, placement, choice, det,
            torch.are_deterministic_algorithms_enabled())


def _forward_entry(tensors, params, choice, with_lse=True) -> _Entry:
    key = (_key(tensors, params, choice), with_lse)
    entry = _FORWARD.get(key)
    if entry is not None:
        return entry
    ks, st, dil, causal, scale, dense, backend, placement, det = params
    p, arr, out_shape, lse_shape = _ops._forward_check(*tensors, ks, st, dil, causal, scale,
                                                       dense, placement, data=False)
    if not with_lse:  # the library writes no lse when its view is absent
        arr[_lib.FWD_LSE] = _lib.Tensor()
    fn = _lib.LIB.nattn_attention_forward if dense else _lib.LIB.nattn_forward
    return _store(_FORWARD, key, _Entry(
        p, _poison(), bytes(arr), type(arr), (tuple(out_shape), tuple(lse_shape)), fn,
        _ops._where(dense, causal), {}, backend, choice, det))


def run_forward(tensors, params, choice, with_lse=True) -> Tuple[torch.Tensor, torch.Tensor]:
    """na_forward's (out, lse) without autograd; tensors = (q, k, v, ak, av). With the C++ ops
    loaded (_native.py) one dispatcher call does all of it. with_lse=False (a call that returns
    no lse and records no graph): lse is None, neither allocated nor written."""
    if _native.takes(tensors[0]):
        out = _native.forward(tensors, params, choice)
        _ops.CALLS["fast_forward"] += 1
        return out
    entry = _forward_entry(tensors, params, choice, with_lse)
    q = tensors[0]
    out_shape, lse_shape = entry.out_shapes
    out = torch.empty(out_shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device) if with_lse else None
    if entry.poison:
        out.fill_(float("nan"))
        if lse is not None:
            lse.fill_(float("nan"))
    _launch(entry, tensors + (out, lse), q.device)
    _ops.CALLS["fast_forward"] += 1
    return out, lse


def _backward_entry(tensors, params, choice) -> _Entry:
    key = _key(tensors, params, choice)
    entry = _BACKWARD.get(key)
    if entry is not None:
        return entry
    ks, st, dil, causal, scale, dense, backend, placement, det = params
    p, arr = _ops._backward_check(*tensors, ks, st, dil, causal, scale, dense, placement,
                                  data=False)
    fn = _lib.LIB.nattn_attention_backward if dense else _lib.LIB.nattn_backward
    shapes = tuple(None if x is None else tuple(x.shape) for x in tensors[:5])
    return _store(_BACKWARD, key, _Entry(
        p, _poison(), bytes(arr), type(arr), shapes, fn, _ops._where(dense, causal, True), {}, backend,
        choice, det))


def run_backward(tensors, params, choice):
    """na_backward's (dq, dk, dv, d_additional_keys, d_additional_values), the last two None
    without additional keys; tensors = (q, k, v, ak, av, out, lse, dout, dlse)."""
    if _native.takes(tensors[0]):
        grads = _native.backward(tensors, params, choice)
        _ops.CALLS["fast_backward"] += 1
        return grads
    entry = _backward_entry(tensors, params, choice)
    q = tensors[0]
    # Contiguous, as the op's gradients (_ops._grad_buffers).
    grads = tuple(None if s is None else torch.empty(s, dtype=q.dtype, device=q.device)
                  for s in entry.out_shapes)
    if entry.poison:
        for g in grads:
            if g is not None:
                g.fill_(float("nan"))
    _launch(entry, tensors + grads, q.device)
    _ops.CALLS["fast_backward"] += 1
    return grads


def _op_backward(tensors, params, choice):
    """The custom op na_backward (double backward, tracing, modes)."""
    ks, st, dil, causal, scale, dense, backend, placement, det = params
    dq, dk, dv, dak, dav = _ops.na_backward(
        *tensors, ks, st, dil, causal, scale, dense, backend, list(placement), choice.family,
        list(choice.config_ids), list(choice.tiles), det)
    if tensors[3] is None:
        dak = dav = None
    return dq, dk, dv, dak, dav


class _Attention(torch.autograd.Function):
    """Autograd of a fast-path call: the formula of _ops._backward, without the custom ops."""

    @staticmethod
    def forward(ctx, query, key, value, additional_keys, additional_values, params, choice):
        out, lse = run_forward((query, key, value, additional_keys, additional_values), params,
                               choice)
        # An output that fed nothing gets None (see _ops._setup_context).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(query, key, value, additional_keys, additional_values, out, lse)
        ctx.params, ctx.choice = params, choice
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        saved = ctx.saved_tensors
        if dout is None:  # only lse fed the loss
            dout = torch.zeros_like(saved[5])
        tensors = saved + (dout, dlse)
        if (not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and eligible(tensors)):
            if _profiler._is_profiler_enabled:
                with torch.profiler.record_function("nattn::na_backward"):
                    grads = run_backward(tensors, ctx.params, ctx.choice)
            else:
                grads = run_backward(tensors, ctx.params, ctx.choice)
        else:  # double backward or tracing: the custom op says what it supports
            grads = _op_backward(tensors, ctx.params, ctx.choice)
        return grads + (None, None)


def na_forward(call, choice, with_lse=True) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of a functional.Call that eligible() accepted, with autograd when an input
    needs it; with_lse=False: the caller does not want lse (None unless autograd keeps it)."""
    tensors, params = call[:5], call[5:]  # slices of a NamedTuple are tuples
    if _profiler._is_profiler_enabled:  # the custom op's event name
        with torch.profiler.record_function("nattn::na_forward"):
            return _forward(tensors, params, choice, with_lse)
    return _forward(tensors, params, choice, with_lse)


def _forward(tensors, params, choice, with_lse):
    q, k, v, ak, av = tensors
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or (
            ak is not None and ak.requires_grad) or (av is not None and av.requires_grad)):
        # The backward reads lse. The C++ node where it is built for this torch: its backward
        # runs without the GIL (_native_autograd.py says what that saves).
        if _native_autograd.takes(q):
            out = _native_autograd.attention(tensors, params, choice)
            _ops.CALLS["fast_forward"] += 1
            return out
        return _Attention.apply(*tensors, params, choice)
    return run_forward(tensors, params, choice, with_lse)
