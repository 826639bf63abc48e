"""Fused 1 x G activation quantization in Triton, bit-identical to ``quant.reference.quantize_act``.

One pass over ``x[M, K]``: per row and 128-wide group, ``amax`` -> scale (``max(amax, eps) / 448`` correctly
rounded, then for UE8M0 the exponent ceil on the float32 bit pattern) -> ``q = clamp(x / s, +-448)`` (the
quotient correctly rounded, from one reciprocal per row and a Newton step: ``_act_quant_kernels.group_quant``)
-> FP8. Scales are written directly in the layout the chosen GEMM takes:

* ``row_major``    float32 ``[M, G]`` contiguous (Triton GEMM, reference);
* ``mn_major``     float32 ``[M, G]`` with strides ``(1, align(M, 4))`` (torch ``scaled_mm``, DeepGEMM SM90);
* ``packed_ue8m0`` int32 ``[M, ceil(G/4)]`` with strides ``(1, align(M, 4))``, 4 exponent bytes per word along K,
  byte ``g % 4`` little-endian (DeepGEMM family 100); needs ``scale_fmt="ue8m0"``.

``pad_m`` pads the row count (zero rows, finite scales) so that kernels with an M alignment rule (``scaled_mm``
rejects M=1) can take the buffers as they are; the caller slices the GEMM output back to M rows. ``pad_k`` writes
zero columns up to a multiple of it inside the last group (kernels that take whole 128-wide K blocks), in the
same pass: a ragged K costs no extra copy.

NaN/Inf follow the reference: a non-finite element makes its group's scale non-finite (NaN for UE8M0) and the
group's values NaN (``tl.max`` drops NaN on GPU, so NaN is tracked explicitly).

On CPU tensors the kernel runs in Triton's interpreter (small shapes only: that is for tests).
"""

from __future__ import annotations

import functools

import torch

from blockfp8.kernels.act_quant import padded_width
from blockfp8.kernels.triton import check_device
from blockfp8.quant.layouts import ScaleFmt, ScaleLayout, empty_scales
from blockfp8.quant.reference import ACT_EPS, QuantError, cdiv

_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _kernels():
    """Build the Triton kernels once (Triton picks GPU or interpreter at decoration time)."""
    from blockfp8.kernels.triton import _act_quant_kernels as k

    return {"quantize_act": k._quantize_act_kernel}


def quantize_act(
    x: torch.Tensor,
    group_size: int = 128,
    scale_fmt: ScaleFmt | str = ScaleFmt.FLOAT32,
    layout: ScaleLayout | str = ScaleLayout.ROW_MAJOR,
    *,
    pad_m: int = 1,
    pad_k: int = 1,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    block_m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x[..., K]`` in 1 x ``group_size`` groups. Returns ``(q, scale)``.

    ``row_major`` with no padding keeps the leading dims (``q[..., K]``, ``scale[..., G]``), like the reference.
    Other layouts, or ``pad_m > 1`` or ``pad_k > 1``, flatten to 2-D: ``q[M_pad, K_pad]`` and ``scale[M_pad, G]``
    in ``layout`` (``M_pad`` = M rounded up to ``pad_m``, ``K_pad`` = K rounded up to ``pad_k``; padding rows are
    zeros with finite scales, padding columns zeros).
    """
    if not isinstance(x, torch.Tensor):
        raise QuantError(f"activation: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _INPUT_DTYPES:
        raise QuantError(f"activation: dtype {x.dtype} is not supported by the Triton quantizer (float32/bf16/fp16)")
    if fp8_dtype != torch.float8_e4m3fn:
        raise QuantError(f"fp8_dtype={fp8_dtype}: the Triton quantizer writes float8_e4m3fn only")
    if scale_fmt not in ("float32", "ue8m0"):
        raise QuantError(f"scale_fmt={scale_fmt!r} is not valid; valid values: float32, ue8m0")
    layout = ScaleLayout.parse(layout)
    if layout is ScaleLayout.PACKED_UE8M0 and scale_fmt != "ue8m0":
        raise QuantError("layout='packed_ue8m0' holds exponent bytes: it needs scale_fmt='ue8m0'")
    if group_size <= 0 or group_size & (group_size - 1) or group_size < 16:
        raise QuantError(f"group_size={group_size}: the Triton quantizer needs a power of two >= 16")
    if x.dim() < 1:
        raise QuantError("activation: expected at least 1 dimension [..., K], got a scalar")
    *lead, k = x.shape
    x2 = x.reshape(-1, k)
    if k and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    m_rows = cdiv(m, pad_m) * pad_m if m else 0
    groups = cdiv(k, group_size) if k else 0
    width = padded_width(k, group_size, pad_k)
    q = torch.empty((m_rows, width), dtype=fp8_dtype, device=x.device)
    scale = empty_scales(m_rows, groups, layout, x.device)
    if m_rows and groups:
        # Triton 3.9's interpreter rounds float32 -> e4m3 wrongly where the mantissa carries into the exponent
        # (124.3 -> 64): on CPU the kernel writes float32 values and torch does the (RNE) cast; on GPU the
        # kernel's own cvt.rn runs and the GPU tests check it bit for bit.
        q_out = q if x.is_cuda else torch.empty((m_rows, width), dtype=torch.float32)
        packed = layout is ScaleLayout.PACKED_UE8M0
        gpp = 4 if packed else 1
        bm = block_m or (32 if x.is_cuda else 16)
        grid = (cdiv(m_rows, bm), cdiv(groups, gpp))
        check_device(x.device)
        kern = _kernels()["quantize_act"]
        kern[grid](
            x2, q_out, scale, m, k, width, m_rows, groups,
            x2.stride(0), q.stride(0), scale.stride(0), scale.stride(1),
            ACT_EPS, float(torch.finfo(fp8_dtype).max),
            UE8M0=scale_fmt == "ue8m0", PACKED=packed,
            GROUP=group_size, GROUPS_PER_PROG=gpp, BLOCK_M=bm,
            num_warps=4,
        )
        if q_out is not q:
            q.copy_(q_out.to(fp8_dtype))
    if layout is ScaleLayout.ROW_MAJOR and m_rows == m and width == k:
        return q.reshape(*lead, k), scale.reshape(*lead, groups)
    return q, scale
