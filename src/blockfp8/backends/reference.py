"""The reference backend: pure torch on any device, the numerical source of truth (``quant.reference``).

Exact to the definition, always available: the last resort of the policy and what every kernel is compared with.

On the CPU a layer keeps its weight dequantized once (float32, ``prepared.extra["dequantized"]``, 4 bytes per
parameter beside the FP8 copy) and an eager forward multiplies by it: the same float32 operations as
``gemm_reference``, so the same bits, without dequantizing the weight at every call (which made CPU generation
~12x slower than bf16). Under ``torch.compile`` / ``torch.export`` the layer still records the
``blockfp8.gemm_reference`` operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

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

_FP8_DTYPES = ("float8_e4m3fn", "float8_e4m3fnuz")
_OUT_DTYPES = ("bfloat16", "float16", "float32")


class ReferenceBackend:
    name: ClassVar[BackendId] = BackendId.REFERENCE
    moe_activations: ClassVar[tuple[str, ...]] = ("silu",)  # grouped MoE: quant.reference.moe_reference
    moe_kernel: ClassVar[str] = "moe_reference (one operator, expert by expert inside)"

    def is_supported(self, platform: Platform) -> tuple[bool, str]:
        return True, "pure torch, runs on any device"

    def can_implement(self, problem: GemmProblem) -> tuple[bool, str]:
        if problem.fp8_dtype not in _FP8_DTYPES:
            return False, f"fp8 dtype {problem.fp8_dtype} is not one of {', '.join(_FP8_DTYPES)}"
        if problem.out_dtype not in _OUT_DTYPES:
            return False, f"output dtype {problem.out_dtype} is not one of {', '.join(_OUT_DTYPES)}"
        return True, "any shape and block size"

    def required_scale_fmt(self, platform: Platform) -> ScaleFmt | None:
        return None

    def scale_layouts(self, platform: Platform) -> tuple[ScaleLayout, ScaleLayout]:
        return ScaleLayout.ROW_MAJOR, ScaleLayout.ROW_MAJOR

    def prepare_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision,
                       block_size: tuple[int, int]) -> PreparedWeight:
        """Keeps the checkpoint scales (as float32); requantizes to UE8M0 only when the decision says so."""
        check_decision_for(decision, self.name)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        extra = {}
        if weight.device.type == "cpu":
            from blockfp8.quant.reference import dequantize_weight

            extra["dequantized"] = dequantize_weight(weight, scale, block_size)
        return PreparedWeight(self.name, weight, scale, checkpoint_weight=w_q, checkpoint_scale=checkpoint_scale,
                              block_size=tuple(block_size), extra=extra)

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_act_unpadded(self.name, x, decision, group_size, False)

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        bn, bk = prepared.block_size
        w = prepared.extra.get("dequantized")
        if w is not None and not torch.compiler.is_compiling():  # gemm_reference's operations, weight cached
            from blockfp8.quant.reference import dequantize_act

            out = dequantize_act(x_q, x_scale, bk) @ w.t()
            if bias is not None:
                out = out + bias.to(torch.float32)
            return out.to(out_dtype)
        return ops.gemm_reference(x_q, x_scale, prepared.weight, prepared.scale, bn, bk, out_dtype, bias)

    # ------------------------------------------------------------------ grouped MoE (GroupedMoEBackend)
    def prepare_moe(self, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor,
                    decision: Decision, intermediate: int, block_size: tuple[int, int],
                    activation: str = "silu") -> PreparedMoE:
        return prepare_grouped_moe(self, w13, w13_scale, w2, w2_scale, decision, intermediate, block_size, activation)

    def moe(self, x: torch.Tensor, prepared: PreparedMoE, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
            decision: Decision) -> torch.Tensor:
        """The whole MoE as one operator (``quant.reference.moe_reference``): expert by expert inside, so it
        syncs with the host (a reference, not for CUDA graphs), but ``torch.compile`` sees one call."""
        check_decision_for(decision, self.name)
        bn, bk = prepared.block_size
        return ops.moe_reference(x, prepared.w13, prepared.w13_scale, prepared.w2, prepared.w2_scale, topk_weights,
                                 topk_ids, bn, bk, decision.act_scale_fmt.value, x.dtype)
