"""The functional API: na1d, na2d, na3d and attention, on heads-last tensors [B, *X, H, D].

Python checks Python types here (TypeError for a non-tensor, an unsupported dtype, a float or
bool where an int belongs, ...) and what the C ABI cannot represent (a per-axis tuple of the
wrong length, a device other than cpu/cuda). Every value rule (shapes, ranks, dtypes and devices
agreeing, the window rules of SPEC.md) is the C library's: the ops run its check before any
allocation and raise ValueError with its message, which names the library's argument (q, k, v,
additional_k, kernel_size[0], extent[0], heads_q, ...), its value and the rule.

`deterministic` (every entry point): True asks for a bitwise reproducible backward for this call
(Options::deterministic) without torch.use_deterministic_algorithms; None or False add no
requirement, so the effective value is `deterministic or torch.are_deterministic_algorithms_enabled()`
(torch's flag read when the backward runs; False never overrides it). The forward is the same
either way.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _choice, _fast, _ops
from ._checks import check_bool, check_deterministic, check_scale, check_tensor, per_axis
from .backends import backend_kind

IntOrTuple = Union[int, Sequence[int]]
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)
BoolOrTuple = Union[bool, Sequence[bool]]


class Call(NamedTuple):
    """The arguments of one na_forward call, types checked."""
    query: Tensor
    key: Tensor
    value: Tensor
    additional_keys: Optional[Tensor]
    additional_values: Optional[Tensor]
    kernel_size: list
    stride: list
    dilation: list
    is_causal: list
    scale: Optional[float]
    dense: bool
    backend: int
    placement: Tuple = ()  # () or the placed boxes: global_extent + query_origin + key_origin
    # The per-call requirement of a deterministic backward (check_deterministic); torch's
    # global flag is read, and or-ed in, where the options are built.
    deterministic: bool = False

    def op_args(self, choice: _choice.Choice) -> Tuple:
        """The arguments of the custom ops' na_forward (_ops.py), in schema order."""
        return tuple(self[:-2]) + (list(self.placement), choice.family, list(choice.config_ids),
                                   list(choice.tiles), self.deterministic)


def _check_additional(ak, av) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    if ak is not None:
        check_tensor("additional_keys", ak)
    if av is not None:
        check_tensor("additional_values", av)
    if (ak is not None and av is not None and ak.dim() >= 2 and av.dim() >= 2
            and ak.shape[1] == 0 and av.shape[1] == 0):
        return None, None  # no extra keys: the same as passing none
    return ak, av


def neighborhood_call(rank: int, query, key, value, kernel_size, stride, dilation, is_causal,
                      scale, additional_keys, additional_values, backend,
                      deterministic=None) -> Call:
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, x)
    ks = per_axis("kernel_size", kernel_size, rank)
    st = per_axis("stride", stride, rank)
    dil = per_axis("dilation", dilation, rank)
    causal = per_axis("is_causal", is_causal, rank, want_bool=True)
    scale = check_scale(scale)
    ak, av = _check_additional(additional_keys, additional_values)
    det = check_deterministic(deterministic)
    return Call(query, key, value, ak, av, list(ks), list(st), list(dil), list(causal), scale,
                False, backend_kind(backend), (), det)


def attention_call(query, key, value, is_causal, scale, backend, deterministic=None) -> Call:
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, x)
    check_bool("is_causal", is_causal)
    scale = check_scale(scale)
    det = check_deterministic(deterministic)
    return Call(query, key, value, None, None, [], [], [], [is_causal], scale, True,
                backend_kind(backend), (), det)


def autocast(call: Call) -> Call:
    """Inside torch.autocast, the call as torch's scaled_dot_product_attention would see it:
    floating inputs other than float64 cast to the autocast dtype of their device type (nattn's
    ops are not on torch's autocast lists, so the functional API does it; gradients flow back to
    the inputs' own dtype through the casts). Outside autocast the call is unchanged."""
    if not torch.compiler.is_compiling() and not _any_autocast():
        return call  # a cheaper question first (dynamo never traces it)
    device = call.query.device.type
    if not torch.is_autocast_enabled(device):
        return call
    target = torch.get_autocast_dtype(device)

    def cast(x):
        return x if x is None or x.dtype in (target, torch.float64) else x.to(target)

    return call._replace(query=cast(call.query), key=cast(call.key), value=cast(call.value),
                         additional_keys=cast(call.additional_keys),
                         additional_values=cast(call.additional_values))


def _run(call: Call, return_lse):
    check_bool("return_lse", return_lse)
    call = autocast(call)
    choice = _choice.current()
    # is_compiling() first: dynamo folds it to True and never traces the fast path's checks.
    if not torch.compiler.is_compiling() and _fast.eligible(call[:5]):
        out, lse = _fast.na_forward(call, choice, return_lse)
    else:
        out, lse = _ops.na_forward(*call.op_args(choice))
    return (out, lse) if return_lse else out


def _neighborhood(rank: int, query, key, value, kernel_size, stride, dilation, is_causal, scale,
                  additional_keys, additional_values, return_lse, backend, deterministic):
    call = neighborhood_call(rank, query, key, value, kernel_size, stride, dilation, is_causal,
                             scale, additional_keys, additional_values, backend, deterministic)
    return _run(call, return_lse)


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False,
         backend: Optional[str] = None, deterministic: Optional[bool] = None):
    """1-D neighborhood attention on [B, X, H, D]. Returns out [B, X, Hq, Dv], or (out, lse).
    deterministic=True: a bitwise reproducible backward for this call (module docs)."""
    return _neighborhood(1, query, key, value, kernel_size, stride, dilation, is_causal,
                         scale, additional_keys, additional_values, return_lse, backend,
                         deterministic)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False,
         backend: Optional[str] = None, deterministic: Optional[bool] = None):
    """2-D neighborhood attention on [B, X1, X2, H, D]. Returns out, or (out, lse).
    deterministic=True: a bitwise reproducible backward for this call (module docs)."""
    return _neighborhood(2, query, key, value, kernel_size, stride, dilation, is_causal,
                         scale, additional_keys, additional_values, return_lse, backend,
                         deterministic)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False,
         backend: Optional[str] = None, deterministic: Optional[bool] = None):
    """3-D neighborhood attention on [B, X1, X2, X3, H, D]. Returns out, or (out, lse).
    deterministic=True: a bitwise reproducible backward for this call (module docs)."""
    return _neighborhood(3, query, key, value, kernel_size, stride, dilation, is_causal,
                         scale, additional_keys, additional_values, return_lse, backend,
                         deterministic)


def attention(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False,
              scale: Optional[float] = None, return_lse: bool = False,
              backend: Optional[str] = None, deterministic: Optional[bool] = None):
    """Dense (optionally causal) attention: query [B, N, Hq, D], key [B, Nk, Hkv, D], value
    [B, Nk, Hkv, Dv] (any Nk >= 1; Hq a multiple of Hkv). Returns out [B, N, Hq, Dv], or
    (out, lse). is_causal: query i attends to keys j <= i (top-left aligned when Nk != N, as
    torch's scaled_dot_product_attention). deterministic=True: a bitwise reproducible backward
    for this call (module docs)."""
    return _run(attention_call(query, key, value, is_causal, scale, backend, deterministic),
                return_lse)


def na_placed(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntOrTuple,
              global_extent: IntOrTuple, query_origin: IntOrTuple = 0,
              key_origin: IntOrTuple = 0, stride: IntOrTuple = 1, dilation: IntOrTuple = 1,
              is_causal: BoolOrTuple = False, scale: Optional[float] = None,
              additional_keys: Optional[Tensor] = None,
              additional_values: Optional[Tensor] = None, return_lse: bool = False,
              backend: Optional[str] = None, deterministic: Optional[bool] = None):
    """Neighborhood attention of placed boxes (SPEC.md "Placed boxes"), rank query.dim() - 3:
    query [B, *X, Hq, D] is the box of a global grid of extent `global_extent` starting at
    `query_origin`, key/value [B, *K, Hkv, *] the box starting at `key_origin`. Windows are
    those of the global grid; keys outside the key box are not attended (a query left with no
    key gets out = 0, lse = -inf). The multi-GPU halo mode runs on this. Returns out, or
    (out, lse). deterministic=True: a bitwise reproducible backward for this call (module
    docs)."""
    check_tensor("query", query)
    rank = query.dim() - 3
    if not 1 <= rank <= 3:
        raise ValueError(f"query.shape = {list(query.shape)} is invalid: the rank is "
                         "query.dim() - 3, which must be 1, 2 or 3")
    call = neighborhood_call(rank, query, key, value, kernel_size, stride, dilation, is_causal,
                             scale, additional_keys, additional_values, backend, deterministic)
    placement = (per_axis("global_extent", global_extent, rank)
                 + per_axis("query_origin", query_origin, rank)
                 + per_axis("key_origin", key_origin, rank))
    return _run(call._replace(placement=tuple(int(x) for x in placement)), return_lse)
