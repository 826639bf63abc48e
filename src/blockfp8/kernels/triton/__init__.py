"""Triton kernels (``_*_kernels.py``, ``@triton.jit``) and their launchers (``gemm``, ``act_quant``, ``moe``).

Triton runs a kernel compiled for CUDA tensors, or in its interpreter for CPU tensors (tests at small shapes).
The mode is process-wide and fixed when the first kernel is built (Triton reads ``TRITON_INTERPRET`` then), so it
is settled once, by :func:`use_device` at weight-preparation time, never in a forward pass.
"""

from __future__ import annotations

import functools
import os

import torch

from blockfp8.quant.reference import QuantError


@functools.cache
def interpreting() -> bool:
    """Whether this process's Triton kernels run in the interpreter (read once, when the first kernel is built)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_device(device: torch.device | str) -> None:
    """Settle the mode for tensors on ``device`` before any kernel is built: on a machine without CUDA, CPU
    tensors get the interpreter. Raises when the mode already fixed cannot run tensors on ``device``."""
    device = torch.device(device)
    if device.type == "cpu" and not torch.cuda.is_available() and interpreting.cache_info().currsize == 0:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    check_device(device)


def check_device(device: torch.device | str) -> None:
    """Tensors on ``device`` can run in this process's Triton mode (no environment read after the first call)."""
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda and interpreting():
        raise QuantError("tensors are on CUDA but TRITON_INTERPRET is set: unset it to run compiled kernels")
    if not on_cuda and not interpreting():
        raise QuantError(f"tensor on {device}: Triton kernels run on CUDA tensors; for CPU tensors set "
                         "TRITON_INTERPRET=1 before the first kernel is built (the interpreter, for tests)")
