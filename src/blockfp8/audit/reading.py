"""Checkpoint level: reading the planned tensors and auditing them in order. On CUDA the next FP8 weight is copied
to the GPU on a side stream while the current one is audited; ``read_jobs`` reads the same tensors and nothing else
(the baseline ``audit.speed`` compares against)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from blockfp8.audit.numerics import CheckpointRow, audit_float_tensor, audit_fp8_tensor
from blockfp8.audit.plan import OpenCheckpoint, TensorJob
from blockfp8.formats.errors import CheckpointError


def audit_job(ck: OpenCheckpoint, job: TensorJob, block: tuple[int, int], device: str | torch.device = "cpu",
              weight: torch.Tensor | None = None) -> CheckpointRow:
    """One job's row; ``weight`` is the job's weight tensor when it was already read (prefetched to the GPU)."""
    t = ck.tensors
    if job.scale is None:
        return audit_float_tensor(job.weight, t.get(job.weight), block, device=device)
    winfo, sinfo = t.info(job.weight), t.info(job.scale)
    try:
        raw_scale = t.get(job.scale)
        row = audit_fp8_tensor(job.weight, t.get(job.weight) if weight is None else weight, raw_scale, block,
                               device=device, scale_dtype=sinfo.dtype_code)
    except CheckpointError as exc:
        if exc.file is None:
            raise CheckpointError(str(exc).split(": ", 1)[-1], file=winfo.file, tensor=job.weight) from None
        raise
    if ck.quant_config is not None and ck.quant_config.scale_fmt == "ue8m0" and row.pow2_block_share < 1.0:
        raise CheckpointError(f"config says scale_fmt ue8m0 but {100 * (1 - row.pow2_block_share):.1f}% of the "
                              "block scales are not powers of two", file=sinfo.file, tensor=job.scale)
    return row


def audit_jobs(
    ck: OpenCheckpoint,
    jobs: Iterable[TensorJob],
    block: tuple[int, int],
    device: str | torch.device = "cpu",
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[CheckpointRow]:
    """Rows for ``jobs`` in order. On CUDA the next FP8 weight is copied to the GPU (a background thread and a
    side stream) while the current one is audited, so reading and computing overlap."""
    jobs = list(jobs)
    dev = torch.device(device)
    if dev.type != "cuda" or not jobs:
        return [audit_job(ck, j, block, device) for j in (progress(jobs) if progress else jobs)]
    from concurrent.futures import ThreadPoolExecutor

    side = torch.cuda.Stream(device=dev)

    def load(job: TensorJob):
        if job.scale is None:
            return None
        with torch.cuda.stream(side):
            w = ck.tensors.get(job.weight).to(dev, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(side)
        return w, ready

    rows = []
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, jobs[0])
        for i, job in enumerate(progress(jobs) if progress else jobs):
            loaded = pending.result()
            if i + 1 < len(jobs):
                pending = pool.submit(load, jobs[i + 1])
            weight = None
            if loaded is not None:
                weight, ready = loaded
                main = torch.cuda.current_stream(dev)
                main.wait_event(ready)
                weight.record_stream(main)
            rows.append(audit_job(ck, job, block, device, weight=weight))
    return rows


def read_jobs(ck: OpenCheckpoint, jobs: Iterable[TensorJob], device: str | torch.device = "cpu") -> int:
    """The baseline for the speed claim: read every tensor the audit reads (a copy out of the memory map, and to
    the device when it is not the CPU), nothing else. Returns the bytes read."""
    total = 0
    for job in jobs:
        for name in (job.weight, job.scale):
            if name is None:
                continue
            t = ck.tensors.get(name)
            t = t.to(device) if torch.device(device).type != "cpu" else t.clone()
            total += t.numel() * t.element_size()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return total
