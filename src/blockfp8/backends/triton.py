"""Triton block-FP8 GEMM: any CUDA GPU with FP8 tensor cores (SM >= 8.9), float32 or UE8M0 scales, row-major.

The kernels live in ``blockfp8.kernels.triton`` and are imported inside methods only, so importing this module
never imports Triton. What a launch needs (the tuned tile configs for this GPU, the interpreter choice for CPU
tensors) is settled when the weight is prepared, not per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from blockfp8.backends import tuned
from blockfp8.backends.base import (
    BackendId,
    Decision,
    GemmProblem,
    PreparedMoE,
    PreparedWeight,
    ScaleFmt,
    ScaleLayout,
    check_decision_for,
    prepare_grouped_moe,
    quantize_act_unpadded,
    scales_for_decision,
)
from blockfp8.kernels.ops import ops

if TYPE_CHECKING:
    import torch

    from blockfp8.platform import Platform

MIN_CAPABILITY = (8, 9)
_OUT_DTYPES = ("bfloat16", "float16", "float32")
_FP8_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz")
MIN_BLOCK = 16  # tl.dot needs tiles of at least 16


class TritonBackend:
    name: ClassVar[BackendId] = BackendId.TRITON
    moe_activations: ClassVar[tuple[str, ...]] = ("silu",)  # grouped MoE: kernels.triton.moe.fused_moe
    moe_kernel: ClassVar[str] = "fused_moe (Triton grouped GEMM, one launch per projection)"

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
        from blockfp8.kernels import triton as kernels
        from blockfp8.kernels.triton.gemm import encode_config

        check_decision_for(decision, self.name)
        kernels.use_device(w_q.device)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        # The tuned launch config per M bucket, as the operator takes it (an empty list: the launcher's default).
        configs = {b: encode_config(c) for b, c in tuned.triton_configs(decision.tuned_keys, *w_q.shape).items()}
        return PreparedWeight(self.name, weight, scale.contiguous(), checkpoint_weight=w_q,
                              checkpoint_scale=checkpoint_scale, block_size=tuple(block_size),
                              extra={"configs": configs})

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_act_unpadded(self.name, x, decision, group_size, True)

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        configs = prepared.extra.get("configs")
        config = configs[tuned.m_bucket(x_q.shape[0])] if configs else []
        bn, bk = prepared.block_size
        return ops.gemm_triton(x_q, x_scale, prepared.weight, prepared.scale, bn, bk, out_dtype, bias, config)

    # ------------------------------------------------------------------ grouped MoE (GroupedMoEBackend)
    def prepare_moe(self, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor,
                    decision: Decision, intermediate: int, block_size: tuple[int, int],
                    activation: str = "silu") -> PreparedMoE:
        from blockfp8.kernels import triton as kernels

        check_decision_for(decision, self.name)
        kernels.use_device(w13.device)
        return prepare_grouped_moe(self, w13, w13_scale, w2, w2_scale, decision, intermediate, block_size, activation)

    def moe(self, x: torch.Tensor, prepared: PreparedMoE, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
            decision: Decision) -> torch.Tensor:
        check_decision_for(decision, self.name)
        bn, bk = prepared.block_size
        return ops.moe_triton(x, prepared.w13, prepared.w13_scale, prepared.w2, prepared.w2_scale, topk_weights,
                              topk_ids, bn, bk, decision.act_scale_fmt.value)
