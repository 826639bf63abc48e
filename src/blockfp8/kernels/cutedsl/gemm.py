"""Launcher of the CuTe DSL Hopper block-FP8 GEMM (``_gemm_kernel``): checks, one compile per configuration,
and a call through TVM-FFI so the host side stays cheap.

``out[M, N] = (x_q * x_scale) @ (w_q * w_scale).T (+ bias)`` for ``x_q [M, K]`` and ``w_q [N, K]``
``float8_e4m3fn`` (K contiguous), row-major float32 scales ``x_scale [M, ceil(K/128)]`` and
``w_scale [ceil(N/128), ceil(K/128)]``, bf16 or fp16 output. Needs SM90 (the kernel is built for ``sm_90a``),
K % 16 == 0 and N % 8 == 0 (TMA row strides); M, N, K may be ragged otherwise. A bias is added after the GEMM
(one more kernel: block-FP8 checkpoints rarely have one).
"""

from __future__ import annotations

import functools
import os

import torch

from blockfp8.quant.reference import QuantError, cdiv

OUT_DTYPE_NAMES = ("bfloat16", "float16")
K_ALIGN = 16  # TMA: 16-byte row strides of the FP8 operands
N_ALIGN = 8  # and of the 16-bit output
TILE_MS = (64, 128)
TILE_NS = (64, 128)
CLUSTERS = ((1, 1), (2, 1), (1, 2), (2, 2))
SWIZZLES = (1, 2, 4, 8, 16)
# (tile_m, tile_n, cluster_m, cluster_n, swizzle, raster along M: 1 / N: 0)
DEFAULT_CONFIG = (128, 128, 1, 1, 1, 1)
_VALID_CONFIGS = frozenset((tm, tn, *c, sw, r) for tm in TILE_MS for tn in TILE_NS for c in CLUSTERS
                           for sw in SWIZZLES for r in (0, 1))
# Tile shapes the heuristic picks from, largest first, and the share of the SMs the tiles must cover. Measured on an
# H200 (docs/kernels.md, "CuTe DSL kernel"): 128 x 128 tiles are fastest once they fill most SMs; below that,
# smaller tiles give more of them (M = 64..256 is where this kernel beats both cuBLASLt and Triton). Clusters and
# tile-order swizzles measured no gain, so the heuristic keeps them off.
HEURISTIC_TILES = ((128, 128), (128, 64), (64, 128), (64, 64))
MIN_SM_SHARE = 0.6


def default_config(m: int, n: int, sms: int = 132) -> tuple[int, ...]:
    """The first (largest) tile shape whose tiles cover at least 60 % of the SMs, else the smallest."""
    for tm, tn in HEURISTIC_TILES:
        if cdiv(m, tm) * cdiv(n, tn) >= MIN_SM_SHARE * sms:
            return (tm, tn, 1, 1, 1, 1)
    return (64, 64, 1, 1, 1, 1)


def unsupported(n: int, k: int, out_dtype: str, fp8_dtype: str) -> str | None:
    """Why this kernel cannot run an N x K weight of ``fp8_dtype`` into ``out_dtype`` (torch dtype names), or None:
    the rule the launcher checks per call and the backend once per layer."""
    if k % K_ALIGN:
        return f"K={k}: TMA needs K % {K_ALIGN} == 0 (the FP8 operands' row stride)"
    if n % N_ALIGN:
        return f"N={n}: TMA needs N % {N_ALIGN} == 0 (the output's row stride)"
    if out_dtype not in OUT_DTYPE_NAMES:
        return f"output dtype {out_dtype} is not bfloat16 or float16"
    if fp8_dtype != "float8_e4m3fn":
        return f"fp8 dtype {fp8_dtype}: the kernel takes float8_e4m3fn only"
    return None


def fp8_block_gemm(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                   out_dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None,
                   config: tuple[int, ...] = DEFAULT_CONFIG) -> torch.Tensor:
    """The block-FP8 product (module docstring), checked, on torch's current stream.

    ``config``: ``(tile_m, tile_n, cluster_m, cluster_n, swizzle, raster_m)``; a 2-CTA cluster along N shares
    (multicasts) the A tile, along M the B tile; ``swizzle`` tiles along the raster direction (M when
    ``raster_m``) run before the order steps across."""
    config = tuple(config)
    _check_inputs(x_q, x_scale, w_q, w_scale, out_dtype, bias, config)
    m, n = x_q.shape[0], w_q.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    if m == 0:
        return out
    kernel = _compiled(config, out_dtype, x_q.get_device())
    # Through TVM-FFI: torch tensors go in as DLPack views and the launch takes torch's current stream, so a
    # call costs a few microseconds of host time and is captured by CUDA graphs like any torch kernel.
    kernel(x_q.view(torch.uint8), w_q.view(torch.uint8), x_scale, w_scale, out)
    if bias is not None:
        out += bias
    return out


def _check_inputs(x_q, x_scale, w_q, w_scale, out_dtype, bias, config) -> None:
    """Every input rule, one line each naming the tensor; cheap attribute reads only (this runs per call)."""
    if x_q.dim() != 2 or w_q.dim() != 2 or x_q.shape[1] != w_q.shape[1]:
        raise QuantError(f"cute gemm: expected x [M, K] and w [N, K], got {tuple(x_q.shape)} and {tuple(w_q.shape)}")
    (m, k), n = x_q.shape, w_q.shape[0]
    why = unsupported(n, k, str(out_dtype).removeprefix("torch."), str(w_q.dtype).removeprefix("torch."))
    if why:
        raise QuantError(f"cute gemm: {why}")
    if max(m * k, n * k, m * n) >= 2**31:
        raise QuantError(f"cute gemm: M={m}, N={n}, K={k}: an operand of 2**31 or more elements overflows the "
                         "kernel's 32-bit strides; split the rows")
    if x_q.dtype != w_q.dtype:
        raise QuantError(f"cute gemm: x_q is {x_q.dtype}, w_q is {w_q.dtype}")
    if not x_q.is_cuda or not (x_q.get_device() == x_scale.get_device() == w_q.get_device() == w_scale.get_device()):
        raise QuantError("cute gemm: x_q, x_scale, w_q and w_scale must be on one CUDA device")
    groups = -(-k // 128)
    for name, t, shape in (("x_scale", x_scale, (m, groups)), ("w_scale", w_scale, (-(-n // 128), groups))):
        if t.dtype != torch.float32 or t.shape != shape or not t.is_contiguous():
            raise QuantError(f"cute gemm: {name} must be a contiguous float32 {list(shape)} tensor, got "
                             f"{t.dtype} {list(t.shape)} strides {list(t.stride())}")
    for name, t in (("x_q", x_q), ("w_q", w_q)):
        if not t.is_contiguous() or t.data_ptr() % 16:
            raise QuantError(f"cute gemm: {name} must be contiguous and 16-byte aligned")
    if config not in _VALID_CONFIGS:
        raise QuantError(f"cute gemm: config={config}; valid: (tile_m in {TILE_MS}, tile_n in {TILE_NS}, cluster in "
                         f"{CLUSTERS}, swizzle in {SWIZZLES}, raster_m 0 or 1)")
    if bias is not None and (bias.shape != (n,) or bias.get_device() != x_q.get_device()):
        raise QuantError(f"cute gemm: bias must be [{n}] on {x_q.device}, got {list(bias.shape)} on {bias.device}")


@functools.cache
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    index = torch.device(device).index
    return _sms(index if index is not None else torch.cuda.current_device())


def precompile(configs, device: torch.device, out_dtype: torch.dtype = torch.bfloat16) -> None:
    """Build the kernels a layer will launch now (weight preparation), not in its first forward pass (which may be
    a CUDA-graph capture)."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    for config in configs:
        _compiled(tuple(config), out_dtype, index)


@functools.cache
def _compiled(config: tuple[int, ...], out_dtype: torch.dtype, device_index: int):
    """Compile once per (config, output dtype, device): sizes are runtime arguments, so every M, N, K reuses it."""
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_compact_tensor, make_fake_stream

    from blockfp8.kernels.cutedsl._gemm_kernel import BlockScaledGemmSm90

    major, minor = torch.cuda.get_device_capability(device_index)
    if (major, minor) != (9, 0):
        raise QuantError(f"cute gemm: built for sm_90a, this GPU is sm_{major}{minor}")
    # wgmma and setmaxnreg exist only in the arch-specific target: name it rather than leave it to detection
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    m, kb, nb = cute.sym_int(), cute.sym_int(), cute.sym_int()
    n, k = cute.sym_int(divisibility=N_ALIGN), cute.sym_int(divisibility=K_ALIGN)

    def fake(dtype, shape, align):
        return make_fake_compact_tensor(dtype, shape, stride_order=(1, 0), assumed_align=align)

    out = cutlass.BFloat16 if out_dtype == torch.bfloat16 else cutlass.Float16
    tile_m, tile_n, cluster, swizzle, raster_m = config[0], config[1], config[2:4], config[4], bool(config[5])
    with torch.cuda.device(device_index):
        clusters = cutlass.utils.HardwareInfo().get_max_active_clusters(cluster[0] * cluster[1])
    kernel = BlockScaledGemmSm90(tile_m, tile_n, cluster, swizzle, raster_m)
    return cute.compile(kernel, fake(cutlass.Uint8, (m, k), 16), fake(cutlass.Uint8, (n, k), 16),
                        fake(cutlass.Float32, (m, kb), 4), fake(cutlass.Float32, (nb, kb), 4),
                        fake(out, (m, n), 16), clusters, make_fake_stream(use_tvm_ffi_env_stream=True),
                        options="--enable-tvm-ffi")
