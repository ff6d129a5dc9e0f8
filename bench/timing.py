"""Median event-timed milliseconds of a GPU callable, shared by the benchmark scripts."""
import torch

# A call at least this long is timed alone: its host overhead is noise beside it, and batching
# such calls only multiplies the run time (a 3-D anchor's dense cuDNN/Flex forward+backward
# takes about a second a call: 18 calls a number batched, 5 alone).
LONG_CALL_MS = 25.0


def bench(fn, iters, calls=5):
    """Milliseconds per call of fn(): the median over `iters` samples, each `calls` back-to-back
    calls between two CUDA events (after 3 warm-up calls). Back-to-back calls keep the GPU
    queue full wherever the host is faster than the kernels, so a sample measures the kernels,
    not one call's host overhead (timing single calls from an idle queue added ~0.1-0.3 ms of
    Python time to every nattn number before 2026-11-27's v2 results). Where the host is
    slower than the kernels (tiny problems) it measures the host-bound rate, for every
    contender alike; bench/overhead.py measures host time itself.
    A call of LONG_CALL_MS or more (timed once after the first, which may compile) takes one
    call per sample and no further warm-up: the same median, in a fraction of the device time."""
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    torch.cuda.synchronize()
    if a.elapsed_time(b) >= LONG_CALL_MS:
        calls = 1
    else:
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
