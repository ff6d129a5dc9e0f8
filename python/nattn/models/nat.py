"""NAT and DiNAT: hierarchical vision backbones built on 2-D neighborhood attention.

Neighborhood Attention Transformer (Hassani et al., 2022) and Dilated Neighborhood Attention
Transformer (Hassani & Shi, 2022): an overlapping convolutional tokenizer (two 3x3 stride-2
convolutions, /4), four levels of pre-norm transformer layers whose attention is a 7x7
neighborhood (DiNAT: alternating with dilated neighborhoods that cover the whole level at 224x224),
3x3 stride-2 convolutional downsamplers between levels, and a pooled linear classifier. The
published configurations are `nat_mini` .. `dinat_base`.

One difference from the published models: no relative positional bias (nattn's kernels have none).

`attention=` picks what computes the attention, for comparisons on the same model:
"nattn" (default, nattn.na2d), "flex" (torch's FlexAttention with the same neighborhood as a
block mask; needs torch >= 2.5) or "sdpa" (dense attention over the whole level: a different
model, the usual global-attention baseline). Works with torch.compile (fullgraph for "nattn").
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as nf

_ATTENTION = ("nattn", "flex", "sdpa")


def neighborhood_mask_mod(extents: Sequence[int], kernel_size: int, dilation: Sequence[int]):
    """FlexAttention mask_mod for non-causal 2-D neighborhood attention with stride 1 over a
    row-major [extents[0], extents[1]] grid (SPEC.md's window; dilation per axis)."""
    h_ext, w_ext = extents
    k = kernel_size

    def axis(qi, ki, length: int, d: int):
        g = qi % d
        p = qi // d
        lg = torch.where(g < length % d, length // d + 1, length // d)  # this dilation group's length
        # SPEC.md's window with stride 1: centred on p, shifted (never shrunk) at the borders.
        start = torch.minimum(torch.clamp(p - k // 2, min=0), lg - k)
        j = ki // d
        return (ki % d == g) & (j >= start) & (j < start + k)

    def mask_mod(b, h, q_idx, kv_idx):
        return (axis(q_idx // w_ext, kv_idx // w_ext, h_ext, dilation[0])
                & axis(q_idx % w_ext, kv_idx % w_ext, w_ext, dilation[1]))

    return mask_mod


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=64)
def _block_mask(extents, kernel_size, dilation, device):
    from torch.nn.attention.flex_attention import create_block_mask
    n = extents[0] * extents[1]
    return create_block_mask(neighborhood_mask_mod(extents, kernel_size, dilation), None, None, n, n,
                             device=device)


class NeighborhoodAttention(nn.Module):
    """Multi-head 2-D neighborhood attention over [B, H, W, C] (qkv, attention, projection).
    A level smaller than kernel_size * dilation is zero-padded at the bottom/right to that size
    and cropped afterwards, as the published models do."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1,
                 qkv_bias: bool = True, attention: str = "nattn"):
        super().__init__()
        if attention not in _ATTENTION:
            raise ValueError(f"attention = {attention!r} is invalid: must be one of {_ATTENTION}")
        if dim % num_heads:
            raise ValueError(f"dim = {dim} is invalid: must be divisible by num_heads = {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.kernel_size, self.dilation, self.attention = kernel_size, dilation, attention
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        window = self.kernel_size * self.dilation
        pad_h, pad_w = max(0, window - H), max(0, window - W)
        if self.attention != "sdpa" and (pad_h or pad_w):
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).view(B, Hp, Wp, 3, self.num_heads, self.head_dim).unbind(3)
        if self.attention == "nattn":
            out = nf.na2d(q, k, v, self.kernel_size, dilation=self.dilation)
        else:
            # [B, heads, N, D] for torch's attention functions.
            q, k, v = (t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))
            if self.attention == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                mask = _block_mask((Hp, Wp), self.kernel_size, (self.dilation, self.dilation),
                                   str(x.device))
                out = _compiled_flex()(q, k, v, block_mask=mask)
            out = out.transpose(1, 2).reshape(B, Hp, Wp, self.num_heads, self.head_dim)
        out = out[:, :H, :W].reshape(B, H, W, C)
        return self.proj(out)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, attention={self.attention!r}")


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim),
                         nn.Dropout(drop))


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drops the whole residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    return x * keep.bernoulli_(1.0 - p) / (1.0 - p)


class NATLayer(nn.Module):
    """Pre-norm transformer layer: x + NA(LN(x)), then x + MLP(LN(x)), with optional layer scale."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int, mlp_ratio: float,
                 qkv_bias: bool, drop: float, drop_path: float, layer_scale: Optional[float],
                 attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention(dim, num_heads, kernel_size, dilation, qkv_bias, attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = drop_path
        self.gamma1 = self.gamma2 = None
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        a = self.attn(self.norm1(x))
        if self.gamma1 is not None:
            a = self.gamma1 * a
        x = x + _drop_path(a, self.drop_path, self.training)
        m = self.mlp(self.norm2(x))
        if self.gamma2 is not None:
            m = self.gamma2 * m
        return x + _drop_path(m, self.drop_path, self.training)


class _ConvTokenizer(nn.Module):
    """Overlapping tokenizer: two 3x3 stride-2 convolutions (/4), then LayerNorm; [B, H, W, C] out."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_chans, dim // 2, 3, 2, 1), nn.Conv2d(dim // 2, dim, 3, 2, 1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class _ConvDownsampler(nn.Module):
    """Overlapping 3x3 stride-2 convolution doubling the channels, then LayerNorm (channels-last)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NAT(nn.Module):
    """A NAT/DiNAT classifier on [B, in_chans, H, W] images. `depths`, `num_heads`: per level;
    level i has embed_dim * 2**i channels. `dilations`: per level, one dilation per layer (None:
    all 1, which is NAT). `layer_scale`: initial layer-scale value, or None for none."""

    def __init__(self, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                 mlp_ratio: float = 3.0, kernel_size: int = 7,
                 dilations: Optional[Sequence[Sequence[int]]] = None, in_chans: int = 3,
                 num_classes: int = 1000, qkv_bias: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.2, layer_scale: Optional[float] = None,
                 attention: str = "nattn"):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"num_heads = {list(num_heads)} is invalid: needs one entry per level "
                             f"(depths = {list(depths)})")
        if dilations is None:
            dilations = [[1] * d for d in depths]
        if [len(d) for d in dilations] != list(depths):
            raise ValueError(f"dilations = {[list(d) for d in dilations]} is invalid: needs one "
                             f"dilation per layer of each level (depths = {list(depths)})")
        self.tokenizer = _ConvTokenizer(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)  # stochastic depth grows linearly from 0 to drop_path_rate
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        at = 0
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            self.levels.append(nn.Sequential(*[
                NATLayer(dim, num_heads[i], kernel_size, dilations[i][j], mlp_ratio, qkv_bias, drop_rate,
                         rates[at + j], layer_scale, attention) for j in range(depth)]))
            at += depth
            self.downsamplers.append(_ConvDownsampler(dim) if i < len(depths) - 1 else nn.Identity())
        self.num_features = embed_dim * 2**(len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, C, H, W] images -> [B, num_features] pooled features."""
        x = self.pos_drop(self.tokenizer(x))
        for level, down in zip(self.levels, self.downsamplers):
            x = down(level(x))
        return self.norm(x).mean(dim=(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


# The published configurations (ImageNet-1K, 224x224; kernel 7).
_DINAT_DILATIONS_SHORT = [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]
_DINAT_DILATIONS = [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1, 1, 1, 1, 1]]


def nat_mini(**kw) -> NAT:
    return NAT(**{**dict(embed_dim=64, depths=[3, 4, 6, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3,
                         drop_path_rate=0.2), **kw})


def nat_tiny(**kw) -> NAT:
    return NAT(**{**dict(embed_dim=64, depths=[3, 4, 18, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3,
                         drop_path_rate=0.2), **kw})


def nat_small(**kw) -> NAT:
    return NAT(**{**dict(embed_dim=96, depths=[3, 4, 18, 5], num_heads=[3, 6, 12, 24], mlp_ratio=2,
                         drop_path_rate=0.3, layer_scale=1e-5), **kw})


def nat_base(**kw) -> NAT:
    return NAT(**{**dict(embed_dim=128, depths=[3, 4, 18, 5], num_heads=[4, 8, 16, 32], mlp_ratio=2,
                         drop_path_rate=0.5, layer_scale=1e-5), **kw})


def dinat_mini(**kw) -> NAT:
    return nat_mini(**{**dict(dilations=_DINAT_DILATIONS_SHORT), **kw})


def dinat_tiny(**kw) -> NAT:
    return nat_tiny(**{**dict(dilations=_DINAT_DILATIONS), **kw})


def dinat_small(**kw) -> NAT:
    return nat_small(**{**dict(dilations=_DINAT_DILATIONS), **kw})


def dinat_base(**kw) -> NAT:
    return nat_base(**{**dict(dilations=_DINAT_DILATIONS), **kw})
