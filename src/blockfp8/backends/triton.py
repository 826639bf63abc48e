"""Triton block-FP8 GEMM: any CUDA GPU with FP8 tensor cores (SM >= 8.9), float32 or UE8M0 scales, row-major.

The kernels live in ``blockfp8.backends.triton_gemm`` / ``triton_quant`` and are imported inside methods only,
so importing this module never imports Triton.
"""

from __future__ import annotations

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

MIN_CAPABILITY = (8, 9)
_OUT_DTYPES = ("bfloat16", "float16", "float32")
_FP8_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz")
MIN_BLOCK = 16  # tl.dot needs tiles of at least 16


class TritonBackend:
    name: ClassVar[BackendId] = BackendId.TRITON

    def is_supported(self, platform: Platform) -> tuple[bool, str]:
        if platform.capability is None:
            return False, "no CUDA GPU (set BLOCKFP8_ARCH to plan for one)"
        if platform.capability < MIN_CAPABILITY:
            return False, f"needs FP8 tensor cores (SM >= 8.9), this is {platform.arch}"
        if not platform.has("triton"):
            return False, "triton not installed"
        return True, f"triton {platform.triton_version or ''} on {platform.arch}".replace("  ", " ")

    def can_implement(self, problem: GemmProblem) -> tuple[bool, str]:
        if problem.out_dtype not in _OUT_DTYPES:
            return False, f"output dtype {problem.out_dtype} is not one of {', '.join(_OUT_DTYPES)}"
        if problem.fp8_dtype not in _FP8_DTYPES:
            return False, f"fp8 dtype {problem.fp8_dtype} is not one of {', '.join(_FP8_DTYPES)}"
        bad = [b for b in problem.block_size if b < MIN_BLOCK or b & (b - 1)]
        if bad:
            return False, f"block size {list(problem.block_size)}: Triton tiles need powers of two >= {MIN_BLOCK}"
        return True, "any N and K (ragged edges masked)"

    def required_scale_fmt(self, platform: Platform) -> ScaleFmt | None:
        return None

    def scale_layouts(self, platform: Platform) -> tuple[ScaleLayout, ScaleLayout]:
        return ScaleLayout.ROW_MAJOR, ScaleLayout.ROW_MAJOR

    def prepare_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision,
                       block_size: tuple[int, int]) -> PreparedWeight:
        check_decision_for(decision, self.name)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        return PreparedWeight(self.name, weight, scale.contiguous(), checkpoint_weight=w_q,
                              checkpoint_scale=checkpoint_scale, block_size=tuple(block_size))

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        from blockfp8.backends import triton_quant

        check_decision_for(decision, self.name)
        return triton_quant.quantize_act(x, group_size, decision.act_scale_fmt, decision.act_scale_layout)

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        from blockfp8.backends import triton_gemm

        return triton_gemm.fp8_block_gemm(x_q, x_scale, prepared.weight, prepared.scale, prepared.block_size,
                                          out_dtype, bias)
