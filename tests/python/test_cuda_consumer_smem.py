"""The sm80 rows for consumer GPUs (sm86/sm89: 101376 bytes of shared memory per block), on any
GPU through the test hook NATTN_SMEM_LIMIT (read once per process, so it must be set before the
library plans anything: `NATTN_SMEM_LIMIT=101376 pytest tests/python/test_cuda_consumer_smem.py`).
Every fused forward head dim (32-256) and backward head dim (32-128) is planned on the sm80
family with kernels within the limit, and matches the float64 reference. Skipped without the
hook (and without torch.cuda: the `cuda` marker)."""
import os

import pytest
import torch

import nattn
from na_reference import reference_na

LIMIT = int(os.environ.get("NATTN_SMEM_LIMIT", "0") or 0)
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(LIMIT == 0, reason="needs NATTN_SMEM_LIMIT=101376 (a test hook read once per process)"),
]

TOL = {torch.float16: (5e-3, 2e-2), torch.bfloat16: (3e-2, 6e-2)}  # (forward, gradients), as test_cuda.py
ROLES = {False: ("forward",), True: ("backward_dq", "backward_dkdv")}
CASES = [(False, d) for d in (32, 64, 128, 256)] + [(True, d) for d in (32, 64, 128)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backward,head_dim", CASES, ids=lambda x: str(x))
def test_sm80_fits_the_forced_limit(cuda_backend, dtype, backward, head_dim):
    assert LIMIT >= 101376, "below sm86/sm89's 101376 bytes the fused rows are not meant to fit"
    rows = {r.id: r for r in nattn.kernel_configs()}
    extents, ks = (20, 26), (5, 7)
    # max(D, Dv) pads to head_dim; Dv smaller exercises the zero-filled columns.
    d, dv = head_dim, max(8, head_dim // 2 + 8)
    q = torch.randn(1, *extents, 4, d, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(1, *extents, 2, d, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(1, *extents, 2, dv, device="cuda", dtype=dtype, requires_grad=True)
    with nattn.kernel_choice(family="sm80"):  # on Hopper the sm90 family plans some forwards first
        plan = nattn.explain(q, k, v, ks, backward=backward)
        assert plan.family == "sm80", str(plan)
        for role in ROLES[backward]:
            [kernel] = plan.kernels_of(role)
            row = rows[kernel["config_id"]]
            assert (row.family, row.role, row.torch_dtype, row.head_dim) == ("sm80", role, dtype, head_dim), str(plan)
            assert kernel["smem_bytes"] <= LIMIT, str(plan)
        out, lse = nattn.na2d(q, k, v, ks, return_lse=True)
        dout, dlse = torch.randn_like(out), torch.randn_like(lse)
        got = torch.autograd.grad((out, lse), (q, k, v), (dout, dlse)) if backward else ()
    ref, ref_lse = reference_na(q, k, v, ks)
    tol, gtol = TOL[dtype]
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-3, rtol=1e-3)
    if backward:
        want = torch.autograd.grad((ref, ref_lse), (q, k, v), (dout, dlse))
        for g, w, name in zip(got, want, "qkv"):
            torch.testing.assert_close(g, w, atol=gtol, rtol=gtol, msg=f"d{name}")
