"""Error metrics between a reference tensor and an approximation (computed in float64)."""

from __future__ import annotations

import math

import torch

_DB_PER_BIT = 20.0 * math.log10(2.0)  # 6.0206 dB per bit


def _pair(ref: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if ref.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {tuple(ref.shape)} vs test {tuple(test.shape)}")
    return ref.detach().to(torch.float64), test.detach().to(torch.float64)


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−test)²); inf when equal."""
    r, t = _pair(ref, test)
    noise = float(((r - t) ** 2).sum())
    signal = float((r**2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def snr_bits(ref: torch.Tensor, test: torch.Tensor) -> float:
    """SNR in bits: log2(‖ref‖ / ‖ref − test‖) = sqnr_db / 6.02."""
    return sqnr_db(ref, test) / _DB_PER_BIT


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """DeepGEMM's similarity error: 1 − 2·Σxy / (Σx² + Σy²); 0 for identical tensors."""
    a, b = _pair(x, y)
    denom = float((a * a + b * b).sum())
    if denom == 0.0:
        return 0.0
    return 1.0 - 2.0 * float((a * b).sum()) / denom


def rel_fro_error(ref: torch.Tensor, test: torch.Tensor) -> float:
    """‖ref − test‖_F / ‖ref‖_F (inf if ref is zero and test is not)."""
    r, t = _pair(ref, test)
    num = float(torch.linalg.vector_norm(r - t))
    den = float(torch.linalg.vector_norm(r))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def max_abs_error(ref: torch.Tensor, test: torch.Tensor) -> float:
    r, t = _pair(ref, test)
    return float((r - t).abs().max()) if r.numel() else 0.0
