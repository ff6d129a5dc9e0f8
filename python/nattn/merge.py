"""merge_attentions: one softmax from partial attentions over disjoint key sets.

Plain differentiable torch ops (no custom op needed): with lse = logsumexp_i(lse_i), the
merged output is sum_i exp(lse_i - lse) * out_i. Gradients flow into every out_i and lse_i,
so a partial produced by na*d(..., return_lse=True) gets the right gradient through its lse.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from ._checks import check_same, check_tensor, shape_str


def merge_attentions(outputs: Sequence[Tensor], lses: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Merges partials out_i [..., H, Dv] with lse_i [..., H] (float32) into (out, lse).

    Partials whose lse is -inf contribute nothing; where every lse is -inf, out is 0 and lse
    is -inf. out has the partials' dtype; lse is float32.
    """
    _check_partials(outputs, lses)
    lse_all = torch.stack(list(lses))  # [n, ..., H]
    # A finite shift keeps exp() in range and makes all -inf rows come out as 0 / -inf, not NaN.
    shift = lse_all.amax(dim=0)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    weights = torch.exp(lse_all - shift)  # [n, ..., H]
    total = weights.sum(dim=0)
    empty = total == 0
    safe_total = torch.where(empty, torch.ones_like(total), total)
    lse = torch.where(empty, torch.full_like(total, float("-inf")), shift + torch.log(safe_total))
    # Accumulate in float32 at least (float64 stays float64), return the partials' dtype.
    acc = torch.promote_types(outputs[0].dtype, torch.float32)
    weights = (weights / safe_total).unsqueeze(-1).to(acc)  # [n, ..., H, 1]
    out = sum(w * o.to(acc) for w, o in zip(weights.unbind(0), outputs))
    return out.to(outputs[0].dtype), lse


def _check_partials(outputs, lses) -> None:
    for name, seq in (("outputs", outputs), ("lses", lses)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} = {type(seq).__name__} object is invalid: must be a list or "
                            "tuple of tensors")
    if len(outputs) == 0:
        raise ValueError("outputs = [] is invalid: needs at least one partial")
    if len(lses) != len(outputs):
        raise ValueError(f"lses has {len(lses)} tensors, which is invalid: needs one per output "
                         f"({len(outputs)})")
    ref = outputs[0]
    for i, (o, l) in enumerate(zip(outputs, lses)):
        check_tensor(f"outputs[{i}]", o)
        check_tensor(f"lses[{i}]", l)
        if o.dim() < 2:
            raise ValueError(f"outputs[{i}].shape = {shape_str(o)} is invalid: must be [..., heads, "
                             "head_dim_v]")
        if o.shape != ref.shape:
            raise ValueError(f"outputs[{i}].shape = {shape_str(o)} is invalid: must match "
                             f"outputs[0].shape = {shape_str(ref)}")
        check_same(f"outputs[{i}]", o, "outputs[0]", ref)
        if l.dtype != torch.float32:
            raise ValueError(f"lses[{i}].dtype = {l.dtype} is invalid: must be torch.float32")
        if l.device != ref.device:
            raise ValueError(f"lses[{i}].device = {l.device} is invalid: must match "
                             f"outputs[0].device ({ref.device})")
        if l.shape != ref.shape[:-1]:
            raise ValueError(f"lses[{i}].shape = {shape_str(l)} is invalid: must be outputs[0].shape "
                             f"without its last dim, {list(ref.shape[:-1])}")
