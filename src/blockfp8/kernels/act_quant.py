"""Activation quantization for the GPU backends that take scales in a layout of their own (``scaled_mm``,
``deepgemm``): one call gives ``(q, scale)`` in the scale format *and* layout the kernel takes, rows padded to
``pad_m`` and columns to ``pad_k`` (zeros inside the last group: a ragged K reaches a kernel that takes only
whole 128-wide K blocks without a copy). ``fused=True`` runs the fused Triton kernel
(``kernels.triton.act_quant``); ``fused=False`` the reference quantizer plus the layout step of
``quant.layouts``. Both give the same bits (tests check it); which one runs is decided once per layer
(``Decision.fused_act_quant``), never probed here.
"""

from __future__ import annotations

import torch

from blockfp8.quant import reference as ref
from blockfp8.quant.layouts import ScaleFmt, ScaleLayout, to_layout


def quantize_act(x: torch.Tensor, group_size: int = 128, scale_fmt: ScaleFmt | str = ScaleFmt.FLOAT32,
                 layout: ScaleLayout | str = ScaleLayout.ROW_MAJOR, *, pad_m: int = 1, pad_k: int = 1,
                 fp8_dtype: torch.dtype = torch.float8_e4m3fn, fused: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` like ``kernels.triton.act_quant.quantize_act``: 2-D ``[M_pad, K_pad]`` for a non-row-major
    layout or ``pad_m > 1`` or ``pad_k > 1``; padding rows are zeros with finite scales, padding columns zeros."""
    layout = ScaleLayout.parse(layout)
    if fused:
        from blockfp8.kernels.triton import act_quant

        return act_quant.quantize_act(x, group_size, scale_fmt, layout, pad_m=pad_m, pad_k=pad_k,
                                      fp8_dtype=fp8_dtype)
    if layout is ScaleLayout.ROW_MAJOR and pad_m == 1 and pad_k == 1:
        return ref.quantize_act(x, group_size, str(scale_fmt), fp8_dtype=fp8_dtype)
    k = x.shape[-1]
    padded_width(k, group_size, pad_k)  # refuses a pad_k past the last group before any work
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    m_pad = ref.cdiv(m, pad_m) * pad_m
    if m_pad != m:
        x2 = torch.cat([x2, x2.new_zeros((m_pad - m, k))])
    q, s = ref.quantize_act(x2, group_size, str(scale_fmt), fp8_dtype=fp8_dtype)
    return pad_columns(q, pad_k), to_layout(s, layout)


def padded_width(k: int, group_size: int, pad_k: int) -> int:
    """Columns of the quantized activation: K rounded up to ``pad_k``, which must stay inside the last group (the
    scales do not change: zeros do not move a group's amax)."""
    if pad_k < 1:
        raise ref.QuantError(f"pad_k={pad_k}: expected a positive column multiple")
    width = ref.cdiv(k, pad_k) * pad_k
    if width > ref.cdiv(k, group_size) * group_size:
        raise ref.QuantError(f"pad_k={pad_k}: K={k} padded to {width} runs past its last {group_size}-wide group")
    return width


def pad_columns(q: torch.Tensor, multiple: int) -> torch.Tensor:
    """FP8 ``q [R, K]`` with zero columns up to a multiple of ``multiple`` (``q`` itself when K already is one).

    Kernels that take only whole 128-wide K blocks (cuBLASLt's block scaling, DeepGEMM) run a ragged K this way:
    the weight is padded once at load, the activation per call. A K group's scale is the same with or without the
    zeros (they do not change its amax), so the product is the unpadded one."""
    pad = -q.shape[-1] % multiple
    if not pad:
        return q
    return torch.nn.functional.pad(q.view(torch.uint8), (0, pad)).view(q.dtype)


def fused_quantizer_fits(group_size: int, fp8_dtype: str) -> bool:
    """Whether the fused Triton quantizer can serve this layer (power-of-two groups >= 16, float8_e4m3fn out);
    the backend also needs Triton on a CUDA device."""
    return fp8_dtype == "float8_e4m3fn" and group_size >= 16 and not group_size & (group_size - 1)
