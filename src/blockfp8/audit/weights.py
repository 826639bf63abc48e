"""Weights-only audit: quantize each weight with float32 and with UE8M0 block scales and compare.

For a weight W, each format gives W_hat = dequant(quant(W)); we report the relative Frobenius error
||W - W_hat|| / ||W||, the SNR in bits log2(||W|| / ||W - W_hat||), the bits lost by UE8M0
(bits_fp32 - bits_ue8m0), and the scale inflation s_ue8m0 / s_fp32 per block (in [1, 2): the block maximum
lands in (224, 448] instead of on 448). Pure torch on CPU; never imports nn or a GPU backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from blockfp8.audit.measures import finite_bits
from blockfp8.quant import metrics
from blockfp8.quant import reference as ref

# Linear layers left in high precision by every block-FP8 checkpoint we know (and by ``blockfp8 quantize``): the
# output projection. The levels that walk a model's nn.Linear modules (weights-only, calibrated, end to end) skip
# the modules whose names contain one of these.
UNQUANTIZED_LINEARS = ("lm_head",)


@dataclass(frozen=True)
class WeightAudit:
    name: str
    shape: tuple[int, int]
    rel_err_fp32: float
    rel_err_ue8m0: float
    bits_fp32: float
    bits_ue8m0: float
    bits_lost: float
    scale_inflation_mean: float
    scale_inflation_max: float
    pow2_block_share: float  # blocks whose float32 scale is already a power of two

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def audit_weight(name: str, w: torch.Tensor, block_size: Sequence[int] = (128, 128)) -> WeightAudit:
    w32 = w.detach().to(torch.float32)
    q32, s32 = ref.quantize_weight(w32, block_size, "float32", name=name)
    q8, s8 = ref.quantize_weight(w32, block_size, "ue8m0", name=name)
    deq32 = ref.dequantize_weight(q32, s32, block_size)
    deq8 = ref.dequantize_weight(q8, s8, block_size)
    bits32 = finite_bits(metrics.snr_bits(w32, deq32))
    bits8 = finite_bits(metrics.snr_bits(w32, deq8))
    inflation = s8 / s32
    return WeightAudit(
        name=name,
        shape=(int(w.shape[0]), int(w.shape[1])),
        rel_err_fp32=metrics.rel_fro_error(w32, deq32),
        rel_err_ue8m0=metrics.rel_fro_error(w32, deq8),
        bits_fp32=bits32,
        bits_ue8m0=bits8,
        bits_lost=bits32 - bits8,
        scale_inflation_mean=float(inflation.mean()),
        scale_inflation_max=float(inflation.max()),
        pow2_block_share=float(ref.is_power_of_two(s32).float().mean()),
    )


def linear_modules(model: torch.nn.Module, skip: Sequence[str] = UNQUANTIZED_LINEARS
                   ) -> list[tuple[str, torch.nn.Linear]]:
    """Every ``nn.Linear`` of a model in module order, except names containing a ``skip`` entry."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not any(s in n for s in skip)]


def linear_weights(model: torch.nn.Module, skip: Sequence[str] = UNQUANTIZED_LINEARS
                   ) -> list[tuple[str, torch.nn.Parameter]]:
    """Every nn.Linear weight of a model, in module order, except names containing a `skip` entry."""
    return [(name, module.weight) for name, module in linear_modules(model, skip)]


def summarize(rows: Sequence[WeightAudit]) -> dict:
    if not rows:
        return {"layers": 0}
    lost = [r.bits_lost for r in rows]
    worst = max(rows, key=lambda r: r.bits_lost)
    return {
        "layers": len(rows),
        "mean_bits_fp32": sum(r.bits_fp32 for r in rows) / len(rows),
        "mean_bits_ue8m0": sum(r.bits_ue8m0 for r in rows) / len(rows),
        "mean_bits_lost": sum(lost) / len(lost),
        "max_bits_lost": max(lost),
        "worst_layer": worst.name,
        "mean_scale_inflation": sum(r.scale_inflation_mean for r in rows) / len(rows),
    }
