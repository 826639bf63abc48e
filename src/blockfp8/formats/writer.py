"""The streaming quantize writer: a bf16/fp32 safetensors model folder in, an HF `fp8` block-FP8 folder out.

Tensor by tensor: each source tensor is read, quantized (or copied) and appended to its output shard, then
dropped, so peak memory is a small multiple of the largest tensor (the float32 working copy of the weight
being quantized), not the model. The output keeps the source's sharding (same shard names, a new index),
holds ``<prefix>.weight`` (F8_E4M3) + ``<prefix>.weight_scale_inv`` (F32) for each quantized weight, a
``config.json`` with a ``quantization_config`` naming the unconverted linear modules under both skip-list keys
(``modules_to_not_convert`` for HF, ``ignored_layers`` for vLLM), and copies of the other files (tokenizer,
generation config, ...). Everything is written to a temporary folder beside DST and renamed at the end; SRC
is only read; on any error nothing is left at DST.

Which tensors are quantized is the caller's decision (a :class:`TensorSelector`); ``blockfp8.nn.load``
builds one from the model's own module structure.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from blockfp8 import atomic, paths
from blockfp8.formats.errors import CheckpointError
from blockfp8.formats.hf_config import CONFIG_FILE, read_config_json
from blockfp8.formats.quant_config import fp8_quant_config_dict
from blockfp8.formats.safetensors_io import (
    INDEX_FILE,
    PICKLE_SUFFIXES,
    SafetensorsCheckpoint,
    StreamingSafetensorsWriter,
)
from blockfp8.quant import reference as ref

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SCALE_SUFFIX = "weight_scale_inv"


class TensorSelector(Protocol):
    """Decides, from names and shapes alone, which source tensors become FP8."""

    def decide(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[bool, str]:
        """(quantize?, why) for one tensor of the source checkpoint."""
        ...

    def skipped_modules(self) -> list[str]:
        """Linear modules deliberately left in high precision (written to both skip lists)."""
        ...


@dataclass
class QuantizeCheckpointReport:
    src: str
    dst: str
    block_size: tuple[int, int]
    scale_fmt: str
    quantized: list[str] = field(default_factory=list)  # tensor names made FP8
    kept: dict[str, str] = field(default_factory=dict)  # tensor name -> why it was copied as is
    skipped_modules: list[str] = field(default_factory=list)
    copied_files: list[str] = field(default_factory=list)
    not_copied: dict[str, str] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    ue8m0_weights: list[str] = field(default_factory=list)  # a per-layer plan: weights given power-of-two scales

    def as_dict(self) -> dict:
        return {
            "src": self.src, "dst": self.dst, "block_size": list(self.block_size), "scale_fmt": self.scale_fmt,
            "ue8m0_weights": list(self.ue8m0_weights),
            "quantized": list(self.quantized), "kept": dict(self.kept), "skipped_modules": list(self.skipped_modules),
            "copied_files": list(self.copied_files), "not_copied": dict(self.not_copied),
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
        }


def check_destination(src: str | Path, dst: str | Path, overwrite: bool) -> tuple[Path, Path]:
    """``(src, dst)`` resolved, checked before any work: SRC a folder, DST neither SRC nor inside it nor around it
    once links are resolved, DST absent unless ``overwrite`` (and then a folder), DST's parent writable."""
    src_r, dst_r = paths.resolved(src), paths.resolved(dst)
    if not src_r.is_dir():
        raise CheckpointError("SRC is not a folder", file=src)
    if paths.same_or_nested(src_r, dst_r):
        shown = f" (after resolving links: {dst_r} and {src_r})" if (src_r, dst_r) != (Path(src), Path(dst)) else ""
        raise CheckpointError(f"DST {dst} must lie outside SRC {src}{shown}; SRC is never modified", file=dst)
    if os.path.lexists(dst_r) and not overwrite:
        raise CheckpointError("already exists; pass --overwrite (overwrite=True) to replace it", file=dst)
    if os.path.lexists(dst_r) and not dst_r.is_dir():
        raise CheckpointError("exists and is not a folder", file=dst)
    try:
        atomic.check_target(dst_r.parent, folder=True)  # the result is written beside DST, then renamed
    except OSError as exc:
        raise CheckpointError(f"cannot be written: {exc.filename}: {exc.strerror}", file=dst) from None
    return src_r, dst_r


def _extra_files(src: Path, skip: set[str], report: QuantizeCheckpointReport) -> list[Path]:
    """The other files of SRC to copy (tokenizer, generation config, ...); everything else is named in
    ``report.not_copied`` with the reason. A link out of SRC is never followed: its target may be anything."""
    keep = []
    for p in sorted(src.iterdir()):
        if p.name in skip or p.name.startswith("."):
            continue
        if p.suffix.lower() in PICKLE_SUFFIXES:
            report.not_copied[p.name] = "pickle file (never read or copied)"
        elif p.suffix == ".safetensors":
            report.not_copied[p.name] = "safetensors file not part of the checkpoint's index"
        elif p.is_symlink() and paths.link_escapes(p, src):
            report.not_copied[p.name] = "symbolic link out of SRC, not followed"
        elif not paths.is_regular(p):
            report.not_copied[p.name] = "not a regular file"
        else:
            keep.append(p)
    return keep


def _plan(ckpt: SafetensorsCheckpoint, selector: TensorSelector, block_size: tuple[int, int],
          report: QuantizeCheckpointReport) -> dict[Path, list[tuple[str, bool]]]:
    plan: dict[Path, list[tuple[str, bool]]] = {}
    for f in ckpt.files:
        rows = []
        for name in ckpt.names_in(f):
            info = ckpt.info(name)
            if name.endswith("." + SCALE_SUFFIX) or name.endswith(".weight_scale"):
                raise CheckpointError("SRC already holds quantization scales; it must be a bf16/fp32 model",
                                      file=f, tensor=name)
            if info.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                raise CheckpointError("SRC already holds FP8 tensors; it must be a bf16/fp32 model", file=f,
                                      tensor=name)
            if name.endswith(".weight") and len(info.shape) == 2 and 0 not in info.shape \
                    and info.dtype in FLOAT_DTYPES:
                quantize, why = selector.decide(name, info.shape, info.dtype)
            else:
                quantize, why = False, "not a 2-D floating-point .weight"
            if quantize:
                scale_name = name[: -len("weight")] + SCALE_SUFFIX
                if scale_name in ckpt:
                    raise CheckpointError(f"SRC already has {scale_name!r}", file=f, tensor=name)
                report.quantized.append(name)
            else:
                report.kept[name] = why
            rows.append((name, quantize))
        plan[f] = rows
    return plan


def _write_shard(ckpt: SafetensorsCheckpoint, src_file: Path, out_file: Path, rows: list[tuple[str, bool]],
                 block_size: tuple[int, int], scale_fmt: str, on_tensor: Callable[[int], None],
                 ue8m0_weights: Collection[str] = ()) -> list[str]:
    entries = []
    for name, quantize in rows:
        info = ckpt.info(name)
        if quantize:
            entries.append((name, torch.float8_e4m3fn, info.shape))
            entries.append((name[: -len("weight")] + SCALE_SUFFIX, torch.float32,
                            ref.weight_scale_shape(info.shape, block_size)))
        else:
            entries.append((name, info.dtype, info.shape))
    meta = dict(ckpt.metadata.get(src_file, {}))
    meta["format"] = "pt"
    mine = sorted(n for n, q in rows if q and n in ue8m0_weights)
    meta["blockfp8_quantized"] = json.dumps({"block_size": list(block_size), "scale_fmt": scale_fmt,
                                             **({"ue8m0_weights": mine} if mine else {})})
    writer = StreamingSafetensorsWriter(out_file, entries, metadata=meta)
    try:
        for name, quantize in rows:
            t = ckpt.get(name)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = (~torch.isfinite(t)).nonzero()[0].tolist()
                raise CheckpointError(f"NaN or Inf at index {bad}; refusing to write a broken model", file=src_file,
                                      tensor=name)
            if quantize:
                try:
                    fmt = "ue8m0" if name in ue8m0_weights else scale_fmt
                    q, s = ref.quantize_weight(t, block_size, fmt, name=name)
                except ref.QuantError as exc:
                    raise CheckpointError(str(exc), file=src_file, tensor=name) from None
                writer.write(name, q)
                writer.write(name[: -len("weight")] + SCALE_SUFFIX, s)
                del q, s
            else:
                writer.write(name, t)
            on_tensor(ckpt.info(name).nbytes)
            del t
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return [n for n, _, _ in entries]


def quantize_checkpoint(
    src: str | Path,
    dst: str | Path,
    selector: TensorSelector,
    *,
    block_size: tuple[int, int] = (128, 128),
    scale_fmt: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    ue8m0_weights: Collection[str] = (),
) -> QuantizeCheckpointReport:
    """Quantize the model folder ``src`` into a new block-FP8 folder ``dst`` (see the module docstring).

    ``ue8m0_weights`` (a per-layer plan): weights quantized with power-of-two (UE8M0) scales while the rest use
    ``scale_fmt``. The scales stay float32 tensors, so every reader takes them as ordinary block scales; the
    config says ``scale_fmt: ue8m0`` only when every weight has it."""
    block_size = ref.normalize_block_size(block_size)
    if scale_fmt not in ref.SCALE_FMTS:
        raise CheckpointError(f"scale_fmt={scale_fmt!r} is not valid; valid values: {', '.join(ref.SCALE_FMTS)}")
    src, dst = check_destination(src, dst, overwrite)
    config = read_config_json(src)
    if config.get("quantization_config") is not None:
        raise CheckpointError("has a quantization_config already: SRC must be a bf16/fp32 model",
                              file=src / CONFIG_FILE)
    report = QuantizeCheckpointReport(str(src), str(dst), block_size, scale_fmt)
    with SafetensorsCheckpoint(src) as ckpt:
        plan = _plan(ckpt, selector, block_size, report)
        if not report.quantized:
            raise CheckpointError("no tensor selected for quantization (every linear layer ignored?)", file=src)
        report.ue8m0_weights = [n for n in report.quantized if n in set(ue8m0_weights)]
        if ue8m0_weights and not report.ue8m0_weights:
            raise CheckpointError("the plan's UE8M0 layers name no weight this checkpoint quantizes (another "
                                  "model's plan?)", file=src)
        report.skipped_modules = sorted(selector.skipped_modules())
        report.bytes_in = sum(ckpt.info(n).nbytes for n in ckpt.names())
        extra = _extra_files(src, {f.name for f in ckpt.files} | {INDEX_FILE, CONFIG_FILE}, report)
        atomic.reclaim_stale(dst)
        tmp = atomic.partial_folder(dst)
        try:
            _write_folder(ckpt, plan, tmp, config, extra, block_size, scale_fmt, report, progress,
                          frozenset(ue8m0_weights))
            atomic.publish_folder(tmp, dst, overwrite=overwrite)
        except FileExistsError as exc:
            raise CheckpointError(exc.strerror, file=dst) from None
        except OSError as exc:
            where = f" {Path(exc.filename).name}" if exc.filename else ""
            raise CheckpointError(f"cannot write{where} ({exc.strerror or exc}); DST was left as it was",
                                  file=dst) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when published
    return report


def _write_folder(ckpt: SafetensorsCheckpoint, plan: dict[Path, list[tuple[str, bool]]], tmp: Path, config: dict,
                  extra: list[Path], block_size: tuple[int, int], scale_fmt: str, report: QuantizeCheckpointReport,
                  progress: bool, ue8m0_weights: Collection[str] = ()) -> None:
    """Everything DST will hold, written into ``tmp``: the shards, the index, the copied files, config.json."""
    from blockfp8.log import Progress

    weight_map: dict[str, str] = {}
    with Progress("quantizing", report.bytes_in, "MiB", enabled=progress, scale=2**20) as bar:
        for f, rows in plan.items():
            names = _write_shard(ckpt, f, tmp / f.name, rows, block_size, scale_fmt, bar.update, ue8m0_weights)
            weight_map.update({n: f.name for n in names})
    report.bytes_out = sum((tmp / f.name).stat().st_size for f in plan)
    if ckpt.index_path is not None:
        index = {"metadata": {"total_size": report.bytes_out}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    for p in extra:
        shutil.copyfile(p, tmp / p.name)
        report.copied_files.append(p.name)
    config["quantization_config"] = fp8_quant_config_dict(block_size, scale_fmt, report.skipped_modules)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
