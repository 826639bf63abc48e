"""The calls into DeepGEMM (``deep_gemm``, JIT-compiled block-FP8 GEMMs for SM90 and SM100/SM103).

What ``deep_gemm.fp8_gemm_nt((a, sfa), (b, sfb), out)`` takes (DeepGEMM's ``transform_sf_into_required_layout``):

* SM90 (Hopper), float32 scales: ``sfa`` = activation scales ``[M, ceil(K/128)]`` MN-major and TMA-aligned
  (``quant.layouts.to_mn_major``); ``sfb`` = the weight's ``[ceil(N/128), ceil(K/128)]`` block scales as they are.
* Family 100 (SM100/SM103), UE8M0 only: ``sfa`` = packed exponents (``quant.layouts.pack_ue8m0``); ``sfb`` = the
  128 x 128 block exponents broadcast to every row of N and packed (``quant.layouts.pack_ue8m0_per_row``).
* bf16 output, ``N % 64 == 0``, ``K % 128 == 0``.

``deep_gemm`` is imported inside :func:`load` only: importing this module never touches it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

import torch

DENSE_KERNEL = "fp8_gemm_nt"
N_ALIGN, K_ALIGN = 64, 128


def load() -> tuple[ModuleType | None, str]:
    """The ``deep_gemm`` module, or None and why it cannot be used."""
    if importlib.util.find_spec("deep_gemm") is None:
        return None, "deep_gemm not installed"
    try:
        return importlib.import_module("deep_gemm"), ""
    except Exception as exc:  # a broken build raises anything from ImportError to OSError
        return None, f"deep_gemm is installed but does not import ({type(exc).__name__}: {exc})"


@functools.cache
def load_cached() -> tuple[ModuleType | None, str]:
    """:func:`load` once per process: what the ``gemm_deepgemm`` operator calls on every launch."""
    return load()


def gemm(module: ModuleType, x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[M, N]`` (bf16) through ``module.fp8_gemm_nt`` with scales already in this family's layout."""
    if out is None:
        out = torch.empty((x_q.shape[0], w_q.shape[0]), dtype=torch.bfloat16, device=x_q.device)
    getattr(module, DENSE_KERNEL)((x_q, x_scale), (w_q, w_scale), out)
    return out
