"""nn.Modules: multi-head neighborhood attention over [B, *X, C] (qkv linear, NA, proj, dropout).

With a process group (`group=`, e.g. torch.distributed.group.WORLD) a module runs on this rank's
shard of the token grid through nattn.distributed (`shard_axes`, `mode`, `process_grid` as
there): x is the local shard [B, *local X, C], the output the local shard. The linear layers
are per token, so they run on the shard as they are; their weight gradients are this rank's
part (sum them over the ranks, as data parallelism does).

`deterministic=True` makes the attention's backward bitwise reproducible for this module's calls
without torch.use_deterministic_algorithms (None or False: torch's flag decides; see
nattn.na2d)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import functional as F
from ._checks import check_deterministic, check_scale, is_int, per_axis

_OPS = {1: F.na1d, 2: F.na2d, 3: F.na3d}


class _NeighborhoodAttention(nn.Module):
    rank: int = 0

    def __init__(self, embed_dim: int, num_heads: int, kernel_size, stride=1, dilation=1,
                 is_causal=False, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 proj_drop: float = 0.0, group=None, shard_axes=0, mode: str = "auto",
                 process_grid=None, deterministic: Optional[bool] = None):
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not is_int(v):
                raise TypeError(f"{name} = {v!r} is invalid: must be an int")
            if v < 1:
                raise ValueError(f"{name} = {v} is invalid: must be >= 1")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim = {embed_dim} is invalid: must be divisible by "
                             f"num_heads = {num_heads}")
        # Window arguments are checked now (types, per-axis lengths) and against the input's
        # extents at every call.
        per_axis("kernel_size", kernel_size, self.rank)
        per_axis("stride", stride, self.rank)
        per_axis("dilation", dilation, self.rank)
        per_axis("is_causal", is_causal, self.rank, want_bool=True)
        check_scale(qk_scale)
        check_deterministic(deterministic)
        self.deterministic = deterministic
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.is_causal = is_causal
        self.scale = qk_scale  # None: 1/sqrt(head_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.group, self.shard_axes, self.mode = group, shard_axes, mode
        self.process_grid = process_grid

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x = {type(x).__name__} object is invalid: must be a torch.Tensor")
        if x.dim() != self.rank + 2 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x.shape = {list(x.shape)} is invalid: {type(self).__name__} "
                             f"expects [batch, {self.rank} spatial dims, embed_dim = "
                             f"{self.embed_dim}]")
        lead = x.shape[:-1]
        # [B, *X, 3, H, D]; q, k and v are strided views of it, passed to nattn without copies.
        qkv = self.qkv(x).view(*lead, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=-3)
        if self.group is None:
            out = _OPS[self.rank](q, k, v, self.kernel_size, stride=self.stride,
                                  dilation=self.dilation, is_causal=self.is_causal,
                                  scale=self.scale, deterministic=self.deterministic)
        else:
            from . import distributed
            out = distributed.neighborhood_attention(
                q, k, v, self.kernel_size, self.stride, self.dilation, self.is_causal,
                self.scale, group=self.group, shard_axes=self.shard_axes, mode=self.mode,
                process_grid=self.process_grid, deterministic=self.deterministic)
        return self.proj_drop(self.proj(out.reshape(*lead, self.embed_dim)))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"dilation={self.dilation}, is_causal={self.is_causal}"
                + ("" if self.deterministic is None else f", deterministic={self.deterministic}")
                + ("" if self.group is None else
                   f", shard_axes={self.shard_axes}, mode={self.mode!r}"))


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """Neighborhood attention over [B, X, C]."""
    rank = 1


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """Neighborhood attention over [B, X1, X2, C]."""
    rank = 2


class NeighborhoodAttention3D(_NeighborhoodAttention):
    """Neighborhood attention over [B, X1, X2, X3, C]."""
    rank = 3
