"""Host overhead and layout benchmark (GPU): what a model pays outside the kernels.

  * host time of a repeated small call (forward, and forward+backward), beside dense SDPA:
    wall-clock time per call while the GPU keeps up, so it is the Python + C++ cost of a call.
    Where the package has the eager fast path (nattn.op_path()), every path is measured in the
    same run: the fast path calling the C++ dispatcher ops (libnattn_torch_ops.so, where built;
    with the C++ autograd node of libnattn_torch_autograd where built for this torch, and with
    the Python autograd.Function, nattn._native_autograd.LOADED = False), the fast path calling
    the C ABI through ctypes (nattn._native.LOADED = False) and the
    torch.library custom ops (nattn._fast.ENABLED = False);
  * the floor of any Python-level op: a torch.autograd.Function that allocates nattn's outputs
    and gradients and computes nothing (what torch's autograd costs before nattn's own work);
  * the C ABI call alone (validation, plan-cache lookup, launch) through nattn._lib;
  * the expanded-gradient backward: `na2d(q, k, v, 7).sum().backward()` hands the backward a
    stride-0 gradient; its GPU kernel time (torch.profiler) shows whether the fused backward
    ran (and, with nattn.explain, which family the plan chose and what it copied).

usage: python bench/overhead.py [--out FILE.json] [--label TEXT] [--device cpu]
--device cpu measures the host-time rows alone on the reference backend (float32), for
comparing versions on a machine without a GPU; the kernel then runs inside the call.
Only public APIs (and, guarded, nattn._lib / nattn._fast) are used, so the same script
measures the versions before and after a change.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import nattn
from timing import bench


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_us(fn, iters=2000, reps=5):
    """Median over reps of the wall-clock microseconds per call of fn() (no sync inside)."""
    for _ in range(50):
        fn()
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        t1 = time.perf_counter()
        sync()
        out.append((t1 - t0) / iters * 1e6)
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


def c_abi_forward_us(q, k, v, backend, window):
    """Host time of nattn's C entry point alone (the binding of 2026-11-27 on; None for others)."""
    lib = getattr(nattn, "_lib", None)
    if lib is None or not all(hasattr(lib, n) for n in ("problem", "slots", "options", "forward")):
        return None
    try:
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)
        p = lib.problem(q, k, v, None, None, [window] * 2, [1, 1], [1, 1], [False, False], None, False)
        arr = lib.slots([q, k, v, None, None, out, lse], True)
        o = lib.options(backend, q.device)
        return host_us(lambda: lib.forward(False, p, arr, o, "overhead probe"))
    except (TypeError, AttributeError) as e:  # another binding version: say so, measure nothing
        print("C ABI probe skipped:", e)
        return None


def op_paths():
    """(label, fast-path switch value, C++ ops switch value, C++ autograd switch value) for each
    op path this version has:
    the fast path calling the C++ dispatcher ops (nattn._native, where loaded), the fast path
    calling the C ABI through ctypes, and the custom ops where nattn._fast exists, else the one
    path (None: leave it)."""
    fast = getattr(nattn, "_fast", None)
    if fast is None or not hasattr(fast, "ENABLED"):
        return [("", None, None, None)]
    native = getattr(nattn, "_native", None)
    if native is None or not getattr(native, "LOADED", False):
        return [(" (fast path)", True, None, None), (" (custom ops)", False, None, None)]
    paths = [(" (fast path, C++ ops)", True, True, None), (" (fast path, ctypes)", True, False, None),
             (" (custom ops)", False, None, None)]
    autograd = getattr(nattn, "_native_autograd", None)
    if autograd is not None and autograd.LOADED:  # the C++ autograd node against the Python one
        paths[0:1] = [(" (fast path, C++ ops, C++ autograd)", True, True, True),
                      (" (fast path, C++ ops, Python autograd)", True, True, False)]
    return paths


class _Floor(torch.autograd.Function):
    """The floor of a Python-level op: allocates what nattn's op returns (out, lse) and what its
    backward returns (three gradients), computes nothing. Its host time is what torch's autograd
    and a Python autograd.Function cost before any work of nattn's (the C++ autograd node of
    libnattn_torch_autograd, built per torch version, avoids it: docs/performance.md)."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.set_materialize_grads(False)
        out, lse = torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def floor_rows(q, k, v, qg, kg, vg):
    """Host us of _Floor: forward (no grad) and forward+backward, as the rows below time them."""
    with torch.no_grad():
        fwd = host_us(lambda: _Floor.apply(q, k, v))
    fb = host_us(lambda: _Floor.apply(qg, kg, vg)[0].sum().backward(), iters=500)
    return [("floor: a Python autograd.Function that only allocates, forward, host us/call", fwd, None),
            ("floor: a Python autograd.Function that only allocates, forward+backward, host us/call", fb,
             None)]


def host_rows(dev, dtype, backend, shape, window):
    """Host us per call of a small forward and forward+backward, each op path, beside SDPA."""
    rows = []
    q, k, v = (torch.randn(*shape, device=dev, dtype=dtype) for _ in range(3))
    qs, ks, vs = (x.flatten(1, 2).transpose(1, 2).contiguous() for x in (q, k, v))
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    qsg, ksg, vsg = (x.clone().requires_grad_() for x in (qs, ks, vs))
    sdpa_f = host_us(lambda: F.scaled_dot_product_attention(qs, ks, vs))
    sdpa_fb = host_us(lambda: F.scaled_dot_product_attention(qsg, ksg, vsg).sum().backward(), iters=500)
    fast, native = getattr(nattn, "_fast", None), getattr(nattn, "_native", None)
    autograd = getattr(nattn, "_native_autograd", None)
    initial = getattr(fast, "ENABLED", None)
    initial_native = getattr(native, "LOADED", None)
    initial_autograd = getattr(autograd, "LOADED", None)
    try:
        for label, enabled, cpp_ops, cpp_autograd in op_paths():
            if enabled is not None:
                fast.ENABLED = enabled
            if cpp_ops is not None:
                native.LOADED = cpp_ops
            if cpp_autograd is not None:
                autograd.LOADED = cpp_autograd
            rows.append((f"small forward{label}, host us/call",
                         host_us(lambda: nattn.na2d(q, k, v, window, backend=backend)), sdpa_f))
            rows.append((f"small forward+backward{label}, host us/call",
                         host_us(lambda: nattn.na2d(qg, kg, vg, window, backend=backend).sum().backward(),
                                 iters=500), sdpa_fb))
    finally:
        if initial is not None:
            fast.ENABLED = initial
        if initial_native is not None:
            native.LOADED = initial_native
        if initial_autograd is not None:
            autograd.LOADED = initial_autograd

    rows += floor_rows(q, k, v, qg, kg, vg)
    # The C ABI call alone (validation, plan-cache lookup, launch), through this version's binding.
    lib = getattr(nattn, "_lib", None)
    kind = getattr(lib, "BACKEND_REFERENCE" if backend == "reference" else "BACKEND_AUTO", 0)
    c_abi = c_abi_forward_us(q, k, v, kind, window)
    if c_abi is not None:
        rows.append(("C ABI forward alone (C++ part of a call), host us/call", c_abi, None))
    return rows


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
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    if dev.type == "cpu":  # host rows alone, reference backend, a problem the kernel does in ~2 us
        report(args, host_rows(dev, torch.float32, "reference", (1, 4, 4, 1, 8), 3))
        return
    # Small call: 1 x 16x16 tokens x 2 heads x 32, window 7x7 (NAT-sized, the kernel takes a few us).
    rows = host_rows(dev, torch.bfloat16, None, (1, 16, 16, 2, 32), 7)

    # Expanded gradient: .sum().backward() gives a stride-0 dout.
    q, k, v = (torch.randn(1, 32, 32, 8, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    # Event-timed ms per call: median of 5 samples of 20 back-to-back calls (bench/timing.py).
    fwd = bench(lambda: nattn.na2d(q, k, v, 7), 5, calls=20)
    both = bench(lambda: nattn.na2d(q, k, v, 7).sum().backward(), 5, calls=20)
    out = nattn.na2d(q, k, v, 7)
    dout = torch.ones((), device=dev, dtype=out.dtype).expand_as(out)
    fam = family_of(q, k, v, kernel_size=7, backward=True, grad_out=dout)
    rows.append((f"expanded-gradient backward 32x32 h8 d64 w7, wall ms (family: {fam})", both - fwd, None))
    rows.append(("expanded-gradient backward, GPU kernel ms (profiler)", backward_kernel_ms(q, k, v), None))
    rows += autocast_rows(dev)

    report(args, rows)


def autocast_rows(dev):
    """Issue 11's autocast case: float32 inputs inside torch.autocast("cuda", bfloat16) should run
    as the same call in bfloat16 (nattn casts as SDPA does), not the generic float32 kernels
    (2.0 against 0.19 ms before the fix). Event-timed ms per call, forward alone, beside SDPA
    under the same autocast; the family row names what the autocast call ran."""
    shape = (2, 32, 32, 4, 64)
    q32, k32, v32 = (torch.randn(*shape, device=dev) for _ in range(3))
    q16, k16, v16 = (x.bfloat16() for x in (q32, k32, v32))
    qs, ks, vs = (x.flatten(1, 2).transpose(1, 2).contiguous() for x in (q32, k32, v32))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        auto = bench(lambda: nattn.na2d(q32, k32, v32, 7), 5, calls=20)
        sdpa_auto = bench(lambda: F.scaled_dot_product_attention(qs, ks, vs), 5, calls=20)
        fam = family_of(*(x.bfloat16() for x in (q32, k32, v32)), kernel_size=7)
        out_dtype = nattn.na2d(q32, k32, v32, 7).dtype
    plain = bench(lambda: nattn.na2d(q16, k16, v16, 7), 5, calls=20)
    return [(f"autocast bf16, float32 inputs (2x32x32, 4 heads, d64, w7), ms (out {out_dtype}; family: {fam})",
             auto, sdpa_auto),
            ("the same call with bfloat16 inputs, no autocast, ms", plain, None)]


def report(args, rows):
    path = getattr(nattn, "op_path", None)
    if path is not None:
        print(f"op path: {path().name} ({getattr(path(), 'call', '')}): {path().reason}")
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"| measurement {args.label} ({card}) | nattn | dense SDPA |")
    print("|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.3f} | {'' if b is None else f'{b:.3f}'} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"label": args.label, "card": card, "torch": torch.__version__,
                       "rows": [{"measurement": n, "nattn": a, "sdpa": b} for n, a, b in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
