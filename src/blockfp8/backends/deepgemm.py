"""DeepGEMM (``deep_gemm``): block-scaled FP8 GEMMs JIT-compiled for SM90 and SM100/SM103.

On Hopper it takes float32 scales (UE8M0 only when asked); on family 100 its block-scaled MMA takes only UE8M0
scales, packed 4 per int32 (which is why the accuracy guard exists). MoE layers run DeepGEMM's grouped kernels
(``kernels.deepgemm_moe``: the masked kernel for decode, the contiguous one for prefill), never a loop over experts;
a ``deep_gemm`` without them is skipped for MoE with the reason, so the next grouped backend runs. On a real GPU
the first support check runs a smoke GEMM in a child process (``kernels.deepgemm.smoke``): a build that crashes
is skipped with the signal as the reason. ``deep_gemm`` is imported inside methods only: importing this module
never touches it.
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
    scales_for_decision,
)
from blockfp8.kernels import deepgemm as dg
from blockfp8.kernels import deepgemm_moe as dg_moe
from blockfp8.kernels.ops import ops

if TYPE_CHECKING:
    import torch

    from blockfp8.platform import Platform

SUPPORTED_FAMILIES = (90, 100)


class DeepGemmBackend:
    name: ClassVar[BackendId] = BackendId.DEEPGEMM
    moe_activations: ClassVar[tuple[str, ...]] = ("silu",)  # grouped MoE: kernels.deepgemm_moe.fused_moe
    moe_kernel: ClassVar[str] = (f"DeepGEMM {dg_moe.MASKED_KERNEL} (T <= {dg_moe.MASKED_MAX_TOKENS} tokens) / "
                                 f"{dg_moe.CONTIGUOUS_KERNEL} (more tokens)")

    def is_supported(self, platform: Platform) -> tuple[bool, str]:
        if platform.capability is None:
            return False, "no CUDA GPU (set BLOCKFP8_ARCH to plan for one)"
        if platform.family not in SUPPORTED_FAMILIES:
            return False, f"needs SM90 or SM100/SM103, this is {platform.arch}"
        if not platform.has("deep_gemm"):
            return False, "deep_gemm not installed"
        module, why = dg.load()
        if module is None:
            return False, why
        if not hasattr(module, dg.DENSE_KERNEL):
            return False, f"deep_gemm has no {dg.DENSE_KERNEL} (an unsupported version)"
        if platform.device == "cuda" and not platform.simulated:
            ok, why = dg.smoke_cached()
            if not ok:
                return False, why
        return True, f"deep_gemm with {dg.DENSE_KERNEL} on {platform.arch}"

    def can_implement(self, problem: GemmProblem) -> tuple[bool, str]:
        if problem.out_dtype != "bfloat16":
            return False, f"output dtype {problem.out_dtype}: DeepGEMM writes bfloat16 only"
        if problem.fp8_dtype != "float8_e4m3fn":
            return False, f"fp8 dtype {problem.fp8_dtype}: DeepGEMM takes float8_e4m3fn only"
        if tuple(problem.block_size) != (128, 128):
            return False, f"weight block size {list(problem.block_size)}: DeepGEMM takes [128, 128] only"
        if problem.n % dg.N_ALIGN:
            return False, f"N={problem.n}: DeepGEMM needs N % {dg.N_ALIGN} == 0"
        if problem.k % dg.K_ALIGN and problem.grouped:
            return False, f"K={problem.k}: DeepGEMM's grouped kernels need K % {dg.K_ALIGN} == 0"
        if problem.grouped:
            module, why = dg.load()
            if module is None:
                return False, why
            missing = [f for f in (*dg_moe.GROUPED_KERNELS, dg_moe.ALIGNMENT_QUERY) if not hasattr(module, f)]
            if missing:
                return False, (f"grouped (MoE) GEMMs need deep_gemm.{', deep_gemm.'.join(missing)}, which this "
                               "version lacks")
        if problem.k % dg.K_ALIGN:
            return True, (f"K={problem.k} padded with zeros to a multiple of {dg.K_ALIGN} (weight once, "
                          "activation per call)")
        return True, "shape and dtypes fit"

    def required_scale_fmt(self, platform: Platform) -> ScaleFmt | None:
        return ScaleFmt.UE8M0 if platform.family == 100 else None

    def scale_layouts(self, platform: Platform) -> tuple[ScaleLayout, ScaleLayout]:
        if platform.family == 100:
            return ScaleLayout.PACKED_UE8M0, ScaleLayout.PACKED_UE8M0
        return ScaleLayout.MN_MAJOR, ScaleLayout.ROW_MAJOR

    def prepare_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision,
                       block_size: tuple[int, int]) -> PreparedWeight:
        from blockfp8.kernels.act_quant import pad_columns
        from blockfp8.quant.layouts import pack_ue8m0_per_row

        check_decision_for(decision, self.name)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        weight = pad_columns(weight, dg.K_ALIGN).contiguous()
        if decision.weight_scale_layout is ScaleLayout.PACKED_UE8M0:
            # SM100 takes one scale per weight row and 128-K group: the 128-row blocks broadcast, then packed.
            scale = pack_ue8m0_per_row(scale, w_q.shape[0], block_size[0])
        module, why = dg.load_cached()  # the operator calls the same module; a broken install fails here, at load
        if module is None:
            raise RuntimeError(f"deepgemm backend: {why}")
        return PreparedWeight(self.name, weight, scale, checkpoint_weight=w_q, checkpoint_scale=checkpoint_scale,
                              block_size=tuple(block_size))

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        # The scales go straight into this family's layout: MN-major float32 (SM90) or packed UE8M0 (SM100); a
        # ragged K gets its zero columns in the same pass.
        check_decision_for(decision, self.name)
        return ops.quantize_act(x.reshape(-1, x.shape[-1]), group_size, decision.act_scale_fmt.value,
                                decision.act_scale_layout.value, 1, dg.K_ALIGN, getattr(torch, decision.fp8_dtype),
                                decision.fused_act_quant)

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        if out_dtype != torch.bfloat16:
            raise ValueError(f"out_dtype={out_dtype}: DeepGEMM writes bfloat16 only")
        out = ops.gemm_deepgemm(x_q, x_scale, prepared.weight, prepared.scale)
        return out if bias is None else out + bias

    # ------------------------------------------------------------------ grouped MoE (GroupedMoEBackend)
    def prepare_moe(self, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor,
                    decision: Decision, intermediate: int, block_size: tuple[int, int],
                    activation: str = "silu") -> PreparedMoE:
        from blockfp8.quant.layouts import pack_ue8m0_per_row

        prepared = prepare_grouped_moe(self, w13, w13_scale, w2, w2_scale, decision, intermediate, block_size,
                                       activation)
        module, why = dg.load_cached()
        if module is None:
            raise RuntimeError(f"deepgemm backend: {why}")
        if decision.weight_scale_layout is ScaleLayout.PACKED_UE8M0:  # SM100: one packed scale per weight row
            prepared.w13_scale = pack_ue8m0_per_row(prepared.w13_scale, prepared.w13.shape[1], block_size[0])
            prepared.w2_scale = pack_ue8m0_per_row(prepared.w2_scale, prepared.w2.shape[1], block_size[0])
        # The contiguous kernel's tile height, read once here: what every expert's run is padded to.
        prepared.extra = {"align_m": int(getattr(module, dg_moe.ALIGNMENT_QUERY)()),
                          "masked_max_tokens": dg_moe.MASKED_MAX_TOKENS}
        return prepared

    def moe(self, x: torch.Tensor, prepared: PreparedMoE, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
            decision: Decision) -> torch.Tensor:
        check_decision_for(decision, self.name)
        return ops.moe_deepgemm(x, prepared.w13, prepared.w13_scale, prepared.w2, prepared.w2_scale, topk_weights,
                                topk_ids, decision.act_scale_fmt.value, prepared.extra["align_m"],
                                prepared.extra["masked_max_tokens"], decision.fused_act_quant)
