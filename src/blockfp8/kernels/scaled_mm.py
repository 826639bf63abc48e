"""torch's blockwise ``scaled_mm`` (cuBLASLt block scaling: 1 x 128 activation scales, 128 x 128 weight scales),
the one call of it in blockfp8: the ``scaled_mm`` backend and the benchmarks both run this.

SM90 only, torch >= 2.9, float32 scales, bf16 output. Activation scales MN-major (strides ``(1, M)``); weight
scales passed as a transposed view of the ``[N/128, K/128]`` block scales.
"""

from __future__ import annotations

import torch

M_ALIGN = 4  # cuBLASLt rejects M=1 (CUBLAS_STATUS_NOT_SUPPORTED); rows are padded to a multiple of 4


def pad_weight_scale(scale: torch.Tensor) -> torch.Tensor:
    """float32 block scales ``[N/128, G]`` with G padded to a multiple of 4, contiguous: torch 2.11's blockwise
    scaled_mm wants that (K % 512 != 0, e.g. K=768: "scale_b must have shape 8 x 16", seen on an H100); the
    padding is never read."""
    groups = scale.shape[1]
    if groups % 4:
        scale = torch.nn.functional.pad(scale, (0, -groups % 4), value=1.0)
    return scale.contiguous()


def blockwise_gemm(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                   out_dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``out[M, N] = (x_q * x_scale) @ (w_q * w_scale).T (+ bias)`` for ``x_q [M, K]`` FP8 with MN-major float32
    scales ``[M, K/128]``, ``w_q [N, K]`` with :func:`pad_weight_scale` scales. Rows are padded to
    :data:`M_ALIGN` when needed (without a copy when the quantizer left the padding rows in the storage)."""
    import torch.nn.functional as F

    m = x_q.shape[0]
    pad = -m % M_ALIGN
    if pad:
        padded = _rows_view(x_q, m + pad), _rows_view(x_scale, m + pad)
        if padded[0] is not None and padded[1] is not None:  # the quantizer left the rows in the storage
            x_q, x_scale = padded
        else:
            x_q = F.pad(x_q.view(torch.uint8), (0, 0, 0, pad)).view(x_q.dtype)
            x_scale = F.pad(x_scale, (0, 0, 0, pad), value=1.0).t().contiguous().t()
    out = F.scaled_mm(x_q, w_q.t(), x_scale, F.ScalingType.BlockWise1x128, w_scale.t(),
                      F.ScalingType.BlockWise128x128, output_dtype=out_dtype, bias=bias)
    return out[:m] if pad else out


def _rows_view(t: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``t[:rows]`` beyond its end when its storage holds those rows (same strides), else None. Rows past M only
    reach output rows that are sliced away, so whatever they hold cannot change the result."""
    last = t.storage_offset() + (rows - 1) * t.stride(0) + (t.shape[1] - 1) * t.stride(1)
    if t.stride(0) < 0 or t.stride(1) < 0 or last >= t.untyped_storage().nbytes() // t.element_size():
        return None
    return t.as_strided((rows, t.shape[1]), t.stride())
