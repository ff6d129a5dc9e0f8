"""Host overhead and layout benchmark (GPU): what a model pays outside the kernels.

  * host time of a repeated small call (forward, and forward+backward), beside dense SDPA:
    wall-clock time per call while the GPU keeps up, so it is the Python + C++ cost of a call;
  * the expanded-gradient backward: `na2d(q, k, v, 7).sum().backward()` hands the backward a
    stride-0 gradient; its GPU kernel time (torch.profiler) shows whether the fused backward
    ran (and, with nattn.explain, which family the plan chose and what it copied).

usage: python bench/overhead.py [--out FILE.json] [--label TEXT]
Only public APIs are used, so the same script measures the versions before and after a change.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import nattn


def host_us(fn, iters=2000, reps=5):
    """Median over reps of the wall-clock microseconds per call of fn() (no sync inside)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        out.append((t1 - t0) / iters * 1e6)
    return statistics.median(out)


def device_ms(fn, iters=20, reps=5):
    """Median over reps of the event-timed milliseconds per call of fn()."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / iters)
    return statistics.median(out)


def backward_kernel_ms(q, k, v, reps=10):
    """GPU time of the kernels of one `.sum().backward()` (the wall time of a small call is host time)."""
    from torch.profiler import ProfilerActivity, profile

    outs = [nattn.na2d(q, k, v, 7).sum() for _ in range(reps)]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for o in outs:
            o.backward()
        torch.cuda.synchronize()
    # Self device time: each kernel once (an op's device time is its kernels').
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / reps / 1e3


def c_abi_forward_us(q, k, v):
    """Host time of nattn's C entry point alone (the binding of 2026-11-27; None for others)."""
    lib = getattr(nattn, "_lib", None)
    if lib is None or not all(hasattr(lib, n) for n in ("problem", "slots", "options", "forward")):
        return None
    try:
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)
        p = lib.problem(q, k, v, None, None, [7, 7], [1, 1], [1, 1], [False, False], None, False)
        arr = lib.slots([q, k, v, None, None, out, lse], True)
        o = lib.options(lib.BACKEND_AUTO, q.device)
        return host_us(lambda: lib.forward(False, p, arr, o, "overhead probe"))
    except (TypeError, AttributeError) as e:  # another binding version: say so, measure nothing
        print("C ABI probe skipped:", e)
        return None


def family_of(q, k, v, **kw):
    explain = getattr(nattn, "explain", None)
    if explain is None:
        return "n/a (no nattn.explain in this version)"
    try:
        plan = explain(q, k, v, **kw)
        configs = ",".join(str(k["config_id"]) for k in plan.kernels if k["config_id"] >= 0)
        copies = "; ".join(plan.copies)
        return f"{plan.family} (configs {configs}{'; copies: ' + copies if copies else ''})"
    except Exception as e:  # noqa: BLE001 (reported, not hidden)
        return f"explain failed: {e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows = []

    # Small call: 1 x 16x16 tokens x 2 heads x 32, window 7x7 (NAT-sized, the kernel takes a few us).
    q, k, v = (torch.randn(1, 16, 16, 2, 32, device=dev, dtype=torch.bfloat16) for _ in range(3))
    qs, ks, vs = (x.flatten(1, 2).transpose(1, 2).contiguous() for x in (q, k, v))
    rows.append(("small forward, host us/call", host_us(lambda: nattn.na2d(q, k, v, 7)),
                 host_us(lambda: F.scaled_dot_product_attention(qs, ks, vs))))
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    qsg, ksg, vsg = (x.clone().requires_grad_() for x in (qs, ks, vs))
    rows.append(("small forward+backward, host us/call",
                 host_us(lambda: nattn.na2d(qg, kg, vg, 7).sum().backward(), iters=500),
                 host_us(lambda: F.scaled_dot_product_attention(qsg, ksg, vsg).sum().backward(), iters=500)))

    # The C ABI call alone (validation, plan-cache lookup, launch), through this version's binding.
    c_abi = c_abi_forward_us(q, k, v)
    if c_abi is not None:
        rows.append(("C ABI forward alone (C++ part of a call), host us/call", c_abi, None))

    # Expanded gradient: .sum().backward() gives a stride-0 dout.
    q, k, v = (torch.randn(1, 32, 32, 8, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    fwd = device_ms(lambda: nattn.na2d(q, k, v, 7))
    both = device_ms(lambda: nattn.na2d(q, k, v, 7).sum().backward())
    out = nattn.na2d(q, k, v, 7)
    dout = torch.ones((), device=dev, dtype=out.dtype).expand_as(out)
    fam = family_of(q, k, v, kernel_size=7, backward=True, grad_out=dout)
    rows.append((f"expanded-gradient backward 32x32 h8 d64 w7, wall ms (family: {fam})", both - fwd, None))
    rows.append(("expanded-gradient backward, GPU kernel ms (profiler)", backward_kernel_ms(q, k, v), None))

    print(f"| measurement {args.label} | nattn | dense SDPA |")
    print("|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.3f} | {'' if b is None else f'{b:.3f}'} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"label": args.label, "card": torch.cuda.get_device_name(),
                       "torch": torch.__version__,
                       "rows": [{"measurement": n, "nattn": a, "sdpa": b} for n, a, b in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
