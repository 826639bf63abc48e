"""Checkpoint level, one tensor at a time: what requantizing its block scales to UE8M0 costs.

For an **FP8 checkpoint** (weights ``q[N, K]`` in E4M3 with a float32/bf16 scale per block) the dequantized
checkpoint ``D = q * s`` is the reference: the float32-scale path reproduces it exactly. A UE8M0-only kernel
(DeepGEMM on Blackwell) needs each block scale rounded *up* to a power of two, ``s' = ceil_ue8m0(s)``, and the
block requantized with it: ``q' = fp8(clamp(D / s'))``, ``D' = q' * s'``. That second rounding is the only error
the UE8M0 path adds, ``E = D' - D``. Since ``D`` itself already carries the checkpoint's own quantization noise
(the original bf16 weight was rounded once to E4M3), that noise is estimated as one E4M3 rounding of every stored
code, uniform over its spacing::

    noise^2 = sum over elements of (s_b * ulp(q))^2 / 12      ulp(q) = 2^(floor(log2|q|) - 3) for normal q,
                                                               the subnormal spacing (2^-9 for e4m3fn) otherwise
    bits_fp32  = 1/2 log2(sum D^2 / noise^2)
    bits_ue8m0 = 1/2 log2(sum D^2 / (noise^2 + sum E^2))     (the two roundings are independent)
    bits_lost  = bits_fp32 - bits_ue8m0 = 1/2 log2(1 + sum E^2 / noise^2)

``bits_lost`` is exactly 0 when every block scale is already a power of two (then ``s' = s`` and ``q' = q``).
This is the ``vLLM`` requantization (round the stored scale up); ``quant.reference.requant_to_ue8m0`` instead
derives the new scale from the block maximum, which gives the same scale whenever the block maximum is stored as
+-448, the normal case for float32-scaled checkpoints.

For a **bf16/fp16/fp32 checkpoint** each linear weight is quantized both ways (``audit.weights.audit_weight``).

Speed: E4M3 has 256 codes, so everything above is a function of the per-block histogram of codes. One pass over
the FP8 bytes builds it (``_block_code_histogram``: each code and its block column are packed into one int16 and
counted with ``bincount``, one row of blocks at a time); the rest works on a ``[blocks, 256]`` table. Runs on CPU
or CUDA. Which tensors are audited is ``audit.plan``; reading them (and the GPU prefetch) is ``audit.reading``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from blockfp8.audit.measures import MAX_BITS, bits_from_power, inflation_histogram
from blockfp8.audit.weights import audit_weight
from blockfp8.formats.errors import CheckpointError
from blockfp8.quant import reference as ref

FP8_TORCH_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


@dataclass(frozen=True)
class CheckpointRow:
    name: str  # the weight tensor's name on disk
    source: str  # "fp8" (stored FP8 + scales) | "float" (bf16/fp16/fp32, quantized both ways here)
    shape: tuple[int, int]
    dtype: str
    scale_dtype: str | None
    rel_err_fp32: float
    rel_err_ue8m0: float
    bits_fp32: float
    bits_ue8m0: float
    bits_lost: float
    scale_inflation_mean: float
    scale_inflation_max: float
    pow2_block_share: float
    blocks: int
    inflation_hist: list[int] = field(repr=False, compare=False, default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("inflation_hist")
        d["shape"] = list(self.shape)
        return d


# --------------------------------------------------------------------------------------------- FP8 tables


@functools.lru_cache(maxsize=4)
def _code_tables(fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the 256 byte codes: value (float32, NaN for NaN codes), ulp (float64), NaN mask."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fp8_dtype).to(torch.float32)
    nan = ~torch.isfinite(values)
    fi = torch.finfo(fp8_dtype)
    mbits = 3
    min_normal = float(fi.smallest_normal)
    sub = min_normal * 2.0**-mbits
    mag = values.double().abs()
    safe = torch.where(mag >= min_normal, mag, torch.ones_like(mag))
    ulp = torch.where(mag >= min_normal, torch.exp2(torch.floor(torch.log2(safe)) - mbits), torch.full_like(mag, sub))
    ulp = torch.where(nan, torch.zeros_like(ulp), ulp)
    return values, ulp, nan


def _block_code_histogram(codes: torch.Tensor, block: tuple[int, int], workers: int | None = None,
                          method: str | None = None) -> torch.Tensor:
    """Per-block histogram of the 256 byte codes of ``codes[N, K]`` (uint8): int64 ``[ceil(N/bn), ceil(K/bk), 256]``.

    ``method="packed"`` (the CPU default): each code and its block column (< 127 per pass) are packed into one
    int16 (code + 256 * column, always positive) and counted with one ``bincount`` per row of blocks, a few passes
    over the bytes in cache-sized pieces; rows of blocks are shared among ``workers`` threads (default: torch's
    intra-op thread count, which is set to 1 meanwhile so the threads do not oversubscribe the cores).
    ``method="flat"`` (the CUDA default): one int32 bin index per element and a single ``bincount`` (three kernels
    per tensor; four bytes of scratch per element).
    """
    bn, bk = block
    n, k = codes.shape
    nbn, nbk = ref.cdiv(n, bn), ref.cdiv(k, bk)
    dev = codes.device
    method = method or ("flat" if dev.type == "cuda" else "packed")
    if method == "flat":
        rows = (torch.arange(n, device=dev, dtype=torch.int32) // bn) * (nbk * 256)
        cols = (torch.arange(k, device=dev, dtype=torch.int32) // bk) * 256
        idx = codes.to(torch.int32)
        idx += rows[:, None]
        idx += cols[None, :]
        return torch.bincount(idx.view(-1), minlength=nbn * nbk * 256).view(nbn, nbk, 256)
    out = torch.empty((nbn, nbk, 256), dtype=torch.int64, device=dev)
    cols_per_pass = 127 * bk  # high byte stays in 0..126: the int16 stays positive

    def count(block_rows: Sequence[int], c0: int, c1: int) -> None:
        jb0, nbk_pass = c0 // bk, ref.cdiv(c1 - c0, bk)
        # code + 256 * block column: widening the bytes into a contiguous int16 buffer and adding the column term
        # is ~1.4x faster than writing the codes into every other byte of an interleaved buffer
        colterm = ((torch.arange(c1 - c0, device=dev) // bk) * 256).to(torch.int16)
        buf = torch.empty((min(bn, n), c1 - c0), dtype=torch.int16, device=dev)
        for i in block_rows:
            r0, r1 = i * bn, min(n, (i + 1) * bn)
            packed = buf[: r1 - r0]
            packed.copy_(codes[r0:r1, c0:c1])
            packed.add_(colterm)
            counts = torch.bincount(packed.reshape(-1), minlength=nbk_pass * 256)
            out[i, jb0 : jb0 + nbk_pass] = counts.view(nbk_pass, 256)

    threads = torch.get_num_threads()
    workers = max(1, min(workers or threads, nbn))
    for c0 in range(0, k, cols_per_pass):
        c1 = min(k, c0 + cols_per_pass)
        if workers == 1:
            count(range(nbn), c0, c1)
            continue
        from concurrent.futures import ThreadPoolExecutor

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda part, c0=c0, c1=c1: count(part, c0, c1),
                              [range(w, nbn, workers) for w in range(workers)]))
        finally:
            torch.set_num_threads(threads)
    return out


def _sums_from_histogram(codes: torch.Tensor, s: torch.Tensor, block: tuple[int, int], fp8_dtype: torch.dtype,
                         name: str) -> tuple[float, float, float]:
    """(sum D^2, noise^2, sum E^2) from per-block code histograms."""
    hist = _block_code_histogram(codes, block)
    values, ulp, nan = (t.to(codes.device) for t in _code_tables(fp8_dtype))
    n_nan = int(hist[..., nan].sum())
    if n_nan:
        raise CheckpointError(f"{n_nan} NaN codes in the FP8 data", tensor=name)
    # E4M3 is sign-symmetric and rounding is too: fold each code onto its magnitude (codes 0..127 are the
    # non-negative values; the NaN codes hold no counts by now).
    h = (hist[..., :128] + hist[..., 128:]).double()
    vpos = torch.where(nan[:128], torch.zeros_like(values[:128]), values[:128])
    fmax = ref.fp8_max(fp8_dtype)
    s64 = s.double()
    # Elements stored at +-fmax are block maxima, which a float32 scale (s = amax / fmax) represents exactly.
    exact_max = (vpos == fmax).double()
    noise = float(((h @ (ulp[:128] ** 2 * (1 - exact_max))) * s64**2).sum()) / 12.0
    deq = vpos[None, None, :] * s[..., None]  # float32, as quant.reference.dequantize_weight
    s8 = ref.ceil_to_ue8m0(s)
    requant = (deq / s8[..., None]).clamp(max=fmax).to(fp8_dtype).to(torch.float32) * s8[..., None]
    err = (requant - deq).double()  # exact: both are float32 within a factor of two, or requant is 0
    extra = float((h * err * err).sum())
    deq64 = deq.double()
    signal = float((h * deq64 * deq64).sum())
    return signal, noise, extra


def _sums_direct(codes: torch.Tensor, s: torch.Tensor, block: tuple[int, int], fp8_dtype: torch.dtype, name: str,
                 rows_per_slab: int = 8192) -> tuple[float, float, float]:
    """The same sums element by element, a slab of rows at a time (float32 sums per slab, float64 across slabs;
    the ulp is read off the float32 exponent bits)."""
    bn, bk = block
    n, k = codes.shape
    fmax = ref.fp8_max(fp8_dtype)
    min_normal = float(torch.finfo(fp8_dtype).smallest_normal)
    s8 = ref.ceil_to_ue8m0(s)
    step = max(bn, rows_per_slab // bn * bn)
    sums = torch.zeros(4, dtype=torch.float64, device=codes.device)  # signal, noise * 12, extra, NaN count
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        v = codes[r0:r1].view(fp8_dtype).to(torch.float32)
        rows = slice(r0 // bn, ref.cdiv(r1, bn))
        sf = s[rows].repeat_interleave(bn, 0)[: r1 - r0].repeat_interleave(bk, 1)[:, :k]
        s8f = s8[rows].repeat_interleave(bn, 0)[: r1 - r0].repeat_interleave(bk, 1)[:, :k]
        deq = v * sf
        err = (deq / s8f).clamp(-fmax, fmax).to(fp8_dtype).to(torch.float32) * s8f - deq
        mag = v.abs()
        # 2^floor(log2|v|): keep only the exponent bits of the float32 value; E4M3 subnormals: fixed spacing
        pow2 = (mag.view(torch.int32) & 0x7F800000).view(torch.float32)
        ulp = torch.where(mag >= min_normal, pow2 * 0.125, min_normal * 0.125)
        ulp = torch.where(mag == fmax, 0.0, ulp) * sf
        sums += torch.stack([(deq * deq).nansum(), (ulp * ulp).nansum(), (err * err).nansum(),
                             torch.isnan(v).sum().float()]).double()
    signal, noise12, extra, n_nan = sums.tolist()
    if n_nan:
        raise CheckpointError(f"{int(n_nan)} NaN codes in the FP8 data", tensor=name)
    return signal, noise12 / 12.0, extra


def audit_fp8_tensor(
    name: str,
    q: torch.Tensor,
    scale: torch.Tensor,
    block: Sequence[int] = (128, 128),
    *,
    device: str | torch.device = "cpu",
    scale_dtype: str | None = None,
    method: str | None = None,
) -> CheckpointRow:
    """The checkpoint-level row of one stored FP8 weight (see the module docstring for the formulas).

    ``method`` "histogram" (the CPU default) works on per-block code counts; "direct" (the CUDA default, where
    contended atomics make histograms slow and bandwidth is plentiful) computes the same sums element by element,
    a slab of rows at a time. Both give the same numbers up to float64 summation order."""
    bn, bk = ref.normalize_block_size(block)
    if q.dim() != 2:
        raise CheckpointError(f"FP8 weight must be 2-D [N, K], got shape {list(q.shape)}", tensor=name)
    if q.dtype not in FP8_TORCH_DTYPES:
        raise CheckpointError(f"expected float8_e4m3fn/fnuz, got {q.dtype}", tensor=name)
    n, k = q.shape
    want = ref.weight_scale_shape((n, k), (bn, bk))
    if tuple(scale.shape) != want:
        raise CheckpointError(
            f"scale shape {list(scale.shape)} does not match weight [{n}, {k}] with block size {[bn, bk]}: expected "
            f"{list(want)} (wrong weight_block_size?)",
            tensor=name,
        )
    try:
        s = ref.scales_to_float32(scale, f"{name} scale").to(device)
    except ref.QuantError as exc:
        raise CheckpointError(str(exc), tensor=name) from None
    bad = ~(torch.isfinite(s) & (s > 0))
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        raise CheckpointError(f"scale of block {idx} is {float(s[idx[0], idx[1]])}: scales must be positive and "
                              "finite", tensor=name)
    codes = q.view(torch.uint8)
    if codes.device != torch.device(device):
        codes = codes.to(device)
    method = method or ("direct" if codes.device.type == "cuda" else "histogram")
    if method == "histogram":
        signal, noise, extra = _sums_from_histogram(codes, s, (bn, bk), q.dtype, name)
    elif method == "direct":
        signal, noise, extra = _sums_direct(codes, s, (bn, bk), q.dtype, name)
    else:
        raise ValueError(f"method={method!r}: expected 'histogram' or 'direct'")
    s8 = ref.ceil_to_ue8m0(s)
    inflation = s8 / s
    if signal == 0.0:  # an all-zero weight: nothing to lose
        bits32 = bits8 = MAX_BITS
    else:
        bits32 = bits_from_power(signal, noise)
        bits8 = bits_from_power(signal, noise + extra)
    return CheckpointRow(
        name=name,
        source="fp8",
        shape=(n, k),
        dtype=str(q.dtype).replace("torch.", ""),
        scale_dtype=scale_dtype or str(scale.dtype).replace("torch.", ""),
        rel_err_fp32=0.0,
        rel_err_ue8m0=math.sqrt(extra / signal) if signal else 0.0,
        bits_fp32=bits32,
        bits_ue8m0=bits8,
        bits_lost=0.0 if extra == 0.0 else max(0.0, bits32 - bits8),
        scale_inflation_mean=float(inflation.double().mean()),
        scale_inflation_max=float(inflation.max()),
        pow2_block_share=float(ref.is_power_of_two(s).double().mean()),
        blocks=int(s.numel()),
        inflation_hist=inflation_histogram(inflation),
    )


def audit_float_tensor(name: str, w: torch.Tensor, block: Sequence[int] = (128, 128), *,
                       device: str | torch.device = "cpu") -> CheckpointRow:
    """A bf16/fp16/fp32 weight, quantized with float32 and with UE8M0 block scales (the weights-only audit)."""
    if w.dim() != 2:
        raise CheckpointError(f"weight must be 2-D [N, K], got shape {list(w.shape)}", tensor=name)
    try:
        row = audit_weight(name, w.to(device), block)
    except ref.QuantError as exc:
        raise CheckpointError(str(exc), tensor=name) from None
    w32 = w.to(device).float()
    s32 = ref.quantize_weight(w32, block, "float32", name=name)[1]
    s8 = ref.quantize_weight(w32, block, "ue8m0", name=name)[1]
    return CheckpointRow(
        name=name, source="float", shape=row.shape, dtype=str(w.dtype).replace("torch.", ""), scale_dtype=None,
        rel_err_fp32=row.rel_err_fp32, rel_err_ue8m0=row.rel_err_ue8m0, bits_fp32=row.bits_fp32,
        bits_ue8m0=row.bits_ue8m0, bits_lost=row.bits_lost, scale_inflation_mean=row.scale_inflation_mean,
        scale_inflation_max=row.scale_inflation_max, pow2_block_share=row.pow2_block_share, blocks=int(s32.numel()),
        inflation_hist=inflation_histogram(s8 / s32),
    )
