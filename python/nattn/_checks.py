"""Python-type checks shared by the functional API, merge_attentions, explain and the modules.

Only what the C library cannot judge is checked here: Python types, and values the C ABI cannot
represent (per-axis tuples of the wrong length, devices other than cpu/cuda, ints past 64 bits).
Every value rule is the library's (nattn_check_*_shapes, run by the ops). Messages follow the
library's form: "<argument> = <value> is invalid: <rule>".
"""
import numbers
from typing import Optional, Tuple

import torch

from . import _lib


def shape_str(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in x.shape) + "]"


def check_tensor(name: str, x) -> None:
    if type(x) is torch.Tensor and x.dtype in _lib.DTYPES and x.device.type in _lib.DEVICES:
        return  # the common case, answered with the fewest attribute reads
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} = {type(x).__name__} object is invalid: must be a torch.Tensor")
    if x.dtype not in _lib.DTYPES:
        raise TypeError(f"{name}.dtype = {x.dtype} is invalid: must be torch.float32, "
                        "torch.float16, torch.bfloat16 or torch.float64")
    if x.device.type not in _lib.DEVICES:
        raise ValueError(f"{name}.device = {x.device} is invalid: must be a cpu or cuda device")


def is_int(v) -> bool:
    # bool is an int subclass; True as a kernel size is a mistake, not 1. A plain int is
    # answered first: the ABC check of numbers.Integral costs a microsecond per call.
    return type(v) is int or (isinstance(v, (numbers.Integral, torch.SymInt))
                              and not isinstance(v, bool))


def per_axis(name: str, value, rank: int, want_bool: bool = False) -> Tuple:
    """An int (bool) for every axis, or a tuple/list with one per axis."""
    if type(value) is (bool if want_bool else int) and -2**63 <= value < 2**63:
        return (value,) * rank  # the common case first
    kind = "bool" if want_bool else "int"
    a_kind = "a bool" if want_bool else "an int"
    ok = (lambda v: isinstance(v, bool)) if want_bool else is_int
    if ok(value):
        values = (value,) * rank
    elif isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(f"{name} = {value!r} is invalid: needs one value per spatial axis "
                             f"({rank}), got {len(value)}")
        for a, v in enumerate(value):
            if not ok(v):
                raise TypeError(f"{name}[{a}] = {v!r} is invalid: must be {a_kind}, not "
                                f"{type(v).__name__}")
        values = tuple(value)
    else:
        raise TypeError(f"{name} = {value!r} is invalid: must be {a_kind} or a tuple of {rank} "
                        f"{kind}s, not {type(value).__name__}")
    for a, v in enumerate(values):
        if (type(v) is int or isinstance(v, numbers.Integral)) and not -2**63 <= v < 2**63:
            raise ValueError(f"{name}[{a}] = {v} is invalid: must fit in 64 bits")
    return values


def check_scale(scale) -> Optional[float]:
    """None (the library uses 1/sqrt(head_dim)) or a float; the library checks it is finite."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (numbers.Real, torch.SymFloat)):
        raise TypeError(f"scale = {scale!r} is invalid: must be None or a float, not "
                        f"{type(scale).__name__}")
    return float(scale)  # 0.0 included: an explicit scale is used as given


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} = {value!r} is invalid: must be a bool, not {type(value).__name__}")


def check_deterministic(value) -> bool:
    """The per-call `deterministic` argument: None (no per-call requirement: torch's global
    flag decides), True (the backward must be bitwise reproducible) or False (no per-call
    requirement either: it never overrides torch.use_deterministic_algorithms). Returns the
    per-call requirement; the effective flag is it or torch.are_deterministic_algorithms_enabled(),
    read when the backward runs."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TypeError(f"deterministic = {value!r} is invalid: must be None, True or False, not "
                        f"{type(value).__name__} (True asks for a bitwise reproducible backward; "
                        "the effective value is deterministic or "
                        "torch.are_deterministic_algorithms_enabled())")
    return value
