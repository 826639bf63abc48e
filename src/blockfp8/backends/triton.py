"""Triton block-FP8 GEMM: any CUDA GPU with FP8 tensor cores (SM >= 8.9), float32 or UE8M0 scales, row-major.

The kernels live in ``blockfp8.kernels.triton`` and are imported inside methods only, so importing this module
never imports Triton. What a launch needs (the tuned tile configs for this GPU, the interpreter choice for CPU
tensors) is settled when the weight is prepared, not per call.
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
    moe_activations: ClassVar[tuple[str, ...]] = ("silu",)  # grouped MoE: kernels.triton.moe.fused_moe

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
        from blockfp8.backends import tuned
        from blockfp8.kernels import triton as kernels

        check_decision_for(decision, self.name)
        kernels.use_device(w_q.device)
        weight, scale, checkpoint_scale = scales_for_decision(w_q, w_scale, decision, block_size)
        configs = tuned.triton_configs(decision.tuned_keys, *w_q.shape)
        return PreparedWeight(self.name, weight, scale.contiguous(), checkpoint_weight=w_q,
                              checkpoint_scale=checkpoint_scale, block_size=tuple(block_size),
                              extra={"configs": configs})

    def quantize_act(self, x: torch.Tensor, decision: Decision, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        from blockfp8.kernels.triton import act_quant

        check_decision_for(decision, self.name)
        return act_quant.quantize_act(x, group_size, decision.act_scale_fmt, decision.act_scale_layout)

    def gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor, prepared: PreparedWeight, out_dtype: torch.dtype,
             bias: torch.Tensor | None = None) -> torch.Tensor:
        from blockfp8.backends.tuned import m_bucket
        from blockfp8.kernels.triton import gemm

        configs = prepared.extra.get("configs")
        config = configs[m_bucket(x_q.reshape(-1, x_q.shape[-1]).shape[0])] if configs else None
        return gemm.fp8_block_gemm(x_q, x_scale, prepared.weight, prepared.scale, prepared.block_size, out_dtype,
                                   bias, config=config)

    # ------------------------------------------------------------------ grouped MoE (GroupedMoEBackend)
    def prepare_moe(self, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor,
                    decision: Decision, intermediate: int, block_size: tuple[int, int],
                    activation: str = "silu") -> PreparedMoE:
        """The MoE layer blocks gate and up separately (``w13_scale [E, 2 * ceil(I/bn), ...]``); ``fused_moe``
        blocks the stacked ``[E, 2I, H]`` rows as one matrix (``[E, ceil(2I/bn), ...]``). They agree when
        ``I % bn == 0`` and the tensors are shared. Otherwise each half is padded with zero rows to
        ``I' = ceil(I/bn) * bn`` (then the layer's scales are exactly the fused blocking) and ``w2`` with zero
        columns to ``I'`` (zero activations there after SiLU-and-mul, and a group's amax is unchanged, so the
        result is the unpadded one). Done once here, never per forward."""
        import torch

        from blockfp8.kernels import triton as kernels
        from blockfp8.quant import reference as ref

        check_decision_for(decision, self.name)
        kernels.use_device(w13.device)
        if activation not in self.moe_activations:
            raise ValueError(f"triton grouped MoE fuses {', '.join(self.moe_activations)}, not {activation!r}")
        bn, bk = block_size
        e, two_i, h = w13.shape
        if two_i != 2 * intermediate or tuple(w2.shape) != (e, h, intermediate):
            raise ValueError(f"moe weights: w13 {tuple(w13.shape)} / w2 {tuple(w2.shape)} do not fit "
                             f"intermediate size {intermediate}")
        half_blocks = ref.cdiv(intermediate, bn)
        want13 = (e, 2 * half_blocks, ref.cdiv(h, bk))
        if tuple(w13_scale.shape) != want13:
            raise ValueError(f"w13 scale: shape {tuple(w13_scale.shape)}, expected {want13} (halves blocked apart)")
        i_pad = half_blocks * bn
        if i_pad != intermediate:
            pad = i_pad - intermediate
            z13 = w13.new_zeros((e, pad, h))
            w13 = torch.cat((w13[:, :intermediate], z13, w13[:, intermediate:], z13), dim=1)
            w2 = torch.cat((w2, w2.new_zeros((e, h, pad))), dim=2)
            groups = ref.cdiv(i_pad, bk) - w2_scale.shape[2]  # > 0 only when bk < bn: those columns are zero
            if groups:
                w2_scale = torch.nn.functional.pad(ref.scales_to_float32(w2_scale, "w2 scale"), (0, groups),
                                                   value=1.0)
        w13_scale = ref.scales_to_float32(w13_scale, "w13 scale")
        w2_scale = ref.scales_to_float32(w2_scale, "w2 scale")
        if decision.requant_weight_ue8m0:  # the kernel needs UE8M0: requant expert by expert, on new tensors
            p13 = [scales_for_decision(w13[x], w13_scale[x], decision, block_size) for x in range(e)]
            p2 = [scales_for_decision(w2[x], w2_scale[x], decision, block_size) for x in range(e)]
            w13, w13_scale = torch.stack([p[0] for p in p13]), torch.stack([p[1] for p in p13])
            w2, w2_scale = torch.stack([p[0] for p in p2]), torch.stack([p[1] for p in p2])
        return PreparedMoE(self.name, w13, w13_scale.contiguous(), w2, w2_scale.contiguous(), i_pad,
                           tuple(block_size), activation)

    def moe(self, x: torch.Tensor, prepared: PreparedMoE, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
            decision: Decision) -> torch.Tensor:
        import torch

        from blockfp8.kernels.triton import moe as triton_moe

        check_decision_for(decision, self.name)
        return triton_moe.fused_moe(x, prepared.w13, prepared.w13_scale, prepared.w2, prepared.w2_scale,
                                    topk_weights, topk_ids, block_size=prepared.block_size,
                                    scale_fmt=decision.act_scale_fmt, out_dtype=torch.float32)
