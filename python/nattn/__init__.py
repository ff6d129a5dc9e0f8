"""nattn: neighborhood attention for PyTorch (see docs/python.md).

Tensors are heads-last: query [B, *X, Hq, D], key [B, *X, Hkv, D], value [B, *X, Hkv, Dv].
"""
from . import (
    _lib,
    _ops,  # noqa: F401  (registers torch.ops.nattn.na_forward / na_backward)
)
from ._choice import kernel_choice
from .backends import BackendInfo, OpPath, backends, op_path
from .functional import attention, na1d, na2d, na3d, na_placed
from .merge import merge_attentions
from .modules import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .plans import FamilyVerdict, KernelConfig, Plan, explain, kernel_configs

__version__ = "0.1.0"
library_version = _lib.version()
library_path = _lib.LIBRARY_PATH

__all__ = [
    "na1d", "na2d", "na3d", "na_placed", "attention", "merge_attentions", "backends", "BackendInfo",
    "op_path", "OpPath",
    "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
    "explain", "kernel_configs", "kernel_choice", "Plan", "FamilyVerdict", "KernelConfig",
]
