"""nattn.distributed on gloo with 2-4 CPU processes and the reference backend: every rank's
output, lse and gradients against the single-process call on the whole grid (heads mode
bit-identical; halo and all-gather modes within float64 rounding), over random problems (ranks
1-3, uneven slabs, stride, dilation, causal, multi-hop halos, additional keys, grouped heads)."""
import os
import random
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nattn
import nattn.distributed as nd
from nattn.distributed import key_range


def random_problem(rng, P):
    rank = rng.randint(1, 3)
    a = rng.randrange(rank)
    X, ks, st, dil, cz = [], [], [], [], []
    for b in range(rank):
        L = rng.randint(P + 2, 14) if b == a else rng.randint(2, 6 if rank == 3 else 9)
        d = rng.choice([1, 1, 2]) if L >= 4 else 1
        k = rng.randint(2, L // d)
        X.append(L), ks.append(k), st.append(rng.randint(1, k)), dil.append(d)
        cz.append(rng.random() < 0.3)
    cuts = sorted(rng.sample(range(1, X[a]), P - 1))  # uneven slabs, each >= 1
    sizes = [e - s for s, e in zip([0] + cuts, cuts + [X[a]])]
    hkv = P * rng.choice([1, 2]) if rng.random() < 0.7 else 1
    hq = hkv * rng.choice([1, 2])
    if hq % P:
        hq = P * hkv
    na = rng.choice([0, 0, 3])
    return dict(X=X, a=a, ks=ks, st=st, dil=dil, cz=cz, sizes=sizes, hq=hq, hkv=hkv, na=na)


def check_rank(r, P, seed, trials, modes):
    for t in range(trials):
        rng = random.Random(seed + t)
        c = random_problem(rng, P)
        g = torch.Generator().manual_seed(seed + t)
        B, D = 2, 4

        def rnd(*shape, g=g):
            return torch.randn(*shape, generator=g, dtype=torch.float64)

        q, k, v = rnd(B, *c["X"], c["hq"], D), rnd(B, *c["X"], c["hkv"], D), \
            rnd(B, *c["X"], c["hkv"], D)
        ak = rnd(B, c["na"], c["hkv"], D) if c["na"] else None
        av = rnd(B, c["na"], c["hkv"], D) if c["na"] else None
        dout = rnd(B, *c["X"], c["hq"], D)
        dlse = rnd(B, *c["X"], c["hq"]).float()
        inputs = [x.clone().requires_grad_() for x in (q, k, v) + ((ak, av) if ak is not None
                                                                    else ())]
        fn = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}[len(c["X"])]
        out, lse = fn(*inputs[:3], c["ks"], c["st"], c["dil"], c["cz"],
                      additional_keys=inputs[3] if ak is not None else None,
                      additional_values=inputs[4] if ak is not None else None,
                      return_lse=True, backend="reference")
        want_grads = torch.autograd.grad((out, lse), inputs, (dout, dlse))
        a, dim = c["a"], 1 + c["a"]
        lo = sum(c["sizes"][:r])
        n = c["sizes"][r]

        def cut(x, dim=dim, lo=lo, n=n):
            return x.narrow(dim, lo, n)
        usable = [m for m in modes if m != "heads" or (c["hq"] % P == 0 and c["hkv"] % P == 0)]
        for mode in usable:
            local = [cut(x).clone().requires_grad_() for x in (q, k, v)]
            extra = [x.clone().requires_grad_() for x in (ak, av)] if ak is not None else []
            got, got_lse = nd.neighborhood_attention(
                *local, c["ks"], c["st"], c["dil"], c["cz"],
                additional_keys=extra[0] if extra else None,
                additional_values=extra[1] if extra else None, return_lse=True,
                shard_axis=a, mode=mode, backend="reference")
            grads = torch.autograd.grad((got, got_lse), local + extra, (cut(dout), cut(dlse)))
            where = f"rank {r}/{P} trial {t} mode {mode} problem {c}"
            if mode == "heads":
                assert torch.equal(got, cut(out)), where
                assert torch.equal(got_lse, cut(lse)), where
            else:
                torch.testing.assert_close(got, cut(out), atol=1e-12, rtol=1e-12, msg=where)
                torch.testing.assert_close(got_lse, cut(lse), atol=1e-6, rtol=1e-6, msg=where)
            for i, (gg, w) in enumerate(zip(grads, want_grads)):
                w = cut(w) if i < 3 else w
                torch.testing.assert_close(gg, w, atol=1e-9, rtol=1e-9,
                                           msg=f"{where}: gradient of input {i}")


def _worker(r, P, path, seed, trials, modes):
    os.environ.setdefault("NATTN_POISON_OUTPUTS", "1")
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=r, world_size=P)
    try:
        check_rank(r, P, seed, trials, modes)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("P,trials", [(2, 8), (4, 6)])
def test_distributed_modes_equal_one_process(P, trials):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(P, os.path.join(tmp, "store"), torch.initial_seed() % 2**31,
                                trials, ("heads", "halo", "allgather")), nprocs=P, join=True)


def test_key_range_matches_the_windows():
    # key_range is the tightest index range holding every window of a query range.
    from na_reference import axis_keys
    rng = random.Random(torch.initial_seed())
    for _ in range(300):
        L = rng.randint(2, 30)
        d = rng.choice([1, 2, 3]) if L >= 6 else 1
        k = rng.randint(2, L // d)
        s = rng.randint(1, k)
        causal = rng.random() < 0.3
        lo = rng.randrange(L)
        hi = rng.randint(lo + 1, L)
        keys = [j for i in range(lo, hi) for j in axis_keys(i, L, k, s, d, causal)]
        assert key_range(lo, hi, L, k, s, d, causal) == (min(keys), max(keys) + 1), \
            (L, k, s, d, causal, lo, hi)
