"""Routed (token, slot) pairs grouped by expert, with tensor ops on the device and no host synchronisation.

Every grouped MoE kernel starts here: the Triton fused MoE pads each expert's run to its tile height
(``kernels.triton.moe.align_by_expert``), DeepGEMM's contiguous kernel to its M alignment and its masked kernel
writes each expert's rows into a fixed ``[E, max_m, K]`` buffer (``kernels.deepgemm_moe``). All sizes are upper
bounds computed from the static shapes, so nothing is read back to the host and the whole routing can be
captured in a CUDA graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from blockfp8.quant.reference import cdiv


class ExpertRuns(NamedTuple):
    """The ``T * k`` routed pairs (pair id ``t * k + j``) of ``topk_ids [T, k]``, grouped by expert."""

    experts: torch.Tensor  # int64 [T*k]: the expert of each pair
    order: torch.Tensor  # int64 [T*k]: pair ids sorted by expert (stable: token order within an expert)
    rank: torch.Tensor  # int64 [T*k]: rank of order[i] within its expert's run
    counts: torch.Tensor  # int64 [E]: pairs per expert


def expert_runs(topk_ids: torch.Tensor, num_experts: int) -> ExpertRuns:
    """Group the routed pairs by expert. The caller guarantees ids in ``[0, num_experts)``."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    # not torch.bincount: on CUDA it reads the maximum back to the host to size its output (a sync that breaks
    # CUDA-graph capture)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat,
                                                                                           torch.ones_like(flat))
    order = torch.argsort(flat, stable=True)
    first_of_expert = torch.cumsum(counts, 0) - counts
    rank = torch.arange(flat.numel(), device=flat.device) - first_of_expert[flat[order]]
    return ExpertRuns(flat, order, rank, counts)


def padded_capacity(num_pairs: int, num_experts: int, align: int) -> int:
    """Rows that hold every expert's run padded to ``align``: at most ``min(E, pairs)`` experts hold pairs, each
    padded by fewer than ``align`` rows. At decode (few tokens) this keeps the buffers to the blocks that can hold
    work instead of one block per expert."""
    return cdiv(num_pairs + min(num_experts, num_pairs) * (align - 1), align) * align


def padded_starts(counts: torch.Tensor, align: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row, one past the last padded row) of each expert's run when every run is padded to ``align``."""
    padded = (counts + align - 1) // align * align
    ends = torch.cumsum(padded, 0)
    return ends - padded, ends
