"""The functional API: na1d, na2d, na3d and attention, on heads-last tensors [B, *X, H, D].

Arguments are checked here in Python terms (argument names such as `kernel_size` and `query`,
TypeError for wrong Python types) before any kernel runs; the C library checks everything
again. Rules and semantics: SPEC.md (docs/python.md for the Python API).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor

from . import _ops
from ._checks import check_bool, check_same, check_scale, check_tensor, per_axis, shape_str
from .backends import backend_kind

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]

_AXES = {1: "[batch, X, heads, head_dim]", 2: "[batch, X1, X2, heads, head_dim]",
         3: "[batch, X1, X2, X3, heads, head_dim]"}


def _check_qkv(fn: str, rank: int, query, key, value, layout: Optional[str] = None) -> None:
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, x)
    for name, x in (("query", query), ("key", key), ("value", value)):
        if x.dim() != rank + 3:
            raise ValueError(f"{name}.shape = {shape_str(x)} is invalid: {fn} expects "
                             f"{layout or _AXES[rank]} ({rank + 3} dims), got {x.dim()} dims")
    check_same("key", key, "query", query)
    check_same("value", value, "query", query)
    grid = tuple(query.shape[:-2])
    if tuple(key.shape[:-2]) != grid or key.shape[-1] != query.shape[-1]:
        raise ValueError(f"key.shape = {shape_str(key)} is invalid: must be [batch, *X, heads_kv, "
                         f"head_dim] with batch, X and head_dim of query.shape = {shape_str(query)}")
    if tuple(value.shape[:-1]) != tuple(key.shape[:-1]):
        raise ValueError(f"value.shape = {shape_str(value)} is invalid: must be [batch, *X, heads_kv, "
                         f"head_dim_v] with batch, X and heads_kv of key.shape = {shape_str(key)}")
    hq, hkv = query.shape[-2], key.shape[-2]
    if hq < 1 or hkv < 1 or hq % hkv != 0:
        raise ValueError(f"query.shape[-2] = {hq} (heads) is invalid: must be a positive "
                         f"multiple of key.shape[-2] = {hkv} (key/value heads, grouped-query "
                         "attention)")
    if query.shape[-1] < 1 or value.shape[-1] < 1:
        raise ValueError(f"head_dim = {query.shape[-1]}, head_dim_v = {value.shape[-1]} is "
                         "invalid: both must be >= 1")


def _check_additional(query: Tensor, key: Tensor, value: Tensor, ak, av):
    if ak is None and av is None:
        return None, None
    if ak is None or av is None:
        missing = "additional_keys" if ak is None else "additional_values"
        raise ValueError(f"{missing} = None is invalid: additional_keys and additional_values "
                         "must be given together")
    check_tensor("additional_keys", ak)
    check_tensor("additional_values", av)
    check_same("additional_keys", ak, "query", query)
    check_same("additional_values", av, "query", query)
    b, hkv, d, dv = query.shape[0], key.shape[-2], query.shape[-1], value.shape[-1]
    if ak.dim() != 4 or ak.shape[0] != b or ak.shape[2] != hkv or ak.shape[3] != d:
        raise ValueError(f"additional_keys.shape = {shape_str(ak)} is invalid: must be [batch, Na, "
                         f"heads_kv, head_dim] = [{b}, Na, {hkv}, {d}]")
    if av.dim() != 4 or tuple(av.shape[:3]) != tuple(ak.shape[:3]) or av.shape[3] != dv:
        raise ValueError(f"additional_values.shape = {shape_str(av)} is invalid: must be [batch, Na, "
                         f"heads_kv, head_dim_v] = [{b}, {ak.shape[1]}, {hkv}, {dv}]")
    if ak.shape[1] == 0:
        return None, None  # no extra keys: the same as passing none
    return ak, av


def _check_window(rank: int, extents, kernel_size, stride, dilation, is_causal):
    ks = per_axis("kernel_size", kernel_size, rank)
    st = per_axis("stride", stride, rank)
    dil = per_axis("dilation", dilation, rank)
    causal = per_axis("is_causal", is_causal, rank, want_bool=True)
    for a in range(rank):
        k, s, d, x = ks[a], st[a], dil[a], extents[a]
        if k < 2:
            raise ValueError(f"kernel_size = {kernel_size!r} is invalid: kernel_size[{a}] = {k} "
                             "must be >= 2")
        if d < 1:
            raise ValueError(f"dilation = {dilation!r} is invalid: dilation[{a}] = {d} must be >= 1")
        if s < 1 or s > k:
            raise ValueError(f"stride = {stride!r} is invalid: stride[{a}] = {s} must satisfy "
                             f"1 <= stride <= kernel_size (kernel_size[{a}] = {k})")
        if k * d > x:
            raise ValueError(f"kernel_size = {kernel_size!r} is invalid: kernel_size[{a}] * "
                             f"dilation[{a}] = {k} * {d} = {k * d} must be <= the extent of "
                             f"spatial axis {a} (query.shape[{a + 1}] = {x})")
    return [int(k) for k in ks], [int(s) for s in st], [int(d) for d in dil], list(causal)


def _neighborhood(fn: str, rank: int, query, key, value, kernel_size, stride, dilation,
                  is_causal, scale, additional_keys, additional_values, return_lse, backend):
    _check_qkv(fn, rank, query, key, value)
    ks, st, dil, causal = _check_window(rank, tuple(query.shape[1:1 + rank]), kernel_size,
                                        stride, dilation, is_causal)
    scale = check_scale(scale)
    ak, av = _check_additional(query, key, value, additional_keys, additional_values)
    check_bool("return_lse", return_lse)
    kind = backend_kind(backend)
    out, lse = _ops.na_forward(query, key, value, ak, av, ks, st, dil, causal, scale, False, kind)
    return (out, lse) if return_lse else out


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False,
         backend: Optional[str] = None):
    """1-D neighborhood attention on [B, X, H, D]. Returns out [B, X, Hq, Dv], or (out, lse)."""
    return _neighborhood("na1d", 1, query, key, value, kernel_size, stride, dilation, is_causal,
                         scale, additional_keys, additional_values, return_lse, backend)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False,
         backend: Optional[str] = None):
    """2-D neighborhood attention on [B, X1, X2, H, D]. Returns out, or (out, lse)."""
    return _neighborhood("na2d", 2, query, key, value, kernel_size, stride, dilation, is_causal,
                         scale, additional_keys, additional_values, return_lse, backend)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
         scale: Optional[float] = None, additional_keys: Optional[Tensor] = None,
         additional_values: Optional[Tensor] = None, return_lse: bool = False,
         backend: Optional[str] = None):
    """3-D neighborhood attention on [B, X1, X2, X3, H, D]. Returns out, or (out, lse)."""
    return _neighborhood("na3d", 3, query, key, value, kernel_size, stride, dilation, is_causal,
                         scale, additional_keys, additional_values, return_lse, backend)


def attention(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False,
              scale: Optional[float] = None, return_lse: bool = False,
              backend: Optional[str] = None):
    """Dense (optionally causal) attention on [B, N, H, D]. Returns out, or (out, lse)."""
    _check_qkv("attention", 1, query, key, value, layout="[batch, N, heads, head_dim]")
    check_bool("is_causal", is_causal)
    scale = check_scale(scale)
    check_bool("return_lse", return_lse)
    kind = backend_kind(backend)
    out, lse = _ops.na_forward(query, key, value, None, None, [], [], [], [is_causal], scale,
                               True, kind)
    return (out, lse) if return_lse else out
