"""torch ``scaled_mm`` with cuBLASLt block scaling (1x128 activations, 128x128 weights): SM90 only, torch >= 2.9.

float32 scales; activation scales MN-major (strides (1, M)), weight scales passed as a transposed view.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from blockfp8.backends.base import (
    BackendId,
    Decision,
    GemmProblem,
    PreparedWeight,
    ScaleFmt,
    ScaleLayout,
    check_decision_for,
    scales_for_decision,
)

if TYPE_CHECKING:
    import torch

    from blockfp8.platform import Platform

MIN_TORCH = (2, 9)
K_ALIGN, N_ALIGN = 128, 16
M_ALIGN = 4  # cuBLASLt rejects M=1 (CUBLAS_STATUS_NOT_SUPPORTED); rows are padded to a multiple of 4


def _torch_version(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class ScaledMMBackend:
    name: ClassVar[BackendId] = BackendId.SCALED_MM

    def is_supported(self, platform: Platform) -> tuple[bool, str]:
        if platform.capability is None:
            return False, "no CUDA GPU (set BLOCKFP8_ARCH to plan for one)"
        if platform.family != 90:
            return False, f"cuBLASLt block scaling is SM90 only, this is {platform.arch}"
        if _torch_version(platform.torch_version) < MIN_TORCH:
            return False, f"needs torch >= {'.'.join(map(str, MIN_TORCH))}, this is {platform.torch_version}"
        import torch.nn.functional as F

        scaling = getattr(F, "ScalingType", None)
        if not hasattr(F, "scaled_mm") or not hasattr(scaling, "BlockWise1x128"):
            return False, f"torch {platform.torch_version} lacks F.scaled_mm / ScalingType.BlockWise1x128"
        return True, f"torch {platform.torch_version} scaled_mm on {platform.arch}"

    def can_implement(self, problem: GemmProblem) -> tuple[bool, str]:
        if problem.out_dtype != "bfloat16":
            return False, f"output dtype {problem.out_dtype}: block-scaled scaled_mm writes bfloat16 only"
        if problem.fp8_dtype != "float8_e4m3fn":
            return False, f"fp8 dtype {problem.fp8_dtype}: scaled_mm takes float8_e4m3fn only"
        if tuple(problem.block_size) != (128, 128):
            return False, f"weight block size {list(problem.block_size)}: cuBLASLt takes [128, 128] only"
        if problem.k % K_ALIGN or problem.n % N_ALIGN:
            return False, f"N={problem.n}, K={problem.k}: scaled_mm needs N % {N_ALIGN} == 0 and K % {K_ALIGN} == 0"
        return True, "shape and dtypes fit"

    def required_scale_fmt(self, platform: Platform) -> ScaleFmt | None:
        return None

    def scale_layouts(self, platform: Platform) -> tuple[ScaleLayout, ScaleLayout]:
        return ScaleLayout.MN_MAJOR, ScaleLayout.ROW_MAJOR

    def prepare_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision,
                       block_size: tuple[int, int]) -> PreparedWeight:
        import torch

        check_decision_for(decision, self.name)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        groups = scale.shape[1]
        if groups % 4:
            # torch 2.11's blockwise scaled_mm wants the weight scale's K groups padded to a multiple of 4
            # (K % 512 != 0, e.g. K=768: "scale_b must have shape 8 x 16"), seen on an H100; the padding is unread.
            scale = torch.nn.functional.pad(scale, (0, -groups % 4), value=1.0)
        return PreparedWeight(self.name, weight, scale.contiguous(), checkpoint_weight=w_q,
                              checkpoint_scale=checkpoint_scale, block_size=tuple(block_size))

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from blockfp8.backends import act_quant

        # The fused quantizer (Triton on CUDA, the reference elsewhere; a shared kernel module, not a backend)
        # writes M-major scales directly and pads the rows to a multiple of 4 in the storage behind the returned
        # [M, ...] views, so gemm() reaches the padded rows without a copy.
        check_decision_for(decision, self.name)
        m = x.reshape(-1, x.shape[-1]).shape[0]
        x_q, scale = act_quant.quantize_act(x, group_size, str(decision.act_scale_fmt),
                                            str(decision.act_scale_layout), pad_m=M_ALIGN,
                                            fp8_dtype=getattr(torch, decision.fp8_dtype))
        return x_q[:m], scale[:m]

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        m = x_q.shape[0]
        pad = -m % M_ALIGN
        if pad:
            padded = _rows_view(x_q, m + pad), _rows_view(x_scale, m + pad)
            if padded[0] is not None and padded[1] is not None:  # quantize_act left the rows in the storage
                x_q, x_scale = padded
            else:
                x_q = torch.nn.functional.pad(x_q.view(torch.uint8), (0, 0, 0, pad)).view(x_q.dtype)
                x_scale = torch.nn.functional.pad(x_scale, (0, 0, 0, pad), value=1.0).t().contiguous().t()
        out = F.scaled_mm(x_q, prepared.weight.t(), x_scale, F.ScalingType.BlockWise1x128, prepared.scale.t(),
                          F.ScalingType.BlockWise128x128, output_dtype=out_dtype, bias=bias)
        return out[:m] if pad else out


def _rows_view(t: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``t[:rows]`` beyond its end when its storage holds those rows (same strides), else None. Rows past M only
    reach output rows that are sliced away, so whatever they hold cannot change the result."""
    last = t.storage_offset() + (rows - 1) * t.stride(0) + (t.shape[1] - 1) * t.stride(1)
    if t.stride(0) < 0 or t.stride(1) < 0 or last >= t.untyped_storage().nbytes() // t.element_size():
        return None
    return t.as_strided((rows, t.shape[1]), t.stride())
