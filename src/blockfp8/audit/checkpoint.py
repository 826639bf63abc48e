"""Checkpoint level: what requantizing a checkpoint's block scales to UE8M0 costs, tensor by tensor.

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
counted with ``bincount``, one row of blocks at a time); the rest works on a ``[blocks, 256]`` table. Tensors are
streamed one at a time from safetensors (memory-mapped), so peak memory is about one tensor. Runs on CPU or CUDA.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from blockfp8.audit.weights import MAX_BITS, audit_weight, bits_from_power
from blockfp8.formats.errors import CheckpointError
from blockfp8.formats.fp8 import FP8Checkpoint
from blockfp8.formats.quant_config import CheckpointQuantConfig, read_quant_config
from blockfp8.formats.safetensors_io import SafetensorsCheckpoint
from blockfp8.quant import reference as ref

FP8_TORCH_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_SUFFIXES = ("weight_scale_inv", "weight_scale")
DEFAULT_SKIP = ("lm_head", "embed")  # unquantized in every block-FP8 checkpoint we know

# Scale inflation s_ue8m0 / s_fp32 histogram: log2 bins. Rounding a scale up gives [1, 2) (log2 in [0, 1));
# the weights-only and calibrated levels derive UE8M0 scales from block maxima, which can also shrink a scale.
INFLATION_LOG2_EDGES = tuple(-1.0 + i / 32 for i in range(65))  # [-1, 1] in 64 bins


def inflation_histogram(inflation: torch.Tensor) -> list[int]:
    """Counts of ``log2(inflation)`` in the 64 fixed bins over [-1, 1] (values outside go to the end bins)."""
    x = torch.log2(inflation.detach().double().flatten().cpu())
    x = x[torch.isfinite(x)]
    idx = ((x + 1.0) * 32).floor().clamp(0, 63).long()
    return torch.bincount(idx, minlength=64).tolist()




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


# --------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class TensorJob:
    """One weight to audit: its tensor name, the scale tensor's name (None for a float weight), bytes to read."""

    weight: str
    scale: str | None
    nbytes: int


@dataclass(frozen=True)
class CheckpointPlan:
    path: str
    jobs: tuple[TensorJob, ...]
    block_size: tuple[int, int]
    kind: str  # "fp8" | "float"
    quant_method: str | None
    scale_fmt: str | None
    model_type: str | None
    skipped: int  # 2-D weights left out (unquantized layers of an FP8 checkpoint, embeddings, lm_head, ...)


def _model_type(folder: Path) -> str | None:
    import json

    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    text = data.get("text_config")
    if isinstance(text, dict) and text.get("model_type"):
        return str(text["model_type"])
    return str(data["model_type"]) if data.get("model_type") else None


def _quant_config(path: Path) -> CheckpointQuantConfig | None:
    folder = path if path.is_dir() else path.parent
    return read_quant_config(folder) if (folder / "config.json").is_file() else None


class OpenCheckpoint:
    """A checkpoint opened for auditing. A folder whose config.json has a ``quantization_config`` is read through
    ``formats.FP8Checkpoint`` (weight/scale pairs, dtypes and scale shapes checked from the headers before anything
    is loaded); anything else (a bf16 folder, a bare .safetensors file) through ``SafetensorsCheckpoint``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.quant_config = _quant_config(self.path)
        self.fp8: FP8Checkpoint | None = None
        if self.quant_config is not None and self.path.is_dir():
            self.fp8 = FP8Checkpoint(self.path, self.quant_config)
            self.tensors = self.fp8.tensors
        else:
            self.tensors = SafetensorsCheckpoint(self.path)

    def close(self) -> None:
        self.tensors.close()

    def __enter__(self) -> OpenCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_checkpoint(ck: OpenCheckpoint, block: Sequence[int] | None = None, skip: Sequence[str] = DEFAULT_SKIP
                    ) -> CheckpointPlan:
    """Which tensors the checkpoint level audits. An FP8 checkpoint audits every FP8 weight with its scale
    (``weight_scale_inv``, or compressed-tensors ``weight_scale``); a float checkpoint every 2-D floating
    ``*.weight`` whose name contains no ``skip`` entry. The block size comes from config.json's
    ``quantization_config`` (an explicit ``block`` must agree with it), else ``block``, else 128x128."""
    qc, t = ck.quant_config, ck.tensors
    block_size = ref.normalize_block_size(block) if block is not None else None
    if qc is not None:
        if block_size is not None and block_size != qc.block_size:
            raise CheckpointError(f"--block {list(block_size)} contradicts weight_block_size {list(qc.block_size)}",
                                  file=qc.source)
        block_size = qc.block_size
    block_size = block_size or (128, 128)
    names = t.names()
    jobs: list[TensorJob] = []
    if ck.fp8 is not None:
        pairs = list(ck.fp8.fp8.values())
    else:
        pairs = []
        for w in names:
            if not w.endswith(".weight") or t.info(w).dtype not in FP8_TORCH_DTYPES:
                continue
            prefix = w[: -len("weight")]
            scale = next((prefix + s for s in SCALE_SUFFIXES if prefix + s in t), None)
            if scale is None:
                wanted = " or ".join(prefix + s for s in SCALE_SUFFIXES)
                raise CheckpointError(f"FP8 weight has no scale tensor ({wanted})", file=t.info(w).file, tensor=w)
            pairs.append((w, scale))
    if pairs:
        jobs = [TensorJob(w, s, t.info(w).nbytes + t.info(s).nbytes) for w, s in pairs]
        done = {w for w, _ in pairs}
        skipped = sum(1 for n in names if n.endswith(".weight") and n not in done and len(t.info(n).shape) == 2)
        kind = "fp8"
    else:
        skipped = 0
        for n in names:
            info = t.info(n)
            if not n.endswith(".weight") or len(info.shape) != 2 or info.dtype not in FLOAT_DTYPES:
                continue
            if any(s in n for s in skip):
                skipped += 1
                continue
            jobs.append(TensorJob(n, None, info.nbytes))
        kind = "float"
    if not jobs:
        raise CheckpointError("no FP8 weights and no 2-D floating-point weights to audit", file=ck.path)
    folder = ck.path if ck.path.is_dir() else ck.path.parent
    return CheckpointPlan(
        path=str(ck.path),
        jobs=tuple(jobs),
        block_size=block_size,
        kind=kind,
        quant_method=qc.quant_method if qc is not None else None,
        scale_fmt=qc.scale_fmt if qc is not None else None,
        model_type=_model_type(folder),
        skipped=skipped,
    )


def audit_job(ck: OpenCheckpoint, job: TensorJob, block: tuple[int, int], device: str | torch.device = "cpu",
              weight: torch.Tensor | None = None) -> CheckpointRow:
    """One job's row; ``weight`` is the job's weight tensor when it was already read (prefetched to the GPU)."""
    t = ck.tensors
    if job.scale is None:
        return audit_float_tensor(job.weight, t.get(job.weight), block, device=device)
    winfo, sinfo = t.info(job.weight), t.info(job.scale)
    try:
        raw_scale = t.get(job.scale)
        row = audit_fp8_tensor(job.weight, t.get(job.weight) if weight is None else weight, raw_scale, block,
                               device=device, scale_dtype=sinfo.dtype_code)
    except CheckpointError as exc:
        if exc.file is None:
            raise CheckpointError(str(exc).split(": ", 1)[-1], file=winfo.file, tensor=job.weight) from None
        raise
    if ck.quant_config is not None and ck.quant_config.scale_fmt == "ue8m0" and row.pow2_block_share < 1.0:
        raise CheckpointError(f"config says scale_fmt ue8m0 but {100 * (1 - row.pow2_block_share):.1f}% of the "
                              "block scales are not powers of two", file=sinfo.file, tensor=job.scale)
    return row


def audit_jobs(
    ck: OpenCheckpoint,
    jobs: Iterable[TensorJob],
    block: tuple[int, int],
    device: str | torch.device = "cpu",
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[CheckpointRow]:
    """Rows for ``jobs`` in order. On CUDA the next FP8 weight is copied to the GPU (a background thread and a
    side stream) while the current one is audited, so reading and computing overlap."""
    jobs = list(jobs)
    dev = torch.device(device)
    if dev.type != "cuda" or not jobs:
        return [audit_job(ck, j, block, device) for j in (progress(jobs) if progress else jobs)]
    from concurrent.futures import ThreadPoolExecutor

    side = torch.cuda.Stream(device=dev)

    def load(job: TensorJob):
        if job.scale is None:
            return None
        with torch.cuda.stream(side):
            w = ck.tensors.get(job.weight).to(dev, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(side)
        return w, ready

    rows = []
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, jobs[0])
        for i, job in enumerate(progress(jobs) if progress else jobs):
            loaded = pending.result()
            if i + 1 < len(jobs):
                pending = pool.submit(load, jobs[i + 1])
            weight = None
            if loaded is not None:
                weight, ready = loaded
                main = torch.cuda.current_stream(dev)
                main.wait_event(ready)
                weight.record_stream(main)
            rows.append(audit_job(ck, job, block, device, weight=weight))
    return rows


def read_jobs(ck: OpenCheckpoint, jobs: Iterable[TensorJob], device: str | torch.device = "cpu") -> int:
    """The baseline for the speed claim: read every tensor the audit reads (a copy out of the memory map, and to
    the device when it is not the CPU), nothing else. Returns the bytes read."""
    total = 0
    for job in jobs:
        for name in (job.weight, job.scale):
            if name is None:
                continue
            t = ck.tensors.get(name)
            t = t.to(device) if torch.device(device).type != "cpu" else t.clone()
            total += t.numel() * t.element_size()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return total


@dataclass(frozen=True)
class SpeedReport:
    bytes: int
    read_s: float
    audit_s: float

    @property
    def ratio(self) -> float:
        """(audit rate) / (read rate): 1 = as fast as reading; the goal is >= 0.5."""
        return self.read_s / self.audit_s if self.audit_s > 0 else 0.0

    def as_dict(self) -> dict:
        gb = self.bytes / 1e9
        return {
            "bytes": self.bytes,
            "read_s": self.read_s,
            "audit_s": self.audit_s,
            "read_gb_per_s": gb / self.read_s if self.read_s > 0 else 0.0,
            "audit_gb_per_s": gb / self.audit_s if self.audit_s > 0 else 0.0,
            "audit_over_read_rate": self.ratio,
        }


def warm_up(device: str | torch.device, block: tuple[int, int]) -> None:
    """Run the audit and a read once on a small tensor so that timings exclude one-time kernel loading."""
    q, s = ref.quantize_weight(torch.randn(2 * block[0] + 3, 2 * block[1] + 5), block)
    audit_fp8_tensor("warm-up", q, s, block, device=device)
    q.to(device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, device: str | torch.device = "cpu"):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0
