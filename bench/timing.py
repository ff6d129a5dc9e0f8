"""Median event-timed milliseconds of a GPU callable, shared by the benchmark scripts."""
import torch


def bench(fn, iters, calls=5):
    """Milliseconds per call of fn(): the median over `iters` samples, each `calls` back-to-back
    calls between two CUDA events (after 3 warm-up calls). Back-to-back calls keep the GPU
    queue full wherever the host is faster than the kernels, so a sample measures the kernels,
    not one call's host overhead (timing single calls from an idle queue added ~0.1-0.3 ms of
    Python time to every nattn number before 2026-11-27's v2 results). Where the host is
    slower than the kernels (tiny problems) it measures the host-bound rate, for every
    contender alike; bench/overhead.py measures host time itself."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / calls)
    times.sort()
    return times[len(times) // 2]
