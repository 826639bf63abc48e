"""Checkpoint level: how fast the audit runs compared with merely reading the same tensors."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from blockfp8.audit.numerics import audit_fp8_tensor
from blockfp8.quant import reference as ref


@dataclass(frozen=True)
class SpeedReport:
    bytes: int
    read_s: float
    audit_s: float

    @property
    def ratio(self) -> float:
        """(audit rate) / (read rate): 1 = as fast as reading; the goal is >= 0.5."""
        return self.read_s / self.audit_s if self.audit_s > 0 else 0.0

    def as_dict(self) -> dict:
        gb = self.bytes / 1e9
        return {
            "bytes": self.bytes,
            "read_s": self.read_s,
            "audit_s": self.audit_s,
            "read_gb_per_s": gb / self.read_s if self.read_s > 0 else 0.0,
            "audit_gb_per_s": gb / self.audit_s if self.audit_s > 0 else 0.0,
            "audit_over_read_rate": self.ratio,
        }


def warm_up(device: str | torch.device, block: tuple[int, int]) -> None:
    """Run the audit and a read once on a small tensor so that timings exclude one-time kernel loading."""
    q, s = ref.quantize_weight(torch.randn(2 * block[0] + 3, 2 * block[1] + 5), block)
    audit_fp8_tensor("warm-up", q, s, block, device=device)
    q.to(device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, device: str | torch.device = "cpu"):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0
