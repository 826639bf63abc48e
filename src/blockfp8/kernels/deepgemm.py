"""The calls into DeepGEMM (``deep_gemm``, JIT-compiled block-FP8 GEMMs for SM90 and SM100/SM103).

What ``deep_gemm.fp8_gemm_nt((a, sfa), (b, sfb), out)`` takes (DeepGEMM's ``transform_sf_into_required_layout``):

* SM90 (Hopper), float32 scales: ``sfa`` = activation scales ``[M, ceil(K/128)]`` MN-major and TMA-aligned
  (``quant.layouts.to_mn_major``); ``sfb`` = the weight's ``[ceil(N/128), ceil(K/128)]`` block scales as they are.
* Family 100 (SM100/SM103), UE8M0 only: ``sfa`` = packed exponents (``quant.layouts.pack_ue8m0``); ``sfb`` = the
  128 x 128 block exponents broadcast to every row of N and packed (``quant.layouts.pack_ue8m0_per_row``).
* bf16 output, ``N % 64 == 0``, ``K % 128 == 0``.

``deep_gemm`` is imported inside :func:`load` only: importing this module never touches it. A build that imports
but crashes (a libstdc++ mismatch segfaults in DeepGEMM's JIT on the first call) is caught by :func:`smoke`, which
runs one tiny GEMM in a child process, so the policy skips the backend instead of taking the process down.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import signal
import subprocess
import sys
from types import ModuleType

import torch

DENSE_KERNEL = "fp8_gemm_nt"
N_ALIGN, K_ALIGN = 64, 128
SMOKE_TIMEOUT_S = 300  # the first call JIT-compiles its kernel with nvcc (seconds; minutes on a loaded machine)
# One 128 x 128 x 128 GEMM of ones with unit float32 scales (DeepGEMM lays them out itself): every output is 128.
_SMOKE = """
import sys, torch, deep_gemm
dev = sys.argv[1]
a = torch.ones((128, 128), device=dev).to(torch.float8_e4m3fn)
d = torch.empty((128, 128), device=dev, dtype=torch.bfloat16)
deep_gemm.fp8_gemm_nt((a, torch.ones((128, 1), device=dev)), (a, torch.ones((1, 1), device=dev)), d)
bad = int((d.float() != 128).sum())
if bad:
    sys.exit(f"wrong result: {bad} of 16384 outputs differ from 128")
"""


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


def version() -> str | None:
    """The installed ``deep_gemm`` distribution's version (a source build says ``2.6.1+<commit>`` or ``+local``)."""
    from importlib import metadata

    for name in ("deep_gemm", "deep-gemm"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def gemm(module: ModuleType, x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[M, N]`` (bf16) through ``module.fp8_gemm_nt`` with scales already in this family's layout."""
    if out is None:
        out = torch.empty((x_q.shape[0], w_q.shape[0]), dtype=torch.bfloat16, device=x_q.device)
    getattr(module, DENSE_KERNEL)((x_q, x_scale), (w_q, w_scale), out)
    return out


def smoke(device: str = "cuda") -> tuple[bool, str]:
    """Run one tiny ``fp8_gemm_nt`` in a child process: (True, "") when it computes the right product, else
    (False, why), e.g. "installed but crashes (signal SIGSEGV) ...". The parent never calls into a broken build."""
    try:
        done = subprocess.run([sys.executable, "-c", _SMOKE, device], capture_output=True, text=True,
                              timeout=SMOKE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return False, f"deep_gemm is installed but a smoke GEMM did not finish in {SMOKE_TIMEOUT_S} s"
    except OSError as exc:
        return False, f"deep_gemm smoke GEMM could not start a Python process ({exc})"
    if done.returncode == 0:
        return True, ""
    tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = str(-done.returncode)
        return False, f"deep_gemm is installed but crashes (signal {name}) in a smoke GEMM{': ' + tail if tail else ''}"
    return False, f"deep_gemm is installed but a smoke GEMM fails (exit {done.returncode}): {tail}"


@functools.cache
def smoke_cached(device: str = "cuda") -> tuple[bool, str]:
    """:func:`smoke` once per process: what the backend's support check and ``blockfp8 env`` read."""
    return smoke(device)
