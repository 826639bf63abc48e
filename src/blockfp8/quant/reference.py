"""Block-FP8 numerics, the source of truth every kernel and layer is checked against.

Pure torch, runs on CPU. Conventions (DeepSeek-V3 / HF "fp8" checkpoints):

* weights ``w[N, K]`` are quantized in ``bn x bk`` blocks, one float32 scale per block:
  ``scale[ceil(N/bn), ceil(K/bk)]``; ``w ~= q * scale`` (the scale is the *dequant multiplier*,
  stored on disk as ``weight_scale_inv``);
* activations ``x[..., K]`` are quantized per row in ``1 x G`` groups: ``scale[..., ceil(K/G)]``;
* ragged shapes are allowed: the last block row/column is partial and its amax covers only real elements;
* ``float32`` scales: ``s = max(amax, eps) / fp8_max``, the block maximum lands on fp8_max;
* ``ue8m0`` scales: ``s`` rounded *up* to a power of two on its float32 bit pattern
  (exponent + (mantissa != 0), clamped to [1, 254]) and the data quantized **with the rounded scale**;
* quantization divides by the scale (``x / s``, correctly rounded) and clamps to +-fp8_max before the cast.

NaN/Inf in an *activation* is not checked (that would need a host sync in a forward pass): a non-finite
value makes its group's scale non-finite, so the whole group dequantizes to NaN and every output row that
uses it is NaN. NaN/Inf in a *weight* being quantized is an error naming the tensor and block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FP8_DTYPES: dict[str, torch.dtype] = {
    "float8_e4m3fn": torch.float8_e4m3fn,  # max 448: NVIDIA, HF/DeepSeek checkpoints
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,  # max 240: ROCm MI300-style checkpoints
}
SCALE_FMTS = ("float32", "ue8m0")
WEIGHT_EPS = 1e-4
ACT_EPS = 1e-10
UE8M0_MIN_EXP, UE8M0_MAX_EXP = 1, 254  # DeepGEMM's clamp: 2^-126 .. 2^127
_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class QuantError(ValueError):
    """Bad input to a quantization routine; the message names the tensor and what is wrong."""


# --------------------------------------------------------------------------------------------- validation


def fp8_max(fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> float:
    _check_fp8_dtype(fp8_dtype)
    return float(torch.finfo(fp8_dtype).max)


def _check_fp8_dtype(fp8_dtype: torch.dtype, name: str = "fp8_dtype") -> None:
    if fp8_dtype not in FP8_DTYPES.values():
        raise QuantError(f"{name}: {fp8_dtype} is not a supported FP8 dtype; use one of {sorted(FP8_DTYPES)}")


def _check_scale_fmt(scale_fmt: str) -> None:
    if scale_fmt not in SCALE_FMTS:
        raise QuantError(f"scale_fmt={scale_fmt!r} is not valid; valid values: {', '.join(SCALE_FMTS)}")


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise QuantError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _check_float_input(t: torch.Tensor, name: str) -> None:
    _check_tensor(t, name)
    if t.dtype not in _FLOAT_INPUTS:
        raise QuantError(
            f"{name}: dtype {t.dtype} cannot be quantized; expected one of float32, bfloat16, float16, float64"
        )


def _check_fp8(t: torch.Tensor, name: str) -> None:
    _check_tensor(t, name)
    if t.dtype not in FP8_DTYPES.values():
        raise QuantError(f"{name}: expected an FP8 tensor (float8_e4m3fn or float8_e4m3fnuz), got dtype {t.dtype}")


def normalize_block_size(block_size: Sequence[int] | int, name: str = "block_size") -> tuple[int, int]:
    if isinstance(block_size, int):
        block_size = (block_size, block_size)
    try:
        bn, bk = (int(v) for v in block_size)
        ok = all(float(v) == int(v) for v in block_size)
    except (TypeError, ValueError):
        raise QuantError(f"{name}={block_size!r} must be two positive integers, e.g. (128, 128)") from None
    if not ok or bn <= 0 or bk <= 0:
        raise QuantError(f"{name}={tuple(block_size)!r} must be two positive integers, e.g. (128, 128)")
    return bn, bk


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise QuantError(f"{name}={value!r} must be a positive integer")
    return value


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def weight_scale_shape(shape: Sequence[int], block_size: Sequence[int] = (128, 128)) -> tuple[int, int]:
    """Shape of the block-scale tensor for a weight of ``shape`` = [N, K]."""
    bn, bk = normalize_block_size(block_size)
    n, k = shape
    return cdiv(n, bn), cdiv(k, bk)


def _check_weight_scale(scale: torch.Tensor, n: int, k: int, block_size: tuple[int, int], name: str) -> None:
    _check_tensor(scale, f"{name} scale")
    expected = weight_scale_shape((n, k), block_size)
    if tuple(scale.shape) != expected:
        raise QuantError(
            f"{name}: scale shape {tuple(scale.shape)} does not match weight [{n}, {k}] with block size "
            f"{list(block_size)}: expected {expected}"
        )


def _first_nonfinite_block(w: torch.Tensor, block_size: tuple[int, int]) -> tuple[int, int] | None:
    bad = ~torch.isfinite(w)
    if not bool(bad.any()):
        return None
    idx = bad.nonzero()[0].tolist()
    return idx[0] // block_size[0], idx[1] // block_size[1]


# --------------------------------------------------------------------------------------------- scale formats


def ceil_to_ue8m0(scale: torch.Tensor) -> torch.Tensor:
    """Round positive float32 scales up to a power of two, bit-exactly.

    ``e = biased_exponent + (mantissa != 0)`` clamped to [1, 254]; zero and float32 subnormals give 2^-126.
    Non-finite scales (from NaN/Inf activations) stay NaN, like E8M0's 0xFF encoding, so errors propagate.
    Returns float32 holding exact powers of two.
    """
    _check_tensor(scale, "scale")
    s = scale.to(torch.float32)
    bits = s.view(torch.int32)
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    e = (exp + (mant != 0).to(torch.int32)).clamp(UE8M0_MIN_EXP, UE8M0_MAX_EXP)
    out = (e << 23).view(torch.float32)
    return torch.where(torch.isfinite(s), out, torch.full_like(out, float("nan")))


def ue8m0_exponent(scale: torch.Tensor) -> torch.Tensor:
    """The E8M0 byte (biased exponent) of power-of-two float32 scales, as uint8; NaN -> 0xFF."""
    _check_tensor(scale, "scale")
    s = scale.to(torch.float32)
    bits = s.view(torch.int32)
    if bool(((bits & 0x7FFFFF) != 0).logical_and(torch.isfinite(s)).any()) or bool((s < 0).any()):
        raise QuantError("scale: not a tensor of positive powers of two; round it with ceil_to_ue8m0 first")
    e = (bits >> 23) & 0xFF
    return torch.where(torch.isfinite(s), e, torch.full_like(e, 0xFF)).to(torch.uint8)


def e8m0_to_float32(scale: torch.Tensor, name: str = "scale") -> torch.Tensor:
    """Read E8M0 exponent scales (``float8_e8m0fnu`` or uint8 bytes, as in ``scale_fmt: ue8m0``
    checkpoints) into float32: byte e -> 2^(e-127); 0 -> 2^-127 (a float32 subnormal); 255 -> NaN."""
    _check_tensor(scale, name)
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    if e8m0 is not None and scale.dtype == e8m0:
        scale = scale.view(torch.uint8)
    if scale.dtype != torch.uint8:
        raise QuantError(f"{name}: expected float8_e8m0fnu or uint8 exponent bytes, got dtype {scale.dtype}")
    e = scale.to(torch.int32)
    bits = torch.where(e == 0, torch.full_like(e, 0x00400000), e << 23)
    out = bits.view(torch.float32)
    return torch.where(e == 0xFF, torch.full_like(out, float("nan")), out)


def scales_to_float32(scale: torch.Tensor, name: str = "scale") -> torch.Tensor:
    """Any on-disk scale dtype (float32, bf16, fp16, e8m0/uint8 exponents) as float32."""
    _check_tensor(scale, name)
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    if scale.dtype == torch.uint8 or (e8m0 is not None and scale.dtype == e8m0):
        return e8m0_to_float32(scale, name)
    if scale.dtype not in _FLOAT_INPUTS:
        raise QuantError(f"{name}: scale dtype {scale.dtype} is not supported (float32/bf16/fp16/e8m0)")
    return scale.to(torch.float32)


def is_power_of_two(scale: torch.Tensor) -> torch.Tensor:
    """Elementwise: positive finite normal float32 with zero mantissa."""
    s = scale.to(torch.float32)
    bits = s.view(torch.int32)
    return (s > 0) & torch.isfinite(s) & ((bits & 0x7FFFFF) == 0) & (((bits >> 23) & 0xFF) > 0)


# --------------------------------------------------------------------------------------------- quantize


def _block_view(t: torch.Tensor, bn: int, bk: int) -> torch.Tensor:
    n, k = t.shape
    pn, pk = cdiv(n, bn) * bn - n, cdiv(k, bk) * bk - k
    t = torch.nn.functional.pad(t, (0, pk, 0, pn))  # zero padding never raises an amax
    return t.view(cdiv(n, bn), bn, cdiv(k, bk), bk)


def _make_scale(amax: torch.Tensor, eps: float, fmax: float, scale_fmt: str) -> torch.Tensor:
    # Divide by a tensor, not a Python scalar: on CUDA torch turns `t / scalar` into `t * (1/scalar)`, which is not
    # correctly rounded, and the scale would then differ between devices.
    scale = amax.clamp(min=eps) / torch.full_like(amax, fmax)
    return ceil_to_ue8m0(scale) if scale_fmt == "ue8m0" else scale


def _cast(values: torch.Tensor, fmax: float, fp8_dtype: torch.dtype) -> torch.Tensor:
    return values.clamp(-fmax, fmax).to(fp8_dtype)


def quantize_weight(
    w: torch.Tensor,
    block_size: Sequence[int] = (128, 128),
    scale_fmt: str = "float32",
    *,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    eps: float = WEIGHT_EPS,
    name: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w[N, K]`` in 2-D blocks. Returns ``(q[N, K] fp8, scale[ceil(N/bn), ceil(K/bk)] float32)``."""
    _check_float_input(w, name)
    if w.dim() != 2:
        raise QuantError(f"{name}: expected a 2-D [N, K] weight, got shape {tuple(w.shape)}")
    bn, bk = normalize_block_size(block_size)
    _check_scale_fmt(scale_fmt)
    _check_fp8_dtype(fp8_dtype)
    bad = _first_nonfinite_block(w, (bn, bk))
    if bad is not None:
        raise QuantError(f"{name}: NaN or Inf in block {bad} (block size {[bn, bk]}); refusing to quantize it")
    n, k = w.shape
    fmax = fp8_max(fp8_dtype)
    blocks = _block_view(w.to(torch.float32), bn, bk)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = _make_scale(amax, eps, fmax, scale_fmt)
    q = _cast(blocks / scale[:, None, :, None], fmax, fp8_dtype)
    return q.reshape(cdiv(n, bn) * bn, cdiv(k, bk) * bk)[:n, :k].contiguous(), scale


def quantize_act(
    x: torch.Tensor,
    group_size: int = 128,
    scale_fmt: str = "float32",
    *,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    eps: float = ACT_EPS,
    name: str = "activation",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x[..., K]`` per row in 1 x G groups. Returns ``(q[..., K] fp8, scale[..., ceil(K/G)] float32)``.

    NaN/Inf are not checked (no host sync): they turn their group's scale and dequantized values into NaN.
    """
    _check_float_input(x, name)
    if x.dim() < 1:
        raise QuantError(f"{name}: expected at least 1 dimension [..., K], got a scalar")
    g = _positive_int(group_size, "group_size")
    _check_scale_fmt(scale_fmt)
    _check_fp8_dtype(fp8_dtype)
    *lead, k = x.shape
    fmax = fp8_max(fp8_dtype)
    groups = cdiv(k, g) if k else 0
    xf = torch.nn.functional.pad(x.to(torch.float32), (0, groups * g - k)).reshape(*lead, groups, g)
    amax = xf.abs().amax(dim=-1) if xf.numel() else xf.new_zeros((*lead, groups))
    scale = _make_scale(amax, eps, fmax, scale_fmt)
    q = _cast(xf / scale[..., None], fmax, fp8_dtype)
    return q.reshape(*lead, groups * g)[..., :k].contiguous(), scale


# --------------------------------------------------------------------------------------------- dequantize


def dequantize_weight(
    q: torch.Tensor,
    scale: torch.Tensor,
    block_size: Sequence[int] = (128, 128),
    out_dtype: torch.dtype = torch.float32,
    *,
    name: str = "weight",
) -> torch.Tensor:
    """``q[N, K] * scale`` broadcast over blocks, computed in float32."""
    _check_fp8(q, name)
    if q.dim() != 2:
        raise QuantError(f"{name}: expected a 2-D [N, K] weight, got shape {tuple(q.shape)}")
    bn, bk = normalize_block_size(block_size)
    n, k = q.shape
    _check_weight_scale(scale, n, k, (bn, bk), name)
    s = scales_to_float32(scale, f"{name} scale")
    full = s.repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]
    return (q.to(torch.float32) * full).to(out_dtype)


def dequantize_act(
    q: torch.Tensor,
    scale: torch.Tensor,
    group_size: int = 128,
    out_dtype: torch.dtype = torch.float32,
    *,
    name: str = "activation",
) -> torch.Tensor:
    """``q[..., K] * scale[..., ceil(K/G)]`` per group, computed in float32."""
    _check_fp8(q, name)
    g = _positive_int(group_size, "group_size")
    _check_tensor(scale, f"{name} scale")
    *lead, k = q.shape
    expected = (*lead, cdiv(k, g))
    if tuple(scale.shape) != expected:
        raise QuantError(
            f"{name}: scale shape {tuple(scale.shape)} does not match activation {list(q.shape)} with group size "
            f"{g}: expected {expected}"
        )
    s = scales_to_float32(scale, f"{name} scale")
    full = s.repeat_interleave(g, dim=-1)[..., :k]
    return (q.to(torch.float32) * full).to(out_dtype)


def requant_to_ue8m0(
    q: torch.Tensor,
    scale: torch.Tensor,
    block_size: Sequence[int] = (128, 128),
    *,
    name: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Requantize a float32-scaled FP8 weight to power-of-two scales: dequantize, then quantize again with
    UE8M0 scales (the second FP8 rounding a UE8M0-only kernel costs). A weight that already has UE8M0 scales
    comes back with the same dequantized values (the scale may halve where the block maximum rounded to 224)."""
    w = dequantize_weight(q, scale, block_size, torch.float32, name=name)
    return quantize_weight(w, block_size, "ue8m0", fp8_dtype=q.dtype, name=name)


# --------------------------------------------------------------------------------------------- GEMM


def gemm_reference(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    block_size: Sequence[int] = (128, 128),
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out[..., N] = dequant(x) @ dequant(w).T (+ bias)``, float32 accumulate, cast to ``out_dtype``.

    The activation group size is the weight's block K.
    """
    bn, bk = normalize_block_size(block_size)
    _check_fp8(w_q, "weight")
    _check_fp8(x_q, "activation")
    if w_q.dim() != 2:
        raise QuantError(f"weight: expected a 2-D [N, K] weight, got shape {tuple(w_q.shape)}")
    if x_q.shape[-1] != w_q.shape[1]:
        raise QuantError(f"activation: K={x_q.shape[-1]} does not match weight K={w_q.shape[1]}")
    x = dequantize_act(x_q, x_scale, bk)
    w = dequantize_weight(w_q, w_scale, (bn, bk))
    out = x @ w.t()
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(out_dtype)


def moe_reference(x, w13_q, w13_scale, w2_q, w2_scale, topk_weights, topk_ids, block_size=(128, 128),
                  scale_fmt: str = "float32", act_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A block-FP8 MoE expert by expert (float32 result ``[T, H]``): ``sum_j topk_weights[t, j] * W2[e_j] @
    silu_and_mul(W13[e_j] @ x[t])`` with ``W13[e] = [gate; up]`` ``[E, 2I, H]``, ``W2`` ``[E, H, I]``, both
    activations quantized in 1 x ``block_size[1]`` groups, the gate/up product and SiLU-and-mul held in
    ``act_dtype`` (bf16 like the fused kernels; a float32 layer keeps float32). What every fused MoE kernel is checked
    against."""
    t, h = x.shape
    i = w2_q.shape[2]
    out = torch.zeros((t, h), dtype=torch.float32, device=x.device)
    x_q, x_s = quantize_act(x, block_size[1], scale_fmt)
    for e in range(w13_q.shape[0]):
        tok, slot = (topk_ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        inter = gemm_reference(x_q[tok], x_s[tok], w13_q[e], w13_scale[e], block_size, act_dtype)
        act = (torch.nn.functional.silu(inter[:, :i].float()) * inter[:, i:].float()).to(act_dtype)
        a_q, a_s = quantize_act(act, block_size[1], scale_fmt)
        y = gemm_reference(a_q, a_s, w2_q[e], w2_scale[e], block_size, torch.float32)
        out.index_add_(0, tok, y * topk_weights[tok, slot].float()[:, None])
    return out
