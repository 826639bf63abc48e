"""torch ``scaled_mm`` with cuBLASLt block scaling (1x128 activations, 128x128 weights): SM90 only, torch >= 2.9.

float32 scales; activation scales MN-major (strides (1, M)), weight scales passed as a transposed view. The call
itself lives in ``kernels.scaled_mm``; this adapter says when it can run and prepares what it takes.
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
from blockfp8.kernels.ops import ops

if TYPE_CHECKING:
    import torch

    from blockfp8.platform import Platform

MIN_TORCH = (2, 9)
K_ALIGN, N_ALIGN = 128, 16


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
        if problem.n % N_ALIGN:
            return False, f"N={problem.n}: scaled_mm needs N % {N_ALIGN} == 0"
        if problem.k % K_ALIGN:
            return True, (f"K={problem.k} padded with zeros to a multiple of {K_ALIGN} (weight once, "
                          "activation per call)")
        return True, "shape and dtypes fit"

    def required_scale_fmt(self, platform: Platform) -> ScaleFmt | None:
        return None

    def scale_layouts(self, platform: Platform) -> tuple[ScaleLayout, ScaleLayout]:
        return ScaleLayout.MN_MAJOR, ScaleLayout.ROW_MAJOR

    def prepare_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision,
                       block_size: tuple[int, int]) -> PreparedWeight:
        from blockfp8.kernels.act_quant import pad_columns
        from blockfp8.kernels.scaled_mm import pad_weight_scale

        check_decision_for(decision, self.name)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        return PreparedWeight(self.name, pad_columns(weight, K_ALIGN).contiguous(), pad_weight_scale(scale),
                              checkpoint_weight=w_q, checkpoint_scale=checkpoint_scale, block_size=tuple(block_size))

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from blockfp8.kernels.scaled_mm import M_ALIGN

        # M-major scales written directly, rows padded to a multiple of 4 in the storage behind the returned
        # [M, ...] views, so the GEMM reaches the padded rows without a copy; a ragged K gets its zero columns in
        # the same pass.
        check_decision_for(decision, self.name)
        x2 = x.reshape(-1, x.shape[-1])
        x_q, scale = ops.quantize_act(x2, group_size, decision.act_scale_fmt.value, decision.act_scale_layout.value,
                                      M_ALIGN, K_ALIGN, getattr(torch, decision.fp8_dtype), decision.fused_act_quant)
        return x_q[:x2.shape[0]], scale[:x2.shape[0]]

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        return ops.gemm_scaled_mm(x_q, x_scale, prepared.weight, prepared.scale, out_dtype, bias)
