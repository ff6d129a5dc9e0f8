"""nattn.explain (the plan a call would run, without running it) and nattn.kernel_configs (the
kernel configuration table), read from the C library (nattn_explain_*, nattn_kernel_configs)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _choice, _lib, _ops
from ._checks import check_bool, check_tensor, per_axis
from .functional import Call, attention_call, autocast, neighborhood_call


class FamilyVerdict(NamedTuple):
    family: str
    chosen: bool
    reason: str  # why not, when not chosen; what it runs, when chosen


@dataclass(frozen=True)
class Plan:
    """Which kernel family and kernels a call runs, and why each other family does not.

    backend: "cuda" or "reference". family: the family of the attention kernels.
    families: every family of the backend, in order of preference, as (family, chosen, reason).
    copies: tensors the call copies into (or out of) contiguous buffers, and why.
    kernels: one dict per launch, in order (role, config_id, own_tile, walk_tile, grid, threads,
        smem_bytes, walked_tiles). workspace_bytes: device scratch the call takes.
    cached: the plan came from the library's plan cache.
    """
    backend: str
    family: str
    families: Tuple[FamilyVerdict, ...]
    copies: Tuple[str, ...]
    kernels: Tuple[Dict[str, Any], ...]
    workspace_bytes: int
    cached: bool

    def kernels_of(self, role: str) -> List[Dict[str, Any]]:
        """The kernels of one role ("forward", "backward_dq", "backward_dkdv", ...)."""
        return [k for k in self.kernels if k["role"] == role]

    def __str__(self) -> str:
        lines = [f"{self.backend} plan, family {self.family}" + (" (cached)" if self.cached else "")]
        width = max((len(f.family) for f in self.families), default=0)
        for f in self.families:
            mark = "*" if f.chosen else " "
            lines.append(f"  {mark} {f.family:<{width}}  {f.reason}")
        for c in self.copies:
            lines.append(f"  copy: {c}")
        for k in self.kernels:
            config = f" config {k['config_id']}" if k["config_id"] >= 0 else ""
            shape = ""
            if k["threads"]:
                shape = (f" own {tuple(k['own_tile'])} walk {tuple(k['walk_tile'])} grid "
                         f"{tuple(k['grid'])} threads {k['threads']} smem {k['smem_bytes']}")
            lines.append(f"  kernel {k['role']}{config}{shape}")
        if self.workspace_bytes:
            lines.append(f"  workspace {self.workspace_bytes} bytes")
        return "\n".join(lines)

    @staticmethod
    def from_json(j: Dict[str, Any]) -> "Plan":
        kernels = []
        for k in j["kernels"]:
            k = dict(k)
            for key in ("own_tile", "walk_tile", "grid"):
                k[key] = tuple(k[key])
            kernels.append(k)
        return Plan(backend=j["backend"], family=j["family"],
                    families=tuple(FamilyVerdict(f["family"], f["chosen"], f["reason"])
                                   for f in j["families"]),
                    copies=tuple(j["copies"]), kernels=tuple(kernels),
                    workspace_bytes=int(j["workspace_bytes"]), cached=bool(j["cached"]))


@dataclass(frozen=True)
class KernelConfig:
    """A row of the kernel configuration table (the one source of the fused kernels' variants)."""
    id: int
    family: str     # "sm80", ...
    role: str       # "forward", "backward_dq", "backward_dkdv", "backward_dkdv_dq"
    dtype: str      # "float16", "bfloat16"; "any" (generic)
    head_dim: int   # padded head dim the row is instantiated for; 0 = any (generic)
    block_q: int    # query rows per tile
    block_kv: int   # key rows per tile
    warps: int
    stages: int     # walked-tile buffers in flight
    pingpong: bool  # consumer warpgroups take turns issuing their products (sm90)
    poly_exp: bool  # a quarter of the softmax's 2^x on the FMA units (sm90 forward)
    ctas_per_sm: int  # CTAs resident per SM (sm90 backward rows for small grids: 2)
    built: bool     # compiled into this library

    @property
    def torch_dtype(self) -> Optional[torch.dtype]:
        """The row's torch dtype; None for rows of any dtype ("any": the generic family)."""
        return getattr(torch, self.dtype) if self.dtype != "any" else None


@functools.lru_cache(maxsize=None)
def _configs() -> Tuple[KernelConfig, ...]:
    return tuple(KernelConfig(**row) for row in _lib.kernel_configs())


def kernel_configs() -> List[KernelConfig]:
    """Every row of the library's kernel configuration table (built or not); [] in a build
    without fused kernels."""
    return list(_configs())


def explain(query: Tensor, key: Tensor, value: Tensor, kernel_size=None, stride=1, dilation=1,
            is_causal=False, scale: Optional[float] = None,
            additional_keys: Optional[Tensor] = None, additional_values: Optional[Tensor] = None,
            backward: bool = False, grad_out: Optional[Tensor] = None,
            backend: Optional[str] = None, family: Optional[str] = None,
            config: Union[None, int, Sequence[int]] = None, tile=None,
            dense: bool = False, global_extent=None, query_origin=0, key_origin=0,
            deterministic: Optional[bool] = None) -> Plan:
    """The plan nattn would run for na{1,2,3}d(query, key, value, kernel_size, ...) (rank
    query.dim() - 3), or with dense=True and kernel_size None for attention(query, key, value,
    is_causal, ...); with backward=True, for the backward of that call, given `grad_out` (the
    gradient of out as autograd would pass it, e.g. an expanded tensor from .sum().backward();
    None: a contiguous one). Nothing runs: outputs are allocated (contiguous, as the ops
    allocate them) but not written.

    family/config/tile force a kernel choice like nattn.kernel_choice; when all are None, the
    kernel_choice in force applies. global_extent (with query_origin, key_origin): the plan of
    nattn.na_placed(query, key, value, kernel_size, global_extent, query_origin, key_origin,
    ...) instead. deterministic: the call's `deterministic` argument (the plan is deterministic
    when it is True or torch.are_deterministic_algorithms_enabled()). Errors are those the call
    would raise.
    """
    check_tensor("query", query)
    check_bool("dense", dense)
    check_bool("backward", backward)
    if dense and global_extent is not None:
        raise TypeError(f"global_extent = {global_extent!r} is invalid with dense=True: dense "
                        "attention places its boxes itself (Nk != N is cross-attention)")
    if dense:
        if kernel_size is not None:
            raise TypeError(f"kernel_size = {kernel_size!r} is invalid: must be None with "
                            "dense=True (dense attention has no window)")
        call = attention_call(query, key, value, is_causal, scale, backend, deterministic)
    else:
        if kernel_size is None:
            raise TypeError("kernel_size = None is invalid: needed unless dense=True")
        if not 4 <= query.dim() <= 6:
            raise ValueError(f"query.shape = {list(query.shape)} is invalid: explain reads the "
                             "rank as query.dim() - 3, which must be 1, 2 or 3")
        rank = query.dim() - 3
        call = neighborhood_call(rank, query, key, value, kernel_size, stride, dilation,
                                 is_causal, scale, additional_keys, additional_values, backend,
                                 deterministic)
        if global_extent is not None:
            placement = (per_axis("global_extent", global_extent, rank)
                         + per_axis("query_origin", query_origin, rank)
                         + per_axis("key_origin", key_origin, rank))
            call = call._replace(placement=tuple(int(x) for x in placement))
    if family is None and config is None and tile is None:
        choice = _choice.current()
    else:
        choice = _choice.make(family, config, tile)
    if grad_out is not None:
        check_tensor("grad_out", grad_out)
    return _explain(autocast(call), choice, backward, grad_out)


def _explain(call: Call, choice: _choice.Choice, backward: bool, grad_out: Optional[Tensor]) -> Plan:
    q, k, v, ak, av = call.query, call.key, call.value, call.additional_keys, call.additional_values
    where = _ops._where(call.dense, call.is_causal, backward)
    p = _lib.problem(q, k, v, ak, av, call.kernel_size, call.stride, call.dilation,
                     call.is_causal, call.scale, call.dense, call.placement)
    out_shape, lse_shape = _ops._out_shapes(q, v)
    # The library's checks first, so that a bad call fails before anything is allocated.
    out_view = _lib.planned(out_shape, q.dtype, q.device)
    lse_view = _lib.planned(lse_shape, torch.float32, q.device)
    _lib.check_forward(call.dense, p, _lib.slots([q, k, v, ak, av, out_view, lse_view]), where)
    out = q.new_empty(out_shape)
    lse = q.new_empty(lse_shape, dtype=torch.float32)
    options = _lib.options(call.backend, q.device, choice.family, choice.config_ids, choice.tiles,
                           call.deterministic)
    if not backward:
        arr = _lib.slots([q, k, v, ak, av, out, lse])
    else:
        dout = grad_out if grad_out is not None else torch.empty_like(out)  # out is contiguous
        dq, dk, dv, dak, dav = _ops._grad_buffers(q, k, v, ak, av)
        if ak is None:
            dak = dav = None
        arr = _lib.slots([q, k, v, ak, av, out, lse, dout, None, dq, dk, dv, dak, dav])
    return Plan.from_json(_lib.explain(call.dense, backward, p, arr, options, where))
