"""Neighborhood attention inside diffusers' transformers, without retraining.

    from nattn.integrations.diffusers import apply_neighborhood_attention
    apply_neighborhood_attention(pipe.transformer, kernel_size=(18, 24, 24), stride=(16, 8, 8))

installs attention processors on a diffusers transformer (HunyuanVideoTransformer3DModel,
FluxTransformer2DModel, WanTransformer3DModel). In every patched layer:
- visual queries attend to a neighborhood of the model's token grid (nattn.na3d for video,
  nattn.na2d for images; kernel_size/stride/dilation as in SPEC.md) and, in the same softmax, to
  every text token (nattn's additional keys/values);
- text queries attend to every token, densely;
- padded text tokens (the model's text mask) are attended by no query.
Everything else (projections, QK norms, RoPE, output projections) is the diffusers processor's own
math, step for step; only the attention call differs. With the window equal to the whole grid the
patched model computes what the original computes.

The token grid is read from the transformer's inputs by a forward pre-hook (the latent video's
shape for HunyuanVideo/Wan, `img_ids` for Flux), so blocks must be run through the transformer.
Needs `pip install nattn[diffusers]` (diffusers >= 0.35).
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Iterable, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from diffusers.models.embeddings import apply_rotary_emb
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("nattn.integrations.diffusers needs diffusers: pip install 'nattn[diffusers]' "
                      f"(or pip install 'diffusers>=0.35'); importing it failed: {e}") from e

from .. import functional as nf
from .._checks import is_int, per_axis
from ..merge import merge_attentions

__all__ = ["apply_neighborhood_attention", "apply_dense_attention", "remove_neighborhood_attention",
           "joint_attention", "patched_layers"]

_NA = {2: nf.na2d, 3: nf.na3d}


# ----------------------------------------------------------------------------------------------
# The attention itself, on diffusers' layout ([B, N, heads, head_dim], which is nattn's heads-last).

class _Window(NamedTuple):
    kernel_size: Optional[Tuple[int, ...]]  # None: dense attention for every query (SDPA)
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    text_keys: str = "additional"


_TEXT_KEYS = ("additional", "merge")


@functools.lru_cache(maxsize=None)
def _nattn_attention_takes_other_key_count(device: str, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether nattn.attention serves fewer queries than keys well on this device/dtype (a tiny
    call, once per combination): it must accept Nq != Nk (nattn versions before cross-attention
    do not) and, on a GPU, plan a fused kernel family for it (the exact generic kernels are
    10-100x slower than torch's fused SDPA kernels)."""
    q = torch.randn(1, 1, 1, head_dim, device=device, dtype=dtype)
    k = torch.randn(1, 2, 1, head_dim, device=device, dtype=dtype)
    try:
        out = nf.attention(q, k, k)
        if tuple(out.shape) != (1, 1, 1, head_dim):
            return False
        if device == "cuda":
            from ..plans import explain
            return explain(q, k, k, dense=True).family != "generic"
    except (ValueError, TypeError, RuntimeError, NotImplementedError):
        return False
    return True


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """torch SDPA on heads-last [B, N, H, D] tensors (no mask: keeps the fused kernels)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _dense(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Text queries over all keys: nattn.attention where it serves Nq != Nk with fused kernels,
    else torch SDPA."""
    if q.shape[1] == k.shape[1] or _nattn_attention_takes_other_key_count(
            q.device.type, q.dtype, q.shape[-1]):
        return nf.attention(q, k, v)
    return _sdpa(q, k, v)


def _attention_lse(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    """(out, lse) of dense attention of many queries over few keys (the text), heads-last:
    nattn.attention where it serves Nq != Nk with fused kernels, else matmuls in chunks of
    queries (the scores of a chunk are [B, H, chunk, Nk] float32)."""
    if _nattn_attention_takes_other_key_count(q.device.type, q.dtype, q.shape[-1]):
        return nf.attention(q, k, v, return_lse=True)
    scale = q.shape[-1] ** -0.5
    kt, vt = k.transpose(1, 2).float(), v.transpose(1, 2).float()  # [B, H, Nk, D]
    outs, lses = [], []
    for qc in q.split(8192, dim=1):
        s = (qc.transpose(1, 2).float() @ kt.transpose(-1, -2)) * scale  # [B, H, chunk, Nk]
        lse = s.logsumexp(dim=-1)
        outs.append(((s - lse[..., None]).exp() @ vt).transpose(1, 2).to(q.dtype))
        lses.append(lse.transpose(1, 2))
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def _joint_one(q, k, v, vis: slice, txt: slice, grid, text_first: bool, keep: Optional[Tensor],
               window: _Window) -> Tensor:
    kt, vt = k[:, txt], v[:, txt]
    k_all, v_all = k, v  # every key (the order of keys does not change attention)
    if keep is not None:  # drop padded text keys: no query may attend to them
        kt, vt = kt[:, keep], vt[:, keep]
        k_all, v_all = torch.cat([k[:, vis], kt], dim=1), torch.cat([v[:, vis], vt], dim=1)
    if window.kernel_size is None:
        return _sdpa(q, k_all, v_all)
    rank = len(grid)
    qv, kv, vv = (t[:, vis].unflatten(1, grid) for t in (q, k, v))
    na = functools.partial(_NA[rank], qv, kv, vv, window.kernel_size, stride=window.stride,
                           dilation=window.dilation)
    if window.text_keys == "additional" or kt.shape[1] == 0:
        out_vis = na(additional_keys=kt, additional_values=vt).flatten(1, rank)
    else:
        # The same softmax in two parts: the neighborhood alone (kernels without additional-key
        # support serve it) and the text keys alone, combined through their logsumexps.
        out_na, lse_na = na(return_lse=True)
        out_t, lse_t = _attention_lse(q[:, vis], kt, vt)
        out_vis, _ = merge_attentions([out_na.flatten(1, rank), out_t], [lse_na.flatten(1, rank), lse_t])
    if txt.stop == txt.start:
        return out_vis
    out_txt = _dense(q[:, txt], k_all, v_all)
    return torch.cat([out_txt, out_vis] if text_first else [out_vis, out_txt], dim=1)


def joint_attention(query: Tensor, key: Tensor, value: Tensor, grid: Sequence[int],
                    text_length: int = 0, text_first: bool = False,
                    text_mask: Optional[Tensor] = None, kernel_size=None, stride=1,
                    dilation=1, text_keys: str = "additional") -> Tensor:
    """Attention over [B, N, H, D] tensors that hold prod(grid) visual tokens (row-major over
    `grid`) and `text_length` text tokens, the text before the visual tokens if `text_first`,
    else after. Visual queries attend to their neighborhood of the grid (`kernel_size`, `stride`,
    `dilation` as in nattn.na2d/na3d) plus every text token, in one softmax; text queries attend to
    every token. `text_mask` [B, text_length] bool: False marks a padded text token, which no
    query attends to. `kernel_size=None`: every query attends to every (unpadded) token, through
    torch's scaled_dot_product_attention. `text_keys`: how visual queries get the text keys:
    "additional" (nattn's additional keys, one kernel) or "merge" (the neighborhood and the text
    attended apart, then merged by logsumexp).
    Returns [B, N, H, Dv] in the model's token order."""
    grid = tuple(int(g) for g in grid)
    if len(grid) not in _NA:
        raise ValueError(f"grid = {list(grid)} is invalid: must have 2 or 3 axes")
    if query.dim() != 4:
        raise ValueError(f"query.shape = {list(query.shape)} is invalid: expected [batch, tokens, "
                         "heads, head_dim]")
    B, N = query.shape[0], query.shape[1]
    nv = math.prod(grid)
    if not is_int(text_length) or text_length < 0 or nv + text_length != N:
        raise ValueError(f"text_length = {text_length!r} is invalid: prod(grid) = {nv} visual plus "
                         f"text_length text tokens must make query.shape[1] = {N}")
    if text_keys not in _TEXT_KEYS:
        raise ValueError(f"text_keys = {text_keys!r} is invalid: must be one of {_TEXT_KEYS}")
    if kernel_size is None:
        window = _Window(None, (), ())
    else:
        window = _Window(per_axis("kernel_size", kernel_size, len(grid)),
                         per_axis("stride", stride, len(grid)),
                         per_axis("dilation", dilation, len(grid)), text_keys)
    vis = slice(text_length, N) if text_first else slice(0, nv)
    txt = slice(0, text_length) if text_first else slice(nv, N)
    if text_mask is not None:
        if (not isinstance(text_mask, Tensor) or text_mask.dtype != torch.bool
                or tuple(text_mask.shape) != (B, text_length)):
            what = (f"a {text_mask.dtype} tensor of shape {list(text_mask.shape)}"
                    if isinstance(text_mask, Tensor) else type(text_mask).__name__)
            raise ValueError(f"text_mask = {what} is invalid: must be a torch.bool tensor of shape "
                             f"[batch, text_length] = [{B}, {text_length}]")
        if bool(text_mask.all()):
            text_mask = None
    if text_mask is None:
        return _joint_one(query, key, value, vis, txt, grid, text_first, None, window)
    # Samples keep different numbers of text keys: one call each (text masks are per prompt).
    return torch.cat([
        _joint_one(query[b:b + 1], key[b:b + 1], value[b:b + 1], vis, txt, grid, text_first,
                   text_mask[b].to(query.device), window) for b in range(B)], dim=0)


# ----------------------------------------------------------------------------------------------
# Processors: diffusers' own processor math, with the attention call swapped.

def _text_mask_from(attention_mask: Optional[Tensor], B: int, N: int, vis: slice,
                    txt: slice) -> Optional[Tensor]:
    """The text-key padding mask [B, Nt] from the attention_mask a diffusers block passes (a
    boolean key mask, [B, N] or [B, 1, 1, N]); visual keys cannot be masked."""
    if attention_mask is None:
        return None
    if attention_mask.dtype != torch.bool or attention_mask.numel() != B * N or (
            attention_mask.dim() >= 2 and attention_mask.shape[-1] != N):
        raise ValueError(f"attention_mask = a {attention_mask.dtype} tensor of shape "
                         f"{list(attention_mask.shape)} is invalid: neighborhood attention takes a "
                         f"boolean key padding mask of shape [{B}, {N}] or [{B}, 1, 1, {N}]")
    m = attention_mask.reshape(B, N)
    if not bool(m[:, vis].all()):
        raise ValueError("attention_mask is invalid: it masks visual tokens; neighborhood attention "
                         "only drops padded text tokens")
    return m[:, txt]


class _Processor:
    """Shared by the processors: the layer's window and the transformer's recorded grid."""

    def __init__(self, state: "_State", window: _Window):
        self.state = state
        self.window = window

    def attend(self, query, key, value, text_length: int, text_first: bool, attention_mask):
        grid = self.state.grid
        if grid is None:
            raise RuntimeError("nattn: the token grid is unknown: run the blocks through the "
                               "transformer's forward (its pre-hook records the grid)")
        B, N = query.shape[0], query.shape[1]
        nv = math.prod(grid)
        vis = slice(text_length, N) if text_first else slice(0, nv)
        txt = slice(0, text_length) if text_first else slice(nv, N)
        # Every block of a forward gets the same mask tensor: read it (a device sync) once.
        cached = self.state.mask_cache
        if cached is not None and cached[0] is attention_mask and cached[1] == (B, N, vis, txt):
            mask = cached[2]
        else:
            mask = _text_mask_from(attention_mask, B, N, vis, txt)
            if mask is not None and bool(mask.all()):
                mask = None  # nothing padded: one call for the whole batch
            self.state.mask_cache = (attention_mask, (B, N, vis, txt), mask)
        w = self.window
        return joint_attention(query, key, value, grid, text_length, text_first, mask,
                               w.kernel_size, w.stride, w.dilation, w.text_keys)

    def __repr__(self) -> str:
        w = self.window
        what = ("dense" if w.kernel_size is None else
                f"kernel_size={w.kernel_size}, stride={w.stride}, dilation={w.dilation}, "
                f"text_keys={w.text_keys!r}")
        return f"{type(self).__name__}({what})"


class HunyuanVideoNAProcessor(_Processor):
    """diffusers' HunyuanVideoAttnProcessor2_0 with the attention call replaced (video tokens
    first, text after, in dual- and single-stream blocks)."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, image_rotary_emb=None) -> Tensor:
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if attn.add_q_proj is None and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if image_rotary_emb is not None:  # RoPE on the video tokens only
            if attn.add_q_proj is None and encoder_hidden_states is not None:
                query = torch.cat([apply_rotary_emb(query[:, :-n_text], image_rotary_emb, sequence_dim=1),
                                   query[:, -n_text:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-n_text], image_rotary_emb, sequence_dim=1),
                                 key[:, -n_text:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        hidden_states = self.attend(query, key, value, n_text, False, attention_mask)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (hidden_states[:, :-n_text], hidden_states[:, -n_text:])
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _flux_projections(attn, hidden_states, encoder_hidden_states):
    # diffusers' transformer_flux._get_qkv_projections (fused or separate projections).
    eq = ek = ev = None
    if attn.fused_projections:
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        if encoder_hidden_states is not None and hasattr(attn, "to_added_qkv"):
            eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
    else:
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            eq = attn.add_q_proj(encoder_hidden_states)
            ek = attn.add_k_proj(encoder_hidden_states)
            ev = attn.add_v_proj(encoder_hidden_states)
    return q, k, v, eq, ek, ev


class FluxNAProcessor(_Processor):
    """diffusers' FluxAttnProcessor with the attention call replaced (text tokens first, image
    after; single-stream blocks pass both in hidden_states)."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, image_rotary_emb=None):
        query, key, value, eq, ek, ev = _flux_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))

        if attn.added_kv_proj_dim is not None and encoder_hidden_states is not None:
            eq = attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim)))
            ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
            ev = ev.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([eq, query], dim=1)
            key = torch.cat([ek, key], dim=1)
            value = torch.cat([ev, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        grid = self.state.grid
        n_text = query.shape[1] - (math.prod(grid) if grid is not None else 0)
        hidden_states = self.attend(query, key, value, n_text, True, attention_mask)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


def _wan_rope(x: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    # diffusers' WanAttnProcessor's apply_rotary_emb (interleaved pairs).
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanNAProcessor(_Processor):
    """diffusers' WanAttnProcessor for the self-attention layers (attn1: video tokens only; the
    text is attended by the separate cross-attention attn2, left as it is)."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, rotary_emb=None) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("WanNAProcessor serves the self-attention layers (attn1) only: "
                             "encoder_hidden_states and attention_mask must be None")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rope(query, *rotary_emb)
            key = _wan_rope(key, *rotary_emb)
        hidden_states = self.attend(query, key, value, 0, False, None)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


# ----------------------------------------------------------------------------------------------
# Which layers, which grid, per model class.

def _video_grid(patch: Callable[[nn.Module], Tuple[int, int, int]]):
    def grid(model, args) -> Tuple[int, ...]:
        x = args["hidden_states"]
        pt, ph, pw = patch(model)
        return (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
    return grid


def _flux_grid(model, args) -> Tuple[int, ...]:
    ids = args.get("img_ids")
    if ids is None:
        raise ValueError("img_ids = None is invalid: nattn reads the image token grid from img_ids")
    if ids.dim() == 3:  # diffusers still accepts (and warns about) a batch dimension
        ids = ids[0]
    h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    rows = torch.arange(h, device=ids.device).repeat_interleave(w)
    cols = torch.arange(w, device=ids.device).repeat(h)
    expected = torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(ids.dtype)
    if tuple(ids.shape) != (h * w, 3) or not torch.equal(ids, expected):
        raise ValueError(f"img_ids of shape {list(ids.shape)} is invalid: nattn needs the row-major "
                         f"grid FluxPipeline makes (ids[i] = (0, i // W, i % W)); got a grid it "
                         f"cannot read as {h}x{w}")
    return (h, w)


class _Spec(NamedTuple):
    rank: int
    layers: Callable[[nn.Module], list]  # the attention modules, in execution order
    original: str  # class name of diffusers' processor that ours replaces
    processor: type
    grid: Callable


_SPECS = {
    "HunyuanVideoTransformer3DModel": _Spec(
        3, lambda m: [b.attn for b in m.transformer_blocks] + [b.attn for b in m.single_transformer_blocks],
        "HunyuanVideoAttnProcessor2_0", HunyuanVideoNAProcessor,
        _video_grid(lambda m: (m.config.patch_size_t, m.config.patch_size, m.config.patch_size))),
    "FluxTransformer2DModel": _Spec(
        2, lambda m: [b.attn for b in m.transformer_blocks] + [b.attn for b in m.single_transformer_blocks],
        "FluxAttnProcessor", FluxNAProcessor, _flux_grid),
    "WanTransformer3DModel": _Spec(
        3, lambda m: [b.attn1 for b in m.blocks], "WanAttnProcessor", WanNAProcessor,
        _video_grid(lambda m: tuple(m.config.patch_size))),
}


class _State:
    """Per transformer: the grid of the current forward, the original processors, the hook."""

    def __init__(self, model: nn.Module, spec: _Spec):
        self.spec = spec
        self.grid: Optional[Tuple[int, ...]] = None
        self.mask_cache = None  # (attention_mask, layout, text mask) of the current forward
        self.originals: dict = {}
        self.signature = inspect.signature(model.forward)
        self.hook = model.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, model, args, kwargs):
        self.grid = self.spec.grid(model, self.signature.bind(*args, **kwargs).arguments)
        self.mask_cache = None


def _spec_of(transformer) -> _Spec:
    spec = _SPECS.get(type(transformer).__name__)
    if spec is None:
        raise TypeError(f"transformer = {type(transformer).__name__} object is invalid: supported "
                        f"are diffusers' {', '.join(sorted(_SPECS))}")
    return spec


def _layer_indices(layers, count: int) -> list:
    if layers is None:
        return list(range(count))
    if is_int(layers) or not isinstance(layers, Iterable):
        raise TypeError(f"layers = {layers!r} is invalid: must be None or an iterable of layer "
                        f"indices (a list, range, ...)")
    out = []
    for i in layers:
        if not is_int(i):
            raise TypeError(f"layers contains {i!r}, which is invalid: layer indices are ints")
        if not -count <= i < count:
            raise ValueError(f"layers contains {i}, which is invalid: this transformer has {count} "
                             f"attention layers (indices -{count} .. {count - 1})")
        out.append(i % count)
    return sorted(set(out))


def _install(transformer, layers, window: _Window) -> nn.Module:
    spec = _spec_of(transformer)
    modules = spec.layers(transformer)
    indices = _layer_indices(layers, len(modules))
    state = getattr(transformer, "_nattn_state", None)
    for i in indices:  # check every layer before changing any
        proc = modules[i].processor
        if type(proc).__name__ != spec.original and not isinstance(proc, _Processor):
            raise TypeError(f"attention layer {i} has processor {type(proc).__name__}, which "
                            f"nattn cannot replace: it replaces diffusers' {spec.original}")
    if state is None:
        state = _State(transformer, spec)
        transformer._nattn_state = state
    for i in indices:
        if i not in state.originals:
            state.originals[i] = modules[i].processor
        modules[i].set_processor(spec.processor(state, window))
    return transformer


def apply_neighborhood_attention(transformer: nn.Module, kernel_size, stride=1, dilation=1,
                                 layers: Optional[Iterable[int]] = None,
                                 text_keys: str = "additional") -> nn.Module:
    """Installs neighborhood attention on `transformer`'s joint attention layers, in place, and
    returns it. `kernel_size`, `stride`, `dilation`: an int or one per grid axis ((T, H, W) for
    video, (H, W) for Flux), as in nattn.na3d/na2d; each must fit the token grid of the inputs.
    `layers`: indices of the layers to patch, counted over the transformer's attention layers in
    execution order (HunyuanVideo/Flux: the dual-stream blocks, then the single-stream blocks;
    Wan: the blocks' self-attention); None patches all. Calling again with other `layers` gives
    those layers their own window; layers never patched keep diffusers' processor. `text_keys`:
    "additional" (default) or "merge", as in joint_attention: the same result, other kernels."""
    spec = _spec_of(transformer)
    ks = per_axis("kernel_size", kernel_size, spec.rank)
    st = per_axis("stride", stride, spec.rank)
    dil = per_axis("dilation", dilation, spec.rank)
    for a in range(spec.rank):  # the rules that need no grid; the rest are checked per call
        if ks[a] < 2:
            raise ValueError(f"kernel_size[{a}] = {ks[a]} is invalid: must be >= 2")
        if not 1 <= st[a] <= ks[a]:
            raise ValueError(f"stride[{a}] = {st[a]} is invalid: must be in [1, kernel_size[{a}] = {ks[a]}]")
        if dil[a] < 1:
            raise ValueError(f"dilation[{a}] = {dil[a]} is invalid: must be >= 1")
    if text_keys not in _TEXT_KEYS:
        raise ValueError(f"text_keys = {text_keys!r} is invalid: must be one of {_TEXT_KEYS}")
    return _install(transformer, layers, _Window(ks, st, dil, text_keys))


def apply_dense_attention(transformer: nn.Module, layers: Optional[Iterable[int]] = None) -> nn.Module:
    """The same processors with dense attention for every query, through torch's
    scaled_dot_product_attention without a mask (padded text keys are dropped per sample
    instead), so the fused SDPA kernels (cuDNN, flash) serve it: the baseline the benchmarks
    compare against."""
    return _install(transformer, layers, _Window(None, (), ()))


def remove_neighborhood_attention(transformer: nn.Module) -> nn.Module:
    """Restores the processors that were there before nattn's and removes its hook."""
    state = getattr(transformer, "_nattn_state", None)
    if state is None:
        return transformer
    modules = state.spec.layers(transformer)
    for i, proc in state.originals.items():
        modules[i].set_processor(proc)
    state.hook.remove()
    del transformer._nattn_state
    return transformer


def patched_layers(transformer: nn.Module) -> dict:
    """{layer index: processor} for the layers nattn patched (empty if none)."""
    state = getattr(transformer, "_nattn_state", None)
    if state is None:
        return {}
    modules = state.spec.layers(transformer)
    return {i: modules[i].processor for i in sorted(state.originals)}
