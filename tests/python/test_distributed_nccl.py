"""nattn.distributed on NCCL, one process per GPU (issue 12 item 4, the GPU half): every rank's
output, lse and gradients against the single-GPU call on the whole grid, computed on rank 0's
GPU and broadcast: heads mode torch.equal (the same fused kernels on H/P heads), halo mode (and
halo-sum, allgather) within a bf16/fp16 tolerance, halo mode run twice bitwise equal. Random
problems from the gloo test's generator (ranks 1-3, one and two shard axes, uneven shards,
causal, stride, dilation, multi-hop halos, additional keys, grouped heads), half of them scaled
up so the fused kernels walk several tiles, plus two fixed head dim 128 problems; bf16 and fp16,
forward and backward.

Runs only under torchrun with one CUDA device per process; skips otherwise (CI, one GPU):
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
    torchrun --standalone --nproc-per-node 4 -m pytest -q -s -p no:cacheprovider \\
    tests/python/test_distributed_nccl.py
(scripts/gpu_distributed.sh runs it at 2 and 4 GPUs). NATTN_NCCL_TRIALS sets the number of
random problems (default 12). The placed calls of halo/allgather mode run the fused kernels
(the sm90 or sm80 kernels; the generic kernels before 2026-11-28, hence the modest sizes).
Every check runs under torch.use_deterministic_algorithms: bitwise equality needs the
deterministic backward (sm90's default fast backward adds dQ partial sums with atomics).
"""
import datetime
import os
import random
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist
from test_distributed import _coords, random_problem

import nattn
import nattn.distributed as nd

# NVLink multicast stays off on these hosts, whatever the launcher's environment says
# (../shared/DISTRIBUTED.md): set before NCCL or symmetric memory initializes.
os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
                  NVSHMEM_DISABLE_NVLS="1")


def _launch_problem():
    """Why this module cannot run here, or None under torchrun with a GPU per process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if world < 2:
        return ("needs torchrun with >= 2 processes, one per GPU (WORLD_SIZE = "
                f"{os.environ.get('WORLD_SIZE', 'unset')}): torchrun --standalone "
                "--nproc-per-node P -m pytest tests/python/test_distributed_nccl.py")
    if not torch.cuda.is_available():
        return "torch.cuda is not available"
    if torch.cuda.device_count() < local:
        return (f"needs a CUDA device per local process: {local} processes, "
                f"{torch.cuda.device_count()} devices")
    if not dist.is_nccl_available():
        return "this torch has no NCCL backend"
    return None


_WHY_NOT = _launch_problem()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))]

# (atol, rtol) against the single-GPU call, atol relative to the reference tensor's largest
# magnitude (at least 1): the fused kernels round P (and dS) to the input dtype before their
# MMAs in both runs, but the placed calls see other boxes (another accumulation order), and each
# output is rounded once; the backward adds the forward's differences through lse/Delta.
TOL = {torch.float16: dict(out=(5e-3, 1e-2), lse=(1e-3, 1e-3), grad=(2e-2, 2e-2)),
       torch.bfloat16: dict(out=(3e-2, 3e-2), lse=(1e-3, 1e-3), grad=(6e-2, 6e-2))}
MODES = ("heads", "halo", "halo-sum", "allgather")
NAMES = ("out", "lse", "dq", "dk", "dv", "d_additional_k", "d_additional_v")


@pytest.fixture(scope="module")
def nccl():
    """(rank, world size, device): this process's NCCL process group, one GPU per rank."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    device = torch.device("cuda", local)
    # A rank stuck in a collective (another rank failed) aborts after this instead of holding
    # the machine; torchrun then stops the rest.
    dist.init_process_group("nccl", device_id=device, timeout=datetime.timedelta(seconds=120))
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


def _shared_seed(device) -> int:
    """Rank 0's test seed (conftest seeds each process from its own NATTN_TEST_SEED)."""
    t = torch.tensor([torch.initial_seed() % 2**31], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return int(t.item())


def scaled(c, m):
    """Problem c with every extent, window and shard size times m (valid again: k <= L // d
    stays true, shard sizes stay >= 1); strides unchanged."""
    c = dict(c)
    c["X"] = [x * m for x in c["X"]]
    c["ks"] = [k * m for k in c["ks"]]
    c["sizes"] = [[s * m for s in sz] for sz in c["sizes"]]
    return c


SCALE = {1: 8, 2: 3, 3: 2}  # per spatial rank: up to 128, 48 x 27 (48 x 48) and 24 x 10 x 10


def fixed_problems(P):
    """Head dim 128 problems at a few thousand tokens: 2-D uneven shards on one axis; 3-D on
    two axes over a 2 x 2 grid at P = 4 (else one axis), dilation, stride, causal, grouped
    heads, additional keys."""
    rows = [max(1, 64 // P - 3)] * (P - 1)
    two_d = dict(X=[64, 48], axes=[0], grid=[P], sizes=[rows + [64 - sum(rows)]], ks=[13, 9],
                 st=[1, 2], dil=[2, 1], cz=[False, False], hq=2 * P, hkv=P, na=0)
    if P == 4:
        axes, grid, sizes = [1, 2], [2, 2], [[7, 9], [10, 14]]
    else:
        axes, grid = [2], [P]
        sizes = [[24 // P] * (P - 1) + [24 - (24 // P) * (P - 1)]]
    three_d = dict(X=[6, 16, 24], axes=axes, grid=grid, sizes=sizes, ks=[3, 7, 9],
                   st=[1, 1, 3], dil=[1, 2, 1], cz=[True, False, False], hq=2 * P, hkv=2 * P,
                   na=3)
    return [(two_d, 128, torch.bfloat16), (three_d, 128, torch.float16)]


def problems(P, seed, trials):
    """(problem, head dim, dtype, name) of this run: the random ones, then the fixed ones."""
    out = []
    for t in range(trials):
        rng = random.Random(seed + t)
        c = random_problem(rng, P, force_two_axes=t == 1 and P == 4, force_multi_hop=t < 2)
        if t % 2 == 0:
            c = scaled(c, SCALE[len(c["X"])])
        dtype = (torch.bfloat16, torch.float16)[t % 2]
        out.append((c, rng.choice([32, 64]), dtype, f"random {t}"))
    return out + [(c, d, dt, f"fixed {i}") for i, (c, d, dt) in enumerate(fixed_problems(P))]


def _kernels(plan):
    return [(k["role"], k["config_id"], k.get("own_tile"), k.get("walk_tile"))
            for k in plan.kernels]


def _heads_plan_note(q, k, v, ak, av, window, P, ref_kernels) -> str:
    """Whether heads mode's per-rank call (every token, H/P heads, as dist_scatter_heads hands
    it: contiguous) plans the single-GPU call's kernels and tiles."""
    hq, hkv = q.shape[-2] // P, k.shape[-2] // P
    local = [x[..., :h, :].contiguous() for x, h in ((q, hq), (k, hkv), (v, hkv))]
    extra = [x[:, :, :hkv] if x is not None else None for x in (ak, av)]
    mine = [_kernels(nattn.explain(*local, *window, additional_keys=extra[0],
                                   additional_values=extra[1], backward=b))
            for b in (False, True)]
    return ("the H/P-head call plans the same kernels and tiles" if mine == ref_kernels else
            f"the H/P-head call plans {mine}, one GPU {ref_kernels}")


def _close(got, want, tol):
    atol, rtol = tol
    scale = max(1.0, float(want.abs().float().amax())) if want.numel() else 1.0
    torch.testing.assert_close(got, want, atol=atol * scale, rtol=rtol)


def check_problem(r, P, device, c, D, dtype, seed, where):
    """Runs every mode on this rank and returns its failures (strings)."""
    fails = []
    B, rank = 2, len(c["X"])
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    q, k, v = rnd(B, *c["X"], c["hq"], D), rnd(B, *c["X"], c["hkv"], D), \
        rnd(B, *c["X"], c["hkv"], D)
    ak = rnd(B, c["na"], c["hkv"], D) if c["na"] else None
    av = rnd(B, c["na"], c["hkv"], D) if c["na"] else None
    dout, dlse = rnd(B, *c["X"], c["hq"], D), rnd(B, *c["X"], c["hq"], dt=torch.float32)
    full = (q, k, v) + ((ak, av) if ak is not None else ())
    window = (c["ks"], c["st"], c["dil"], c["cz"])
    fn = {1: nattn.na1d, 2: nattn.na2d, 3: nattn.na3d}[rank]

    def one_gpu():
        inputs = [x.clone().requires_grad_() for x in full]
        out, lse = fn(*inputs[:3], *window, additional_keys=inputs[3] if ak is not None else None,
                      additional_values=inputs[4] if ak is not None else None, return_lse=True)
        return [out.detach(), lse.detach()] + list(torch.autograd.grad((out, lse), inputs,
                                                                       (dout, dlse)))

    # The single-GPU call on rank 0's device, broadcast to every rank.
    shapes = [(dout.shape, dtype), (dlse.shape, torch.float32)] + [(x.shape, x.dtype) for x in full]
    if r == 0:
        ref = one_gpu()
        if not all(torch.equal(x, y) for x, y in zip(ref, one_gpu())):
            fails.append(f"{where}: the single-GPU call itself is not bitwise reproducible")
    else:
        ref = [torch.empty(s, dtype=t, device=device) for s, t in shapes]
    for x in ref:
        dist.broadcast(x, 0)
    plans = [nattn.explain(q, k, v, *window, additional_keys=ak, additional_values=av,
                           backward=b) for b in (False, True)]
    ref_kernels = [_kernels(p) for p in plans]
    where = f"{where}, single GPU on {'/'.join(p.family for p in plans)}"
    coords = _coords(r, c["grid"])

    def cut(x):
        for a, s, i in zip(c["axes"], c["sizes"], coords):
            x = x.narrow(1 + a, sum(s[:i]), s[i])
        return x

    heads_ok = c["hq"] % P == 0 and c["hkv"] % P == 0
    runs = {}
    for mode in [m for m in MODES if m != "heads" or heads_ok] + ["halo"]:
        local = [cut(x).clone(memory_format=torch.contiguous_format).requires_grad_()
                 for x in (q, k, v)]
        add = [x.clone().requires_grad_() for x in (ak, av)] if ak is not None else []
        got, got_lse = nd.neighborhood_attention(
            *local, *window, additional_keys=add[0] if add else None,
            additional_values=add[1] if add else None, return_lse=True,
            shard_axes=tuple(c["axes"]), process_grid=c["grid"], mode=mode.split("-")[0],
            halo_backward="sum" if mode == "halo-sum" else "owned")
        res = [got.detach(), got_lse.detach()] + list(
            torch.autograd.grad((got, got_lse), local + add, (cut(dout), cut(dlse))))
        at = f"{where}, mode {mode}, rank {r}/{P}"
        if mode in runs:  # halo mode again: bitwise the same, run to run
            for name, x, y in zip(NAMES, runs[mode], res):
                if not torch.equal(x, y):
                    fails.append(f"{at}: {name} is not bitwise reproducible (max diff "
                                 f"{(x.float() - y.float()).abs().max().item():.3g})")
            continue
        runs[mode] = res
        want = [cut(x) if i < 5 else x for i, x in enumerate(ref)]
        for i, (name, x, w) in enumerate(zip(NAMES, res, want)):
            if mode == "heads":
                if not torch.equal(x, w):
                    diff = (x.float() - w.float()).abs().nan_to_num(float("inf")).max().item()
                    fails.append(f"{at}: {name} not torch.equal to one GPU (max diff {diff:.3g}; "
                                 f"{_heads_plan_note(q, k, v, ak, av, window, P, ref_kernels)})")
                continue
            try:
                _close(x, w, TOL[dtype]["out" if i == 0 else "lse" if i == 1 else "grad"])
            except AssertionError as e:
                fails.append(f"{at}: {name}: {e}")
    return fails


def test_nccl_modes_against_one_gpu(nccl, cuda_backend):
    r, P, device = nccl
    seed = _shared_seed(device)
    trials = int(os.environ.get("NATTN_NCCL_TRIALS", "12"))
    fails = []
    torch.use_deterministic_algorithms(True, warn_only=True)  # (see the module's docstring)
    for i, (c, D, dtype, name) in enumerate(problems(P, seed, trials)):
        where = (f"P={P} {name} (seed {seed}) {str(dtype)[6:]} D={D} X={c['X']} k={c['ks']} "
                 f"s={c['st']} d={c['dil']} causal={c['cz']} axes={c['axes']} grid={c['grid']} "
                 f"sizes={c['sizes']} hq={c['hq']} hkv={c['hkv']} additional={c['na']}")
        start = time.perf_counter()
        try:
            mine = check_problem(r, P, device, c, D, dtype, seed + 7919 * i, where)
        except Exception:  # one rank raising alone would leave the others in a collective
            print(f"rank {r}: {where}: error\n{traceback.format_exc()}", file=sys.stderr,
                  flush=True)
            os._exit(1)  # torchrun stops the other ranks
        every = [None] * P
        dist.all_gather_object(every, mine)
        fails += [f for part in every for f in part]
        if r == 0:  # as it goes (-s shows it): a run cut short still says how far it got
            print(f"\n{where}: {time.perf_counter() - start:.1f} s, "
                  f"{sum(len(p) for p in every)} failures", end="", flush=True)
    torch.use_deterministic_algorithms(False)
    assert not fails, f"{len(fails)} failures:\n" + "\n".join(fails[:40])
