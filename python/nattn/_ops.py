"""The torch.library custom ops `nattn::na_forward` and `nattn::na_backward`.

Registering real ops (with fake implementations for shape propagation and an autograd
formula) is what lets torch.compile(fullgraph=True) trace through nattn without a graph
break. One op pair serves neighborhood and dense attention: `dense=True` calls the C ABI's
attention entry points, which ignore the window parameters.

The ops take already-validated arguments (functional.py checks them in Python terms); the C
library validates everything again before any kernel runs.

Annotations stay real types (no `from __future__ import annotations`): older torch versions
infer the op schema from them.
"""
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _lib


def _poisoned(t: Tensor) -> Tensor:
    """With NATTN_POISON_OUTPUTS=1 (the test suite sets it), outputs and gradients start as NaN
    so that any element a backend fails to write shows up in the result."""
    if os.environ.get("NATTN_POISON_OUTPUTS") == "1" and t.is_floating_point():
        t.fill_(float("nan"))
    return t


def _out_shapes(query: Tensor, value: Tensor) -> Tuple[List[int], List[int]]:
    spatial = list(query.shape[:-1])  # [B, X.., Hq]
    return spatial + [value.shape[-1]], spatial


@torch.library.custom_op("nattn::na_forward", mutates_args=())
def na_forward(
    query: Tensor, key: Tensor, value: Tensor,
    additional_keys: Optional[Tensor], additional_values: Optional[Tensor],
    kernel_size: List[int], stride: List[int], dilation: List[int], is_causal: List[bool],
    scale: Optional[float], dense: bool, backend: int,
) -> Tuple[Tensor, Tensor]:
    """Returns (out [B, X.., Hq, Dv] contiguous, lse [B, X.., Hq] float32)."""
    out_shape, lse_shape = _out_shapes(query, value)
    out = _poisoned(query.new_empty(out_shape))
    lse = _poisoned(query.new_empty(lse_shape, dtype=torch.float32))
    p = _lib.problem(query, key, value, additional_keys, kernel_size, stride, dilation,
                     is_causal, scale, dense)
    # The stream in the options is torch's current stream of the tensors' device; the CUDA
    # backend makes that device current itself.
    _lib.forward(dense, p, [query, key, value, additional_keys, additional_values, out, lse],
                 _lib.options(backend, query.device))
    return out, lse


@na_forward.register_fake
def _(query, key, value, additional_keys, additional_values, kernel_size, stride, dilation,
      is_causal, scale, dense, backend):
    out_shape, lse_shape = _out_shapes(query, value)
    return query.new_empty(out_shape), query.new_empty(lse_shape, dtype=torch.float32)


@torch.library.custom_op("nattn::na_backward", mutates_args=())
def na_backward(
    query: Tensor, key: Tensor, value: Tensor,
    additional_keys: Optional[Tensor], additional_values: Optional[Tensor],
    out: Tensor, lse: Tensor, dout: Tensor, dlse: Optional[Tensor],
    kernel_size: List[int], stride: List[int], dilation: List[int], is_causal: List[bool],
    scale: Optional[float], dense: bool, backend: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (dq, dk, dv, d_additional_keys, d_additional_values); the last two are empty
    tensors when there are no additional keys (ops cannot return None)."""
    dq, dk, dv, dak, dav = (_poisoned(g) for g in _grad_buffers(query, key, value, additional_keys,
                                                                  additional_values))
    p = _lib.problem(query, key, value, additional_keys, kernel_size, stride, dilation,
                     is_causal, scale, dense)
    has_additional = additional_keys is not None
    _lib.backward(dense, p, [query, key, value, additional_keys, additional_values, out, lse,
                             dout, dlse, dq, dk, dv,
                             dak if has_additional else None,
                             dav if has_additional else None],
                  _lib.options(backend, query.device))
    return dq, dk, dv, dak, dav


def _grad_buffers(query, key, value, additional_keys, additional_values):
    # Contiguous, whatever the inputs' strides: the fake and the real op must agree on strides.
    grads = [query.new_empty(x.shape) for x in (query, key, value)]
    for x in (additional_keys, additional_values):
        grads.append(query.new_empty(x.shape) if x is not None else query.new_empty(0))
    return grads


@na_backward.register_fake
def _(query, key, value, additional_keys, additional_values, out, lse, dout, dlse, kernel_size,
      stride, dilation, is_causal, scale, dense, backend):
    return tuple(_grad_buffers(query, key, value, additional_keys, additional_values))


def _setup_context(ctx, inputs, output):
    (query, key, value, ak, av, kernel_size, stride, dilation, is_causal, scale, dense,
     backend) = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, ak, av, out, lse)
    ctx.params = (kernel_size, stride, dilation, is_causal, scale, dense, backend)


def _backward(ctx, dout, dlse):
    query, key, value, ak, av, out, lse = ctx.saved_tensors
    if dout is None:  # only lse fed the loss
        dout = torch.zeros_like(out)
    # dlse is None, or zeros when autograd materializes it, if lse fed nothing; either way the
    # backward adds its term (dS = P * (dP - (do.o - dlse))), so gradients through lse are exact.
    dq, dk, dv, dak, dav = na_backward(query, key, value, ak, av, out, lse, dout, dlse,
                                       *ctx.params)
    if ak is None:
        dak = dav = None
    return dq, dk, dv, dak, dav, None, None, None, None, None, None, None


na_forward.register_autograd(_backward, setup_context=_setup_context)
