"""Splitting the checkpoint level across processes started by ``torchrun`` (``torch.distributed``: gloo on CPU,
NCCL on GPUs). Tensors are dealt to ranks by size (largest first, to the least loaded rank; ties by index), each
rank audits its share, and rank 0 gathers the rows, puts them back in checkpoint order and builds the one report.
Each tensor's row depends only on the tensor, so the report equals the single-process one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def init(device: str = "cpu") -> DistContext | None:
    """Join the process group torchrun set up (env://); None in a single process."""
    env = from_env()
    if env is None:
        return None
    import torch.distributed as dist

    rank, world, local = env
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local, backend)


def assign(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Indices of the jobs each rank takes: largest first, to the least loaded rank (lowest rank on ties)."""
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += sizes[i]
    return [sorted(s) for s in shares]


def gather(obj, ctx: DistContext) -> list | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
    import torch.distributed as dist

    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def finish(ctx: DistContext | None) -> None:
    if ctx is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
