"""Where the host time of a small eager call goes, piece by piece (CPU, reference backend).

Times each step of nattn.na2d's eager fast path on tiny CPU tensors: the functional API's type
checks, the fast path's per-signature cache, output allocation, the library call (ctypes, or the
C++ dispatcher ops of libnattn_torch_ops.so where loaded) and the autograd wrapper. Batch 0 keeps
the kernel out of the numbers, so what is left is host overhead (a proxy for the GPU machine's:
the pieces are the same, the CPU is not). Minimum over repeats, in us per call.

A second table compares the two library calls of the fast path (C++ ops vs ctypes) on the same
calls, interleaved (15 alternating samples each, minimum), since a shared machine drifts.

A third mode (--trace cpu|cuda) traces the library's own host time by phase (validation, plan
lookup, workspace, tensor-map encoding, launches: nattn/host_trace.h) over repeated small
forward+backward steps, beside the step's wall time: on the GPU machine it says where a call's
C++ host time goes.

usage: python bench/host_breakdown.py [--trace cpu|cuda]
"""
import argparse
import time

import torch

import nattn
from nattn import _choice, _fast, _lib, _native
from nattn import functional as F


def us(fn, iters=3000, reps=9):
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters * 1e6)
    return best


def main():
    torch.manual_seed(0)
    q, k, v = (torch.randn(0, 4, 4, 1, 8) for _ in range(3))  # batch 0: no kernel work
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    call = F.neighborhood_call(2, q, k, v, 3, 1, 1, False, None, None, None, "reference")
    tensors, params, choice = call[:5], call[5:], _choice.current()
    out, lse = torch.empty(0, 4, 4, 1, 8), torch.empty(0, 4, 4, 1)
    rows = [
        ("na2d, no grad: whole call", lambda: nattn.na2d(q, k, v, 3, backend="reference")),
        ("  type checks (functional.neighborhood_call)",
         lambda: F.neighborhood_call(2, q, k, v, 3, 1, 1, False, None, None, None, "reference")),
        ("  autocast + kernel_choice + eligibility",
         lambda: (F.autocast(call), _choice.current(), torch.compiler.is_compiling(),
                  _fast.eligible(tensors))),
    ]
    loaded = _native.LOADED
    _native.LOADED = False
    entry = _fast._forward_entry(tensors, params, choice)
    rows += [
        ("  ctypes: run_forward (cache + alloc + C call)",
         lambda: _fast.run_forward(tensors, params, choice)),
        ("    signature key + cache lookup", lambda: _fast._forward_entry(tensors, params, choice)),
        ("    torch.empty x2 (out, lse)",
         lambda: (torch.empty(entry.out_shapes[0]), torch.empty(entry.out_shapes[1]))),
        ("    C views copy + data pointers + C call", lambda: _fast._launch(entry, tensors + (out, lse), q.device)),
    ]
    p = _lib.problem(q, k, v, None, None, [3, 3], [1, 1], [1, 1], [False, False], None, False)
    arr, opts = _lib.slots([q, k, v, None, None, out, lse]), _lib.options(_lib.BACKEND_REFERENCE, q.device)
    rows.append(("    the C call alone (_lib.forward)", lambda: _lib.forward(False, p, arr, opts, "x")))
    timed = [(name, us(fn)) for name, fn in rows]
    if loaded:
        _native.LOADED = True
        w = _native.window([3, 3], [1, 1], [1, 1], [False, False], False, [])
        o = _native.options(_lib.BACKEND_REFERENCE, choice)
        timed += [(name, us(fn)) for name, fn in [
            ("  C++ ops: run_forward (lists + one dispatcher call)",
             lambda: _fast.run_forward(tensors, params, choice)),
            ("    window + options lists",
             lambda: (_native.window([3, 3], [1, 1], [1, 1], [False, False], False, []),
                      _native.options(_lib.BACKEND_REFERENCE, choice))),
            ("    the dispatcher call alone", lambda: _native._FORWARD(q, k, v, None, None, w, None, o, "")),
        ]]
    _native.LOADED = loaded
    timed += [(name, us(fn, iters=1000)) for name, fn in [
        ("na2d, inputs need grad (autograd.Function)", lambda: nattn.na2d(qg, kg, vg, 3, backend="reference")),
        ("na2d + .sum().backward()", lambda: nattn.na2d(qg, kg, vg, 3, backend="reference").sum().backward()),
        ("torch for scale: (q * k).sum().backward()", lambda: (qg * kg).sum().backward()),
    ]]
    print(f"op path: {nattn.op_path().name} ({nattn.op_path().call}); torch {torch.__version__}")
    print("| piece | host us/call |\n|---|---|")
    for name, t in timed:
        print(f"| {name.replace('  ', '&nbsp;&nbsp;')} | {t:.2f} |")
    if loaded:
        interleaved(q, k, v, qg, kg, vg, choice)


def interleaved(q, k, v, qg, kg, vg, choice):
    out, lse = nattn.na2d(q, k, v, 3, return_lse=True)
    dout = torch.randn_like(out)
    params = ([3, 3], [1, 1], [1, 1], [False, False], None, False, _lib.BACKEND_REFERENCE, ())
    calls = {
        "na2d forward, no grad": lambda: nattn.na2d(q, k, v, 3, backend="reference"),
        "fast path backward call (_fast.run_backward)":
            lambda: _fast.run_backward((q, k, v, None, None, out, lse, dout, None), params, choice),
        "na2d forward + backward(grad)":
            lambda: nattn.na2d(qg, kg, vg, 3, backend="reference").backward(dout),
    }
    print("\n| call (batch 0) | C++ ops us | ctypes us | saved us |\n|---|---|---|---|")
    try:
        for name, fn in calls.items():
            best = {True: float("inf"), False: float("inf")}
            for _ in range(15):
                for native in (True, False):
                    _native.LOADED = native
                    best[native] = min(best[native], us(fn, iters=1000, reps=1))
            print(f"| {name} | {best[True]:.1f} | {best[False]:.1f} | {best[False] - best[True]:.1f} |")
    finally:
        _native.LOADED = True


def trace(device: str, steps: int = 2000):
    """Per phase, library host us per call over `steps` forward+backward steps (two library calls
    each), for a tiny grid and a NAT 7x7 stage (batch 32, 16 heads, head dim 32)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    print(f"op path: {nattn.op_path().name} ({nattn.op_path().call}); torch {torch.__version__}; "
          f"{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    for shape, window in (((1, 16, 16, 2, 64), 7), ((32, 7, 7, 16, 32), 7)):
        q, k, v = (torch.randn(*shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        g = torch.randn(*shape, device=device, dtype=dtype)

        def step(q=q, k=k, v=v, g=g, window=window):
            torch.autograd.grad(nattn.na2d(q, k, v, window), (q, k, v), g)

        for _ in range(100):
            step()
        sync()
        _lib.host_trace("on")
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps * 1e6
        sync()
        counts = _lib.host_trace("read")
        _lib.host_trace("off")
        print(f"\n{tuple(shape)} window {window}: forward+backward step {wall:.1f} us wall "
              f"(host-bound when the kernels are shorter)")
        print("| phase | calls per step | host us per step |\n|---|---|---|")
        for phase, (n, ns) in counts.items():
            if n:
                print(f"| {phase} | {n / steps:.1f} | {ns / steps / 1e3:.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", choices=["cpu", "cuda"])
    a = ap.parse_args()
    if a.trace:
        trace(a.trace, steps=2000 if a.trace == "cuda" else 20)
    else:
        main()
