"""Activation quantization for any backend: the fused Triton kernel (``triton_quant``) on CUDA tensors when
Triton is importable, else ``quant.reference`` plus a layout step. A shared kernel module, not a backend: the
``scaled_mm`` and ``deepgemm`` backends call it so that each gets its scale format *and* layout in one pass
(M-major, packed UE8M0, rows padded to ``pad_m``) without importing the Triton backend.

Both paths give the same bits (the Triton quantizer is bit-identical to the reference; tests check it).
"""

from __future__ import annotations

import importlib.util

import torch


def quantize_act(x: torch.Tensor, group_size: int = 128, scale_fmt: str = "float32", layout: str = "row_major",
                 *, pad_m: int = 1, fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` like ``triton_quant.quantize_act``: 2-D ``[M_pad, K]`` for a non-row-major layout or
    ``pad_m > 1``; padding rows are zeros with finite scales."""
    layout, scale_fmt = str(layout), str(scale_fmt)
    if (x.is_cuda and fp8_dtype == torch.float8_e4m3fn and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and group_size >= 16 and not group_size & (group_size - 1) and importlib.util.find_spec("triton")):
        from blockfp8.backends import triton_quant

        return triton_quant.quantize_act(x, group_size, scale_fmt, layout, pad_m=pad_m, fp8_dtype=fp8_dtype)
    return _reference_path(x, group_size, scale_fmt, layout, pad_m, fp8_dtype)


def _reference_path(x, group_size, scale_fmt, layout, pad_m, fp8_dtype):
    from blockfp8.quant import reference as R

    k = x.shape[-1]
    if layout == "row_major" and pad_m == 1:
        return R.quantize_act(x, group_size, scale_fmt, fp8_dtype=fp8_dtype)
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    m_pad = R.cdiv(m, pad_m) * pad_m
    if m_pad != m:
        x2 = torch.cat([x2, x2.new_zeros((m_pad - m, k))])
    q, s = R.quantize_act(x2, group_size, scale_fmt, fp8_dtype=fp8_dtype)
    if layout == "row_major":
        return q, s
    if layout == "packed_ue8m0":
        return q, R.pack_ue8m0(s)
    if layout == "mn_major":
        storage = s.new_zeros((s.shape[1], R.tma_aligned(m_pad)))
        storage[:, :m_pad] = s.t()
        return q, storage.t()[:m_pad]
    raise R.QuantError(f"layout={layout!r} is not valid; valid values: row_major, mn_major, packed_ue8m0")
