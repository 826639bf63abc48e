"""Block-FP8 GEMM in Triton: ``out[M, N] = (x_q * x_scale) @ (w_q * w_scale).T (+ bias)``.

FP8 x FP8 on tensor cores, each ``BLOCK_K``-wide partial product promoted to float32 and multiplied by the
activation scale (per row, per 128-group of K) and the weight scale (per 128 x 128 block), DeepSeek-V3 style.
Ragged M, N, K are masked; bf16 / fp16 / fp32 output; optional fused bias. Scales are float32 (UE8M0 scales
are float32 powers of two here) in any strides, so row-major and M-major activation scales both work.

Two kernels, one launcher:

* ``_fp8_block_gemm_kernel`` (pointer loads): any shape, the interpreter too. With ``SPLIT_K > 1`` each output
  tile's K range is cut into slices run by different programs (small M: few tiles still fill 132 SMs); each
  slice writes a float32 partial, bumps a per-tile counter, and the last one to arrive sums the partials in a
  fixed order (deterministic), applies bias/cast and resets the counter -- one launch, no memset.
* ``_fp8_block_gemm_tma_kernel`` (Hopper): tensor descriptors (TMA loads, zero-filled out of bounds), a
  persistent grid of ``occupancy`` programs per SM walking the tiles in grouped order. For large M. Triton waits
  for each MMA before its promotion, so the tensor cores idle while one program promotes; two or three small
  programs per SM (64x128 tiles, registers capped by ``maxnreg``) fill that gap with each other's MMAs.

Both promote with one FMA per element where a tile's columns share one weight-scale block (``_tile_scale``).

The tile config comes from the caller (the Triton backend reads the tuned table for the layer's GPU once, at
weight-preparation time); :func:`default_config` is the heuristic for everything else.
"""

from __future__ import annotations

import functools

import torch

from blockfp8.kernels.triton import check_device
from blockfp8.quant.reference import QuantError, cdiv, normalize_block_size

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@functools.cache
def _kernels():
    from blockfp8.kernels.triton import _gemm_kernels as k

    return {"ptr": k._fp8_block_gemm_kernel, "tma": k._fp8_block_gemm_tma_kernel}


# --------------------------------------------------------------------------------------------- configs


@functools.cache
def num_sms(device_index: int | None = None) -> int:
    """SMs of the CUDA device the launch runs on (the persistent grid's size); 132 without CUDA (interpreter)."""
    if not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(device_index if device_index is not None
                                            else torch.cuda.current_device()).multi_processor_count


def default_config(m: int, n: int, k: int, sms: int = 132, cuda: bool = True) -> dict:
    """A sane config for any shape when no tuned entry matches."""
    k_blocks = cdiv(k, 128)
    if m <= 64:
        bm = 16 if m <= 16 else (32 if m <= 32 else 64)
        bn = 64 if n <= 4096 else 128
        tiles = cdiv(m, bm) * cdiv(n, bn)
        split = 1
        while tiles * split < 2 * sms and k_blocks // (split * 2) >= 4 and split < 16:
            split *= 2
        return {"kernel": "ptr", "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 128, "SPLIT_K": split, "GROUP_M": 8,
                "num_warps": 4, "num_stages": 4}
    if m <= 256 or not cuda:
        return {"kernel": "ptr", "BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 1, "GROUP_M": 8,
                "num_warps": 4, "num_stages": 4}
    return dict(PREFILL_CONFIG)


# The best TMA config of the H200 prefill probe (docs/kernels.md, "Prefill without DeepGEMM"): three 64x128
# programs per SM.
PREFILL_CONFIG = {"kernel": "tma", "BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 1, "GROUP_M": 8,
                  "num_warps": 4, "num_stages": 3, "persistent": True, "occupancy": 3, "maxnreg": 168}

_default_config = functools.lru_cache(maxsize=4096)(default_config)  # per launch: callers copy the dict

# The tile config as the ``gemm_triton`` operator carries it: a list of ints in this order (operators take no dicts).
CONFIG_KEYS = ("kernel", "BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "GROUP_M", "num_warps", "num_stages",
               "persistent", "N_SPLIT", "occupancy", "maxnreg")
_KERNEL_IDS = {"ptr": 0, "tma": 1}
# What the launcher assumes for a key a config leaves out, per kernel.
_CONFIG_DEFAULTS = {
    "ptr": {"SPLIT_K": 1, "GROUP_M": 8, "num_warps": 4, "num_stages": 3, "persistent": True, "N_SPLIT": 1,
            "occupancy": 1, "maxnreg": 0},
    "tma": {"SPLIT_K": 1, "GROUP_M": 8, "num_warps": 8, "num_stages": 4, "persistent": True, "N_SPLIT": 1,
            "occupancy": 1, "maxnreg": 0},
}


def encode_config(config: dict | None) -> list[int]:
    """A config dict as the operator's ``int[]`` (empty: use :func:`default_config` at launch)."""
    if not config:
        return []
    kernel = config.get("kernel", "ptr")
    full = {**_CONFIG_DEFAULTS[kernel], "kernel": kernel, **config}
    return [_KERNEL_IDS[full["kernel"]] if k == "kernel" else int(full[k]) for k in CONFIG_KEYS]


def decode_config(values) -> dict | None:
    """Inverse of :func:`encode_config` (cached: the operator decodes on every launch)."""
    return _decode_config(tuple(values)) if values else None


@functools.lru_cache(maxsize=1024)
def _decode_config(values: tuple[int, ...]) -> dict:
    config = dict(zip(CONFIG_KEYS, (int(v) for v in values), strict=True))
    config["kernel"] = {v: k for k, v in _KERNEL_IDS.items()}[config["kernel"]]
    config["persistent"] = bool(config["persistent"])
    return config


# --------------------------------------------------------------------------------------------- launcher

_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Per-tile arrival counters for split-K, zeroed once; each launch leaves them zero again.
    One buffer per device: concurrent split-K launches on different streams of one device are not supported."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def _check(x_q, x_scale, w_q, w_scale, block_size, out_dtype):
    if x_q.dtype != torch.float8_e4m3fn or w_q.dtype != torch.float8_e4m3fn:
        raise QuantError(f"triton gemm: activation {x_q.dtype} / weight {w_q.dtype}: both must be float8_e4m3fn")
    if w_q.dim() != 2:
        raise QuantError(f"weight: expected a 2-D [N, K] weight, got shape {tuple(w_q.shape)}")
    if x_q.shape[-1] != w_q.shape[1]:
        raise QuantError(f"activation: K={x_q.shape[-1]} does not match weight K={w_q.shape[1]}")
    if out_dtype not in OUT_DTYPES:
        raise QuantError(f"out_dtype={out_dtype}: the triton gemm writes bfloat16, float16 or float32")
    if x_scale.dtype != torch.float32 or w_scale.dtype != torch.float32:
        raise QuantError(f"triton gemm: scales must be float32 (activation {x_scale.dtype}, weight {w_scale.dtype});"
                         " unpack packed UE8M0 scales first")
    bn, bk = block_size
    n, k = w_q.shape
    if tuple(w_scale.shape) != (cdiv(n, bn), cdiv(k, bk)):
        raise QuantError(f"weight scale: shape {tuple(w_scale.shape)}, expected {(cdiv(n, bn), cdiv(k, bk))} for "
                         f"weight [{n}, {k}] and block size {list(block_size)}")
    if x_scale.shape[-1] != cdiv(k, bk):
        raise QuantError(f"activation scale: {x_scale.shape[-1]} groups, expected {cdiv(k, bk)} (K={k}, group {bk})")


def fp8_block_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    block_size=(128, 128),
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    *,
    config: dict | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out[..., N]``. ``x_scale`` is ``[..., ceil(K/bk)]`` float32 in any strides (row-major or M-major);
    ``w_scale`` is ``[ceil(N/bn), ceil(K/bk)]`` float32. ``config`` is the tile config (a tuned one from the
    caller), else :func:`default_config`."""

    bn, bk = normalize_block_size(block_size)
    _check(x_q, x_scale, w_q, w_scale, (bn, bk), out_dtype)
    *lead, k = x_q.shape
    n = w_q.shape[0]
    a = x_q.reshape(-1, k)
    a_s = x_scale.reshape(-1, x_scale.shape[-1])
    m = a.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    if m == 0 or n == 0:
        return out.reshape(*lead, n)
    if k == 0:
        out.zero_()
        if bias is not None:
            out += bias.to(out_dtype)
        return out.reshape(*lead, n)
    check_device(x_q.device)
    sms = num_sms(x_q.device.index) if x_q.is_cuda else 132
    cfg = dict(config if config is not None else _default_config(m, n, k, sms, x_q.is_cuda))
    bk_tile = cfg["BLOCK_K"]
    if bk % bk_tile:
        cfg["BLOCK_K"] = bk_tile = min(bk, 128) if bk % min(bk, 128) == 0 else bk
    kernels = _kernels()
    bias_arg = bias if bias is not None else out
    use_tma = (cfg.get("kernel") == "tma" and k % 16 == 0 and a.stride(1) == 1
               and w_q.stride(1) == 1 and a.data_ptr() % 16 == 0 and w_q.data_ptr() % 16 == 0)
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        bm, bnt = cfg["BLOCK_M"], cfg["BLOCK_N"]
        n_split = cfg.get("N_SPLIT", 1)
        a_desc = TensorDescriptor.from_tensor(a, [bm, bk_tile])
        b_desc = TensorDescriptor.from_tensor(w_q, [bnt // n_split, bk_tile])
        tiles = cdiv(m, bm) * cdiv(n, bnt)
        progs = min(tiles, sms * cfg.get("occupancy", 1)) if cfg.get("persistent", True) else tiles
        extra = {"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") and x_q.is_cuda else {}
        kernels["tma"][(progs,)](
            a_desc, b_desc, a_s, w_scale, out, bias_arg, m, n, k,
            a_s.stride(0), a_s.stride(1), w_scale.stride(0), w_scale.stride(1),
            out.stride(0), out.stride(1),
            SCALE_BN=bn, SCALE_BK=bk, HAS_BIAS=bias is not None,
            BLOCK_M=bm, BLOCK_N=bnt, BLOCK_K=bk_tile, GROUP_M=cfg.get("GROUP_M", 8), NUM_PROGS=progs,
            NUM_STAGES=cfg.get("num_stages", 4), N_SPLIT=n_split, num_warps=cfg.get("num_warps", 8), **extra,
        )
        return out.reshape(*lead, n)
    bm, bnt = cfg["BLOCK_M"], cfg["BLOCK_N"]
    split = max(1, min(int(cfg.get("SPLIT_K", 1)), cdiv(k, bk_tile)))
    while split > 1 and split * m * n >= 2**31:
        split //= 2
    tiles = cdiv(m, bm) * cdiv(n, bnt)
    if split > 1:
        ws = torch.empty((split, m, n), dtype=torch.float32, device=x_q.device)
        cnt = _counters(x_q.device, tiles)
    else:
        ws, cnt = out, out
    kernels["ptr"][(tiles, split)](
        a, w_q, a_s, w_scale, out, bias_arg, ws, cnt, m, n, k,
        a.stride(0), a.stride(1), w_q.stride(0), w_q.stride(1),
        a_s.stride(0), a_s.stride(1), w_scale.stride(0), w_scale.stride(1),
        out.stride(0), out.stride(1),
        SCALE_BN=bn, SCALE_BK=bk, HAS_BIAS=bias is not None,
        BLOCK_M=bm, BLOCK_N=bnt, BLOCK_K=bk_tile, SPLIT_K=split, GROUP_M=cfg.get("GROUP_M", 8),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3),
    )
    return out.reshape(*lead, n)
