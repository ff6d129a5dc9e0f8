"""Argument checks shared by the functional API, merge_attentions and the modules.

Messages follow the library's form: "<argument> = <value> is invalid: <rule>". TypeError is for
wrong Python types, ValueError for wrong values.
"""
import math
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _lib


def shape_str(x: Tensor) -> str:
    return "[" + ", ".join(str(n) for n in x.shape) + "]"


def check_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} = {type(x).__name__} object is invalid: must be a torch.Tensor")
    if x.dtype not in _lib.DTYPES:
        raise TypeError(f"{name}.dtype = {x.dtype} is invalid: must be torch.float32, "
                        "torch.float16, torch.bfloat16 or torch.float64")
    if x.device.type not in _lib.DEVICES:
        raise ValueError(f"{name}.device = {x.device} is invalid: must be a cpu or cuda device")


def check_same(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.dtype != ref.dtype:
        raise ValueError(f"{name}.dtype = {x.dtype} is invalid: must match {ref_name}.dtype "
                         f"({ref.dtype})")
    if x.device != ref.device:
        raise ValueError(f"{name}.device = {x.device} is invalid: must match {ref_name}.device "
                         f"({ref.device})")


def is_int(v) -> bool:
    # bool is an int subclass; True as a kernel size is a mistake, not 1.
    return isinstance(v, (numbers.Integral, torch.SymInt)) and not isinstance(v, bool)


def per_axis(name: str, value, rank: int, want_bool: bool = False) -> Tuple:
    """An int (bool) for every axis, or a tuple/list with one per axis."""
    kind = "bool" if want_bool else "int"
    ok = (lambda v: isinstance(v, bool)) if want_bool else is_int
    if ok(value):
        return (value,) * rank
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(f"{name} = {value!r} is invalid: needs one value per spatial axis "
                             f"({rank}), got {len(value)}")
        for a, v in enumerate(value):
            if not ok(v):
                raise TypeError(f"{name}[{a}] = {v!r} is invalid: must be a {kind}, not "
                                f"{type(v).__name__}")
        return tuple(value)
    raise TypeError(f"{name} = {value!r} is invalid: must be a {kind} or a tuple of {rank} "
                    f"{kind}s, not {type(value).__name__}")


def check_scale(scale) -> Optional[float]:
    if scale is None:
        return None  # the library uses 1/sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (numbers.Real, torch.SymFloat)):
        raise TypeError(f"scale = {scale!r} is invalid: must be None or a float, not "
                        f"{type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale = {scale!r} is invalid: must be finite")
    return scale  # 0.0 included: an explicit scale is used as given


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} = {value!r} is invalid: must be a bool, not {type(value).__name__}")
