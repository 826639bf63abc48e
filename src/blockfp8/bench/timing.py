"""GPU timing: warm-up, L2 flush before every timed call, CUDA events, median; variants interleaved.

Before each timed call the GPU is kept busy (the flush, then a spin kernel of ``hide_launch_us``) while the host
enqueues the start event, the call and the end event: the events then time the GPU work of the call, not the
host's launch overhead (what a CUDA graph replay, as serving engines use, would see). ``hide_launch_us=0``
times host overhead too, for a non-graph eager loop."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


class L2Flusher:
    """Writes a buffer twice the L2 size before each timed call, so no operand starts in cache."""

    def __init__(self, device=None):
        props = torch.cuda.get_device_properties(device or torch.cuda.current_device())
        size = max(2 * int(getattr(props, "L2_cache_size", 50 * 2**20)), 64 * 2**20)
        self.buf = torch.empty(size // 4, dtype=torch.int32, device=device or "cuda")

    def __call__(self) -> None:
        self.buf.zero_()


def _warm_up(fns: dict[str, Callable[[], object]], warmup: int) -> dict[str, Callable[[], object]]:
    """Run each variant ``warmup`` times; one that raises is reported and dropped (a peer that cannot run this
    shape is recorded as missing, not as a crash)."""
    ok: dict[str, Callable[[], object]] = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize()
            ok[name] = fn
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run this shape is reported as missing
            print(f"timing: variant {name} failed: {type(exc).__name__}: {str(exc)[:200]}")
            torch.cuda.synchronize()
    return ok


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int = 50, warmup: int = 5,
                     flush: L2Flusher | None = None, hide_launch_us: float = 200.0) -> dict[str, list[float]]:
    """Times each callable ``reps`` times (µs per call), interleaving the variants rep by rep so that clock or
    thermal drift hits all alike. A callable that raises is recorded as an empty list."""
    flush = flush or L2Flusher()
    times: dict[str, list[float]] = {name: [] for name in fns}
    ok = _warm_up(fns, warmup)
    events = {name: [] for name in ok}
    spin = int(hide_launch_us * 1e-6 * _clock_hz())
    for _ in range(reps):
        for name, fn in ok.items():
            flush()
            if spin:
                torch.cuda._sleep(spin)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    for name, evs in events.items():
        times[name] = [s.elapsed_time(e) * 1e3 for s, e in evs]
    return times


def time_kernels(fns: dict[str, Callable[[], object]], reps: int = 50, warmup: int = 5,
                 flush: L2Flusher | None = None) -> dict[str, list[float]]:
    """Device time of the kernels each call launches (µs per call), read from the CUDA profiler (CUPTI), as
    DeepGEMM's ``bench_kineto`` does: no event or launch gaps, L2 flushed before every call, variants
    interleaved rep by rep. Each call's time is the sum of the kernels between two flushes."""
    from torch.profiler import ProfilerActivity, profile

    flush = flush or L2Flusher()
    ok = _warm_up(fns, warmup)
    names = list(ok)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            for name in names:
                flush()
                ok[name]()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    per_call: list[float] = []
    current = None
    for e in kernels:
        if "FillFunctor<int>" in e.name:  # the flush: starts the next call
            if current is not None:
                per_call.append(current)
            current = 0.0
        elif current is not None:
            current += e.time_range.elapsed_us()
    if current is not None:
        per_call.append(current)
    times: dict[str, list[float]] = {name: [] for name in fns}
    if len(per_call) != reps * len(names):  # a variant launched its own int fill: fall back to events
        print(f"timing: {len(per_call)} calls seen by the profiler, expected {reps * len(names)}; "
              "falling back to CUDA events")
        return time_interleaved(fns, reps, warmup, flush)
    for i, t in enumerate(per_call):
        times[names[i % len(names)]].append(t)
    return times


def _clock_hz() -> float:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return float(getattr(props, "clock_rate", 1_980_000)) * 1e3  # kHz -> Hz


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wall_us(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    """Wall time per call (µs) of ``reps`` back-to-back calls after ``warmup`` calls, synchronised once at each
    end: what a user's loop sees, host overhead and launch gaps included."""
    import time

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def cuda_graphed(fn: Callable[[], object], warmup: int = 1) -> Callable[[], None]:
    """``fn`` captured once in a CUDA graph (after ``warmup`` calls on a side stream, as capture requires); returns
    the replay. ``fn`` must not synchronise with the host."""
    for _ in range(warmup):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_gbps(nbytes: int = 2**30, reps: int = 20) -> float:
    """The device's measured copy bandwidth (GB/s, bytes read plus bytes written) over a ``nbytes`` buffer: the
    yardstick for a bandwidth-bound kernel (a weight streamed once is bytes read only)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * reps / (start.elapsed_time(end) * 1e-3) / 1e9
