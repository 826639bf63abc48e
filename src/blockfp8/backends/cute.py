"""CuTe DSL block-FP8 GEMM on Hopper (SM90): warp-specialised, TMA-fed, float32 or UE8M0 scales, row-major.

The kernel lives in ``blockfp8.kernels.cutedsl`` and needs the optional ``nvidia-cutlass-dsl`` and
``apache-tvm-ffi`` packages (``pip install 'blockfp8[cute]'``). It is one of the automatic choice's candidates
where installed; the per-M dispatch table picks it in the cells where it measured fastest. Each M bucket's tile
config is settled when the weight is prepared, and its kernel compiled then (a few seconds per config, once per
process), never in a forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from blockfp8.backends import tuned
from blockfp8.backends.base import (
    BackendId,
    Decision,
    GemmProblem,
    PreparedWeight,
    ScaleFmt,
    ScaleLayout,
    check_decision_for,
    quantize_act_unpadded,
    scales_for_decision,
)
from blockfp8.kernels.cutedsl.gemm import unsupported
from blockfp8.kernels.ops import ops

if TYPE_CHECKING:
    import torch

    from blockfp8.platform import Platform

class CuteBackend:
    name: ClassVar[BackendId] = BackendId.CUTE

    def is_supported(self, platform: Platform) -> tuple[bool, str]:
        if platform.capability is None:
            return False, "no CUDA GPU (set BLOCKFP8_ARCH to plan for one)"
        if platform.capability != (9, 0):
            return False, f"the CuTe DSL kernel is built for sm_90a (H100/H200), this is {platform.arch}"
        if not platform.has("cute_dsl"):
            return False, "nvidia-cutlass-dsl / apache-tvm-ffi not installed (pip install 'blockfp8[cute]')"
        return True, f"CuTe DSL {platform.cute_dsl_version or ''} on {platform.arch}".replace("  ", " ")

    def can_implement(self, problem: GemmProblem) -> tuple[bool, str]:
        if tuple(problem.block_size) != (128, 128):
            return False, f"weight block size {list(problem.block_size)}: the kernel's K step is one 128 x 128 block"
        why = unsupported(problem.n, problem.k, problem.out_dtype, problem.fp8_dtype)
        return (False, why) if why else (True, "ragged M, N, K within TMA alignment")

    def required_scale_fmt(self, platform: Platform) -> ScaleFmt | None:
        return None

    def scale_layouts(self, platform: Platform) -> tuple[ScaleLayout, ScaleLayout]:
        return ScaleLayout.ROW_MAJOR, ScaleLayout.ROW_MAJOR

    def prepare_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor, decision: Decision,
                       block_size: tuple[int, int]) -> PreparedWeight:
        from blockfp8.kernels.cutedsl import gemm

        check_decision_for(decision, self.name)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        n = w_q.shape[0]
        configs = {}
        if w_q.device.type == "cuda":
            configs = {b: list(gemm.default_config(b, n, gemm.num_sms(w_q.device))) for b in tuned.M_BUCKETS}
            gemm.precompile({tuple(c) for c in configs.values()}, w_q.device)
        return PreparedWeight(self.name, weight.contiguous(), scale.float().contiguous(), checkpoint_weight=w_q,
                              checkpoint_scale=checkpoint_scale, block_size=tuple(block_size),
                              extra={"configs": configs})

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_act_unpadded(self.name, x, decision, group_size, decision.fused_act_quant)

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        configs = prepared.extra.get("configs")
        config = configs[tuned.m_bucket(x_q.shape[0])] if configs else []
        return ops.gemm_cute(x_q, x_scale, prepared.weight, prepared.scale, out_dtype, bias, config)
