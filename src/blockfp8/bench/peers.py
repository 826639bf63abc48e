"""The GEMM variants a benchmark compares, each built once per shape into a zero-argument callable.

``bf16`` cuBLAS, ``fp8_tensor`` (per-tensor-scaled cuBLAS FP8: an upper bound for any block-scaled kernel),
``scaled_mm`` (torch's blockwise cuBLASLt: 1x128 activations, 128x128 weights; SM90 only; the call the
``scaled_mm`` backend makes, ``kernels.scaled_mm``), ``deepgemm`` (its dense kernel, SM90 scale layout, where
installed), ``triton`` (our kernel with the config the Triton backend would
use on this GPU: tuned, else the heuristic), ``cute`` (the CuTe DSL kernel with the config its backend would use,
where ``blockfp8[cute]`` is installed) and ``auto`` (per-shape dispatch over the allowed backends from the
shipped table, as the policy reads it). Activations are quantized before timing: these time the GEMM alone
(``bench quant`` times quantization).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from blockfp8.backends import tuned
from blockfp8.platform import detect
from blockfp8.quant.reference import cdiv


class GemmCase:
    """Inputs for one (M, N, K): random bf16 x and w, block-FP8 weight, activations quantized per layout."""

    def __init__(self, m: int, n: int, k: int, scale_fmt: str = "float32", device="cuda", seed: int = 0):
        from blockfp8.kernels.scaled_mm import pad_weight_scale
        from blockfp8.kernels.triton import act_quant
        from blockfp8.quant import reference

        g = torch.Generator(device=device).manual_seed(seed)
        self.m, self.n, self.k = m, n, k
        self.x = torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=g)
        self.w = (torch.randn(n, k, device=device, dtype=torch.float32, generator=g) * 0.02).to(torch.bfloat16)
        self.w_q, self.w_s = reference.quantize_weight(self.w, (128, 128), scale_fmt)
        self.w_s_padded = pad_weight_scale(self.w_s)
        self.x_q, self.x_s = act_quant.quantize_act(self.x, 128, scale_fmt, "row_major")
        self.x_q4, self.x_s_mn = act_quant.quantize_act(self.x, 128, scale_fmt, "mn_major", pad_m=4)
        self.tuned_keys = tuned.platform_keys(detect())
        m16 = cdiv(m, 16) * 16
        self.x_q16 = torch.zeros(m16, k, device=device, dtype=torch.float8_e4m3fn)
        self.x_q16[:m] = self.x_q
        self.one = torch.ones((), device=device, dtype=torch.float32)

    def variants(self, names=("bf16", "fp8_tensor", "scaled_mm", "triton", "auto")) -> dict[str, Callable]:
        from blockfp8.kernels.scaled_mm import blockwise_gemm
        from blockfp8.kernels.triton import gemm

        out: dict[str, Callable] = {}
        for name in names:
            if name == "bf16":
                out[name] = lambda: torch.mm(self.x, self.w.t())
            elif name == "fp8_tensor":
                out[name] = lambda: torch._scaled_mm(self.x_q16, self.w_q.t(), self.one, self.one,
                                                     out_dtype=torch.bfloat16)
            elif name == "scaled_mm":
                out[name] = lambda: blockwise_gemm(self.x_q4, self.x_s_mn, self.w_q, self.w_s_padded)
            elif name == "triton":
                cfg = self.triton_config()
                out[name] = lambda cfg=cfg: gemm.fp8_block_gemm(self.x_q, self.x_s, self.w_q, self.w_s,
                                                                (128, 128), torch.bfloat16, config=cfg)
            elif name == "deepgemm":  # SM90 layout: MN-major TMA-aligned activation scales, float32 blocks
                from blockfp8.kernels import deepgemm
                from blockfp8.quant.layouts import to_mn_major

                module, why = deepgemm.load_cached()
                if module is None:
                    raise RuntimeError(why)
                x_s = to_mn_major(self.x_s)
                out[name] = lambda x_s=x_s, module=module: deepgemm.gemm(module, self.x_q, x_s, self.w_q, self.w_s)
            elif name == "cute":
                from blockfp8.kernels.cutedsl import gemm as cute_gemm

                # the config its backend would use (SM count from the GPU; no config off a GPU: the call fails)
                cfg = (cute_gemm.default_config(self.m, self.n, cute_gemm.num_sms(self.x_q.device))
                       if self.x_q.is_cuda else None)
                out[name] = lambda cfg=cfg: cute_gemm.fp8_block_gemm(self.x_q, self.x_s, self.w_q, self.w_s,
                                                                     torch.bfloat16, config=cfg)
            elif name == "auto":
                pick = self.auto_pick()
                out[name] = out.get(pick) or self.variants((pick,))[pick]
        return out

    def triton_config(self) -> dict | None:
        """The tuned config the Triton backend would launch for this shape here, None for the heuristic."""
        configs = tuned.triton_configs(self.tuned_keys, self.n, self.k)
        return configs[tuned.m_bucket(self.m)] if configs else None

    def auto_pick(self) -> str:
        return tuned.dispatch_backend(self.tuned_keys, self.m, self.n, self.k, self.dense_candidates())

    def dense_candidates(self) -> tuple[str, ...]:
        """The kernels the policy's automatic choice picks from here (no DeepGEMM), in its order."""
        return ("scaled_mm", "cute", "triton") if cute_runs(self.n, self.k) else ("scaled_mm", "triton")

    def reference(self) -> torch.Tensor:
        from blockfp8.quant import reference

        return reference.gemm_reference(self.x_q, self.x_s, self.w_q, self.w_s, (128, 128), torch.float32)


def cute_runs(n: int, k: int) -> bool:
    """Whether the ``cute`` backend runs an N x K weight on this machine (installed, sm_90, TMA-aligned)."""
    from blockfp8.backends.base import GemmProblem
    from blockfp8.backends.cute import CuteBackend

    backend = CuteBackend()
    return backend.is_supported(detect())[0] and backend.can_implement(GemmProblem(n, k))[0]
