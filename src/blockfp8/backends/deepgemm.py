"""DeepGEMM (``deep_gemm``): block-scaled FP8 GEMMs JIT-compiled for SM90 and SM100/SM103.

On Hopper it takes float32 scales (UE8M0 only when asked); on family 100 its block-scaled MMA takes only UE8M0
scales, packed 4 per int32 (which is why the accuracy guard exists). ``deep_gemm`` is imported inside methods
only: importing this module never touches it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
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

DENSE_KERNEL = "fp8_gemm_nt"
GROUPED_KERNEL = "m_grouped_fp8_gemm_nt_contiguous"
SUPPORTED_FAMILIES = (90, 100)
N_ALIGN, K_ALIGN = 64, 128


def load_deep_gemm() -> tuple[ModuleType | None, str]:
    """The ``deep_gemm`` module, or None and why it cannot be used."""
    if importlib.util.find_spec("deep_gemm") is None:
        return None, "deep_gemm not installed"
    try:
        return importlib.import_module("deep_gemm"), ""
    except Exception as exc:  # a broken build raises anything from ImportError to OSError
        return None, f"deep_gemm is installed but does not import ({type(exc).__name__}: {exc})"


class DeepGemmBackend:
    name: ClassVar[BackendId] = BackendId.DEEPGEMM

    def is_supported(self, platform: Platform) -> tuple[bool, str]:
        if platform.capability is None:
            return False, "no CUDA GPU (set BLOCKFP8_ARCH to plan for one)"
        if platform.family not in SUPPORTED_FAMILIES:
            return False, f"needs SM90 or SM100/SM103, this is {platform.arch}"
        if not platform.has("deep_gemm"):
            return False, "deep_gemm not installed"
        module, why = load_deep_gemm()
        if module is None:
            return False, why
        if not hasattr(module, DENSE_KERNEL):
            return False, f"deep_gemm has no {DENSE_KERNEL} (an unsupported version)"
        return True, f"deep_gemm with {DENSE_KERNEL} on {platform.arch}"

    def can_implement(self, problem: GemmProblem) -> tuple[bool, str]:
        if problem.out_dtype != "bfloat16":
            return False, f"output dtype {problem.out_dtype}: DeepGEMM writes bfloat16 only"
        if problem.fp8_dtype != "float8_e4m3fn":
            return False, f"fp8 dtype {problem.fp8_dtype}: DeepGEMM takes float8_e4m3fn only"
        if tuple(problem.block_size) != (128, 128):
            return False, f"weight block size {list(problem.block_size)}: DeepGEMM takes [128, 128] only"
        if problem.n % N_ALIGN or problem.k % K_ALIGN:
            return False, f"N={problem.n}, K={problem.k}: DeepGEMM needs N % {N_ALIGN} == 0 and K % {K_ALIGN} == 0"
        if problem.grouped:
            module, why = load_deep_gemm()
            if module is None:
                return False, why
            if not hasattr(module, GROUPED_KERNEL):
                return False, f"grouped (MoE) GEMM needs deep_gemm.{GROUPED_KERNEL}, which this version lacks"
        return True, "shape and dtypes fit"

    def required_scale_fmt(self, platform: Platform) -> ScaleFmt | None:
        return ScaleFmt.UE8M0 if platform.family == 100 else None

    def scale_layouts(self, platform: Platform) -> tuple[ScaleLayout, ScaleLayout]:
        if platform.family == 100:
            return ScaleLayout.PACKED_UE8M0, ScaleLayout.PACKED_UE8M0
        return ScaleLayout.MN_MAJOR, ScaleLayout.ROW_MAJOR

    def prepare_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision,
                       block_size: tuple[int, int]) -> PreparedWeight:
        from blockfp8.quant import reference as ref

        check_decision_for(decision, self.name)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        if decision.weight_scale_layout is ScaleLayout.PACKED_UE8M0:
            # SM100 takes one scale per weight row and 128-K group: broadcast the 128-row blocks, then pack.
            per_row = scale.repeat_interleave(block_size[0], dim=0)[: w_q.shape[0]]
            scale = ref.pack_ue8m0(per_row.contiguous())
        return PreparedWeight(self.name, weight, scale, checkpoint_weight=w_q, checkpoint_scale=checkpoint_scale,
                              block_size=tuple(block_size))

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from blockfp8.backends import act_quant

        # The fused quantizer (Triton on CUDA, the reference elsewhere; a shared kernel module, not a backend)
        # writes the scales straight into this family's layout: MN-major float32 (SM90) or packed UE8M0 (SM100).
        check_decision_for(decision, self.name)
        return act_quant.quantize_act(x, group_size, str(decision.act_scale_fmt), str(decision.act_scale_layout),
                                      fp8_dtype=getattr(torch, decision.fp8_dtype))

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        if out_dtype != torch.bfloat16:
            raise ValueError(f"out_dtype={out_dtype}: DeepGEMM writes bfloat16 only")
        module, why = load_deep_gemm()
        if module is None:
            raise RuntimeError(f"deepgemm backend: {why}")
        out = torch.empty((x_q.shape[0], prepared.weight.shape[0]), dtype=torch.bfloat16, device=x_q.device)
        getattr(module, DENSE_KERNEL)((x_q, x_scale), (prepared.weight, prepared.scale), out)
        return out if bias is None else out + bias
