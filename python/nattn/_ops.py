"""The torch.library custom ops `nattn::na_forward` and `nattn::na_backward`.

Registering real ops (with fake implementations for shape propagation and an autograd
formula) is what lets torch.compile(fullgraph=True) trace through nattn without a graph
break. One op pair serves neighborhood and dense attention: `dense=True` calls the C ABI's
attention entry points, which ignore the window parameters.

Value rules live in the C library alone: the op and its fake implementation both run the
library's check without memory (nattn_check_*_shapes) before allocating anything, so eager
calls and traced calls fail with the same message. The functional API checks Python types only.

A forced kernel choice (nattn.kernel_choice) arrives as arguments (`family`, `config_ids`,
`tiles`), never as a global read inside the op, so a compiled graph records the choice it was
traced with. So does the call's own `deterministic` requirement (the last argument, default
False); torch.use_deterministic_algorithms is read by the op when it runs and or-ed in (as
torch's own ops read it at run time).

Annotations stay real types (no `from __future__ import annotations`): older torch versions
infer the op schema from them.
"""
import collections
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _lib

# Calls that ran, by path: "op_forward"/"op_backward" (these custom ops: eager calls with the
# fast path off or not eligible, and compiled graphs at run time) and "fast_forward"/
# "fast_backward" (_fast.py). For tests and diagnostics; never read by the ops.
CALLS: collections.Counter = collections.Counter()


def _poisoned(t: Tensor) -> Tensor:
    """With NATTN_POISON_OUTPUTS=1 (the test suite sets it), outputs and gradients start as NaN
    so that any element a backend fails to write shows up in the result."""
    if os.environ.get("NATTN_POISON_OUTPUTS") == "1" and t.is_floating_point():
        t.fill_(float("nan"))
    return t


def _where(dense: bool, is_causal: List[bool], backward: bool = False) -> str:
    name = "nattn.attention" if dense else f"nattn.na{len(is_causal)}d"
    return name + (" backward" if backward else "")


def _out_shapes(query: Tensor, value: Tensor) -> Tuple[List, List]:
    spatial = list(query.shape[:-1])  # [B, X.., Hq]
    return spatial + [value.shape[-1] if value.dim() else 1], spatial


def _forward_check(query, key, value, additional_keys, additional_values, kernel_size, stride,
                   dilation, is_causal, scale, dense, placement, data):
    """The library's forward checks on the inputs and the outputs to be allocated; returns the
    problem and the C views (outputs without memory yet)."""
    out_shape, lse_shape = _out_shapes(query, value)
    p = _lib.problem(query, key, value, additional_keys, additional_values, kernel_size, stride,
                     dilation, is_causal, scale, dense, placement)
    out = _lib.planned(out_shape, query.dtype, query.device)
    lse = _lib.planned(lse_shape, torch.float32, query.device)
    arr = _lib.slots([query, key, value, additional_keys, additional_values, out, lse], data)
    _lib.check_forward(dense, p, arr, _where(dense, is_causal))
    return p, arr, out_shape, lse_shape


@torch.library.custom_op("nattn::na_forward", mutates_args=())
def na_forward(
    query: Tensor, key: Tensor, value: Tensor,
    additional_keys: Optional[Tensor], additional_values: Optional[Tensor],
    kernel_size: List[int], stride: List[int], dilation: List[int], is_causal: List[bool],
    scale: Optional[float], dense: bool, backend: int, placement: List[int],
    family: str, config_ids: List[int], tiles: List[int], deterministic: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Returns (out [B, X.., Hq, Dv] contiguous, lse [B, X.., Hq] float32). `placement`: [] or
    the placed boxes (_lib.problem); keys may then differ in extent from the queries.
    `deterministic`: the call's requirement of a bitwise reproducible backward (the autograd
    formula passes it on to na_backward)."""
    p, arr, out_shape, lse_shape = _forward_check(
        query, key, value, additional_keys, additional_values, kernel_size, stride, dilation,
        is_causal, scale, dense, placement, data=True)
    out = _poisoned(query.new_empty(out_shape))
    lse = _poisoned(query.new_empty(lse_shape, dtype=torch.float32))
    _lib.attach(arr[_lib.FWD_OUT], out)
    _lib.attach(arr[_lib.FWD_LSE], lse)
    # The stream in the options is torch's current stream of the tensors' device; the CUDA
    # backend makes that device current itself.
    _lib.forward(dense, p, arr, _lib.options(backend, query.device, family, config_ids, tiles,
                                             deterministic), _where(dense, is_causal))
    CALLS["op_forward"] += 1
    return out, lse


@na_forward.register_fake
def _(query, key, value, additional_keys, additional_values, kernel_size, stride, dilation,
      is_causal, scale, dense, backend, placement, family, config_ids, tiles, deterministic=False):
    try:
        _forward_check(query, key, value, additional_keys, additional_values, kernel_size,
                       stride, dilation, is_causal, scale, dense, placement, data=False)
    except _lib.Symbolic:
        pass  # a size without a value yet: the real op checks it
    out_shape, lse_shape = _out_shapes(query, value)
    return query.new_empty(out_shape), query.new_empty(lse_shape, dtype=torch.float32)


def _grad_buffers(query, key, value, additional_keys, additional_values):
    # Contiguous, whatever the inputs' strides: the fake and the real op must agree on strides.
    grads = [query.new_empty(x.shape) for x in (query, key, value)]
    for x in (additional_keys, additional_values):
        grads.append(query.new_empty(x.shape) if x is not None else query.new_empty(0))
    return grads


def _backward_check(query, key, value, additional_keys, additional_values, out, lse, dout,
                    dlse, kernel_size, stride, dilation, is_causal, scale, dense, placement, data):
    p = _lib.problem(query, key, value, additional_keys, additional_values, kernel_size, stride,
                     dilation, is_causal, scale, dense, placement)
    grads = [None if x is None else _lib.planned(x.shape, query.dtype, query.device)
             for x in (query, key, value, additional_keys, additional_values)]
    arr = _lib.slots([query, key, value, additional_keys, additional_values, out, lse, dout,
                      dlse] + grads, data)
    _lib.check_backward(dense, p, arr, _where(dense, is_causal, backward=True))
    return p, arr


@torch.library.custom_op("nattn::na_backward", mutates_args=())
def na_backward(
    query: Tensor, key: Tensor, value: Tensor,
    additional_keys: Optional[Tensor], additional_values: Optional[Tensor],
    out: Tensor, lse: Tensor, dout: Tensor, dlse: Optional[Tensor],
    kernel_size: List[int], stride: List[int], dilation: List[int], is_causal: List[bool],
    scale: Optional[float], dense: bool, backend: int, placement: List[int],
    family: str, config_ids: List[int], tiles: List[int], deterministic: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv, d_additional_keys, d_additional_values); the last two are empty
    tensors when there are no additional keys (ops cannot return None). Deterministic kernels
    run when `deterministic` or torch.are_deterministic_algorithms_enabled() (read now)."""
    p, arr = _backward_check(query, key, value, additional_keys, additional_values, out, lse,
                             dout, dlse, kernel_size, stride, dilation, is_causal, scale, dense,
                             placement, data=True)
    grads = [_poisoned(g) for g in _grad_buffers(query, key, value, additional_keys,
                                                   additional_values)]
    slots = [_lib.BWD_DQ, _lib.BWD_DK, _lib.BWD_DV]
    if additional_keys is not None:
        slots += [_lib.BWD_DAK, _lib.BWD_DAV]
    for slot, g in zip(slots, grads):
        _lib.attach(arr[slot], g)
    _lib.backward(dense, p, arr, _lib.options(backend, query.device, family, config_ids, tiles,
                                              deterministic), _where(dense, is_causal, backward=True))
    CALLS["op_backward"] += 1
    return tuple(grads)


@na_backward.register_fake
def _(query, key, value, additional_keys, additional_values, out, lse, dout, dlse, kernel_size,
      stride, dilation, is_causal, scale, dense, backend, placement, family, config_ids, tiles,
      deterministic=False):
    try:
        _backward_check(query, key, value, additional_keys, additional_values, out, lse, dout,
                        dlse, kernel_size, stride, dilation, is_causal, scale, dense, placement,
                        data=False)
    except _lib.Symbolic:
        pass
    return tuple(_grad_buffers(query, key, value, additional_keys, additional_values))


def _setup_context(ctx, inputs, output):
    (query, key, value, ak, av, kernel_size, stride, dilation, is_causal, scale, dense,
     backend, placement, family, config_ids, tiles, deterministic) = inputs
    out, lse = output
    # An output that fed nothing gets None, not zeros: the backward then skips its term (and
    # explain(backward=True) with grad_lse absent plans the backward that runs).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(query, key, value, ak, av, out, lse)
    # The backward runs with the forward's kernel choice (config ids are per kernel role) and
    # its per-call determinism (torch's flag is read again when the backward runs).
    ctx.params = (kernel_size, stride, dilation, is_causal, scale, dense, backend, placement,
                  family, config_ids, tiles, deterministic)


def _backward(ctx, dout, dlse):
    query, key, value, ak, av, out, lse = ctx.saved_tensors
    if dout is None:  # only lse fed the loss
        dout = torch.zeros_like(out)
    # dlse is None when lse fed nothing; otherwise the backward adds its term
    # (dS = P * (dP - (do.o - dlse))), so gradients through lse are exact.
    dq, dk, dv, dak, dav = na_backward(query, key, value, ak, av, out, lse, dout, dlse,
                                       *ctx.params)
    if ak is None:
        dak = dav = None
    return (dq, dk, dv, dak, dav) + (None,) * 12


na_forward.register_autograd(_backward, setup_context=_setup_context)
