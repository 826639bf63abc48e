"""Checkpoint level: which tensors of a checkpoint are audited, with which block size.

A checkpoint is opened once (``OpenCheckpoint``) and planned from its headers alone (``plan_checkpoint``): the
weight/scale pairs of an FP8 checkpoint, or the 2-D floating-point weights of a bf16/fp16/fp32 one, each a
``TensorJob`` with the bytes it reads (what ``audit.distributed`` balances ranks by). Nothing is loaded here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from blockfp8.audit.numerics import FP8_TORCH_DTYPES
from blockfp8.audit.weights import UNQUANTIZED_LINEARS
from blockfp8.formats.errors import CheckpointError
from blockfp8.formats.fp8 import FP8Checkpoint
from blockfp8.formats.hf_config import folder_model_type
from blockfp8.formats.quant_config import CheckpointQuantConfig, read_quant_config
from blockfp8.formats.safetensors_io import SafetensorsCheckpoint
from blockfp8.quant import reference as ref

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_SUFFIXES = ("weight_scale_inv", "weight_scale")
# 2-D tensors of a float checkpoint that are not quantized: the unquantized linears, and the embedding tables,
# which are 2-D ``*.weight`` tensors too but no GEMM's operand (the module levels never see them: not nn.Linear).
UNQUANTIZED_TENSORS = (*UNQUANTIZED_LINEARS, "embed")


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


def plan_checkpoint(ck: OpenCheckpoint, block: Sequence[int] | None = None, skip: Sequence[str] = UNQUANTIZED_TENSORS
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
            if 0 in t.info(w).shape:
                raise CheckpointError(f"FP8 weight of shape {list(t.info(w).shape)} holds no values",
                                      file=t.info(w).file, tensor=w)
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
            if not n.endswith(".weight") or len(info.shape) != 2 or 0 in info.shape or info.dtype not in FLOAT_DTYPES:
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
        model_type=folder_model_type(folder),
        skipped=skipped,
    )
