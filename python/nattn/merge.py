"""merge_attentions: one softmax from partial attentions over disjoint key sets.

The merge itself is the C library's (nattn_merge_on_stream, on every device), registered as the
custom op `nattn::merge` with a fake implementation (which runs the library's shape check) and
an autograd formula. With lse = logsumexp_i(lse_i) and w_i = exp(lse_i - lse):

    out = sum_i w_i * out_i
    d out_i = w_i * d out
    d lse_i = w_i * (sum over Dv of d out * (out_i - out)) + w_i * d lse

so a partial produced by na*d(..., return_lse=True) gets the right gradient through its lse.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from . import _lib
from ._checks import check_tensor


def _shapes(outs: List[Tensor]):
    # The merged shapes are the first partial's; the library checks every other against them.
    if not outs:
        return [], []
    shape = list(outs[0].shape)
    return shape, shape[:-1]


def _check(outs: List[Tensor], lses: List[Tensor], data: bool):
    out_shape, lse_shape = _shapes(outs)
    dtype = outs[0].dtype if outs else torch.float32
    device = outs[0].device if outs else torch.device("cpu")
    outs_arr, lses_arr = _lib.merge_arrays(outs, lses, data)
    out = _lib.planned(out_shape, dtype, device)
    lse = _lib.planned(lse_shape, torch.float32, device)
    _lib.check_merge(outs_arr, lses_arr, len(outs), out, lse, "nattn.merge_attentions")
    return outs_arr, lses_arr, out, lse


@torch.library.custom_op("nattn::merge", mutates_args=())
def merge_op(outs: List[Tensor], lses: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """(out [..., H, Dv] contiguous in the partials' dtype, lse [..., H] float32)."""
    outs_arr, lses_arr, out_view, lse_view = _check(outs, lses, data=True)
    out_shape, lse_shape = _shapes(outs)
    out = outs[0].new_empty(out_shape)
    lse = outs[0].new_empty(lse_shape, dtype=torch.float32)
    _lib.attach(out_view, out)
    _lib.attach(lse_view, lse)
    _lib.merge(outs_arr, lses_arr, len(outs), out_view, lse_view,
               _lib.options(_lib.BACKEND_AUTO, out.device), "nattn.merge_attentions")
    return out, lse


@merge_op.register_fake
def _(outs, lses):
    try:
        _check(outs, lses, data=False)
    except _lib.Symbolic:
        pass  # a size without a value yet: the real op checks it
    out_shape, lse_shape = _shapes(outs)
    return outs[0].new_empty(out_shape), outs[0].new_empty(lse_shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    outs, lses = inputs
    out, lse = output
    ctx.set_materialize_grads(False)  # an output that fed nothing: None, and its term is skipped
    ctx.n = len(outs)
    ctx.save_for_backward(*outs, *lses, out, lse)


def _backward(ctx, dout, dlse):
    saved = ctx.saved_tensors
    outs, lses, (out, lse) = saved[:ctx.n], saved[ctx.n:2 * ctx.n], saved[2 * ctx.n:]
    acc = torch.promote_types(out.dtype, torch.float32)  # float32 at least, float64 stays
    lse_acc = lse.to(acc)
    finite = torch.isfinite(lse_acc)  # rows where every partial is empty: lse = -inf, w_i = 0
    shift = torch.where(finite, lse_acc, torch.zeros_like(lse_acc))
    out_acc = out.to(acc)
    dout_acc = dout.to(acc) if dout is not None else None
    d_outs, d_lses = [], []
    for o, lse_i in zip(outs, lses):
        w = torch.where(finite, torch.exp(lse_i.to(acc) - shift), torch.zeros_like(shift))
        g = torch.zeros_like(w)
        if dout_acc is not None:
            d_outs.append((w.unsqueeze(-1) * dout_acc).to(o.dtype))
            g = w * (dout_acc * (o.to(acc) - out_acc)).sum(-1)
        else:
            d_outs.append(torch.zeros_like(o))
        if dlse is not None:
            g = g + w * dlse.to(acc)
        d_lses.append(g.to(lse_i.dtype))
    return d_outs, d_lses


merge_op.register_autograd(_backward, setup_context=_setup_context)


def merge_attentions(outputs: Sequence[Tensor], lses: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Merges partials out_i [..., H, Dv] with lse_i [..., H] (float32) into (out, lse).

    Partials whose lse is -inf contribute nothing; where every lse is -inf, out is 0 and lse
    is -inf. out has the partials' dtype; lse is float32.
    """
    for name, seq in (("outputs", outputs), ("lses", lses)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} = {type(seq).__name__} object is invalid: must be a list or "
                            "tuple of tensors")
    # The C ABI takes one count for both lists.
    if len(lses) != len(outputs):
        raise ValueError(f"lses = {len(lses)} tensors is invalid: needs one per output "
                         f"({len(outputs)})")
    for i, (o, lse_i) in enumerate(zip(outputs, lses)):
        check_tensor(f"outputs[{i}]", o)
        check_tensor(f"lses[{i}]", lse_i)
    return merge_op(list(outputs), list(lses))
