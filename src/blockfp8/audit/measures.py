"""The two measures every audit level reports: SNR in bits (kept finite, so every number in a JSON report is) and
the histogram of scale inflation ``s_ue8m0 / s_float32`` over fixed log2 bins (so that levels and ranks add up)."""

from __future__ import annotations

import math

import torch

# A finite stand-in for "no error at all" so every number in a JSON report is finite.
MAX_BITS = 64.0

# Scale inflation s_ue8m0 / s_fp32 histogram: log2 bins. Rounding a scale up gives [1, 2) (log2 in [0, 1));
# the weights-only and calibrated levels derive UE8M0 scales from block maxima, which can also shrink a scale.
INFLATION_LOG2_EDGES = tuple(-1.0 + i / 32 for i in range(65))  # [-1, 1] in 64 bins


def finite_bits(bits: float) -> float:
    """Clamp to +-MAX_BITS (infinities included); NaN is a bug upstream and raises."""
    if math.isnan(bits):
        raise ValueError("bits is NaN")
    return max(min(bits, MAX_BITS), -MAX_BITS)


def bits_from_power(signal: float, noise: float) -> float:
    """SNR in bits from summed squares, 0.5 * log2(signal / noise): MAX_BITS without noise, -MAX_BITS without
    signal."""
    if noise <= 0.0:
        return MAX_BITS
    if signal <= 0.0:
        return -MAX_BITS
    return finite_bits(0.5 * math.log2(signal / noise))


def inflation_histogram(inflation: torch.Tensor) -> list[int]:
    """Counts of ``log2(inflation)`` in the 64 fixed bins over [-1, 1] (values outside go to the end bins)."""
    x = torch.log2(inflation.detach().double().flatten().cpu())
    x = x[torch.isfinite(x)]
    idx = ((x + 1.0) * 32).floor().clamp(0, 63).long()
    return torch.bincount(idx, minlength=64).tolist()
