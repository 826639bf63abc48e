"""The GEMM variants a benchmark compares, each built once per shape into a zero-argument callable.

``bf16`` cuBLAS, ``fp8_tensor`` (per-tensor-scaled cuBLAS FP8: an upper bound for any block-scaled kernel),
``scaled_mm`` (torch's blockwise cuBLASLt: 1x128 activations, 128x128 weights; SM90 only), ``triton`` (our kernel
with its tuned or default config) and ``auto`` (per-shape dispatch over the allowed backends from the shipped
table). Activations are quantized before timing: these time the GEMM alone (``bench quant`` times quantization).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from blockfp8.quant.reference import cdiv


def scaled_mm_blockwise(a_q: torch.Tensor, a_scale_mn: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                        out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """torch blockwise ``scaled_mm``: ``a_q[M, K]`` with M a multiple of 4, ``a_scale_mn[M, K/128]`` M-major
    (strides ``(1, M)``), ``w_scale[N/128, K/128]`` passed as the transposed view."""
    F = torch.nn.functional
    groups = a_scale_mn.shape[1]
    if groups % 4:  # torch 2.11 wants the weight scale's K groups padded to a multiple of 4 (K % 512 != 0)
        gp = cdiv(groups, 4) * 4
        w_pad = torch.zeros((w_scale.shape[0], gp), dtype=torch.float32, device=w_scale.device)
        w_pad[:, :groups] = w_scale
        w_scale = w_pad
    if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
        return F.scaled_mm(a_q, w_q.t(), a_scale_mn, F.ScalingType.BlockWise1x128, w_scale.t(),
                           F.ScalingType.BlockWise128x128, output_dtype=out_dtype)
    return torch._scaled_mm(a_q, w_q.t(), a_scale_mn, w_scale.t(), out_dtype=out_dtype)


class GemmCase:
    """Inputs for one (M, N, K): random bf16 x and w, block-FP8 weight, activations quantized per layout."""

    def __init__(self, m: int, n: int, k: int, scale_fmt: str = "float32", device="cuda", seed: int = 0):
        from blockfp8.backends import triton_quant
        from blockfp8.quant import reference

        g = torch.Generator(device=device).manual_seed(seed)
        self.m, self.n, self.k = m, n, k
        self.x = torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=g)
        self.w = (torch.randn(n, k, device=device, dtype=torch.float32, generator=g) * 0.02).to(torch.bfloat16)
        self.w_q, self.w_s = reference.quantize_weight(self.w, (128, 128), scale_fmt)
        self.x_q, self.x_s = triton_quant.quantize_act(self.x, 128, scale_fmt, "row_major")
        self.x_q4, self.x_s_mn = triton_quant.quantize_act(self.x, 128, scale_fmt, "mn_major", pad_m=4)
        m16 = cdiv(m, 16) * 16
        self.x_q16 = torch.zeros(m16, k, device=device, dtype=torch.float8_e4m3fn)
        self.x_q16[:m] = self.x_q
        self.one = torch.ones((), device=device, dtype=torch.float32)

    def variants(self, names=("bf16", "fp8_tensor", "scaled_mm", "triton", "auto")) -> dict[str, Callable]:
        from blockfp8.backends import dispatch, triton_gemm

        out: dict[str, Callable] = {}
        for name in names:
            if name == "bf16":
                out[name] = lambda: torch.mm(self.x, self.w.t())
            elif name == "fp8_tensor":
                out[name] = lambda: torch._scaled_mm(self.x_q16, self.w_q.t(), self.one, self.one,
                                                     out_dtype=torch.bfloat16)
            elif name == "scaled_mm":
                out[name] = lambda: scaled_mm_blockwise(self.x_q4, self.x_s_mn, self.w_q, self.w_s)
            elif name == "triton":
                cfg = triton_gemm.get_config(self.m, self.n, self.k)[0]
                out[name] = lambda cfg=cfg: triton_gemm.fp8_block_gemm(self.x_q, self.x_s, self.w_q, self.w_s,
                                                                       (128, 128), torch.bfloat16, config=cfg)
            elif name == "auto":
                pick = dispatch.pick(self.m, self.n, self.k, ("scaled_mm", "triton"))
                out[name] = out.get(pick) or self.variants((pick,))[pick]
        return out

    def reference(self) -> torch.Tensor:
        from blockfp8.quant import reference

        return reference.gemm_reference(self.x_q, self.x_s, self.w_q, self.w_s, (128, 128), torch.float32)
