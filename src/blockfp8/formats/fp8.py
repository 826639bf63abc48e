"""Reading block-FP8 checkpoints (HF `fp8` and compressed-tensors): pair each FP8 ``<prefix>.weight`` with its
``<prefix>.weight_scale_inv`` / ``<prefix>.weight_scale``, check them, and hand out float32 scales.

All pairs are checked from the headers when the checkpoint is opened (a weight without its scale, a scale of
the wrong shape or dtype, a block size in config.json that disagrees with the scale shapes), so a bad
checkpoint fails before anything is loaded; values (NaN in a weight, non-positive or non-finite scales,
``scale_fmt: ue8m0`` scales that are not powers of two) are checked when a pair is read. Every error names
the file and the tensor. CPU only; never imports nn or a GPU backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from blockfp8.formats.errors import CheckpointError
from blockfp8.formats.quant_config import CheckpointQuantConfig, read_quant_config
from blockfp8.formats.safetensors_io import SafetensorsCheckpoint, TensorInfo
from blockfp8.quant import reference as ref

FP8_CODES = ("F8_E4M3",)
SCALE_SUFFIXES = ("weight_scale_inv", "weight_scale")
_SCALE_CODES = {
    "fp8": {"float32": ("F32",), "ue8m0": ("F32", "F8_E8M0", "U8")},
    "compressed-tensors": {"float32": ("F32", "BF16", "F16")},
}


@dataclass(frozen=True)
class FP8Weight:
    """One block-FP8 weight as read from a checkpoint."""

    name: str  # module prefix, e.g. "model.layers.0.mlp.down_proj"
    weight: torch.Tensor  # float8_e4m3fn [N, K]
    scale: torch.Tensor  # float32 [ceil(N/bn), ceil(K/bk)] (dequant multiplier)
    block_size: tuple[int, int]
    file: Path  # file holding the weight


def _implied_blocks(shape: tuple[int, int], scale_shape: tuple[int, ...]) -> list[tuple[int, int]]:
    if len(scale_shape) != 2:
        return []
    cands = (16, 32, 64, 128, 256, 512)
    return [(bn, bk) for bn in cands for bk in cands
            if ref.weight_scale_shape(shape, (bn, bk)) == tuple(scale_shape)]


class FP8Checkpoint:
    """A block-FP8 checkpoint folder: its quantization config, FP8 weight/scale pairs and the other tensors."""

    def __init__(self, folder: str | Path, quant_config: CheckpointQuantConfig | None = None):
        self.folder = Path(folder)
        qc = quant_config if quant_config is not None else read_quant_config(self.folder)
        if qc is None:
            raise CheckpointError(
                "config.json has no quantization_config: not an FP8 checkpoint (quantize it with "
                "`blockfp8 quantize`, or load it as a regular model)",
                file=self.folder / "config.json",
            )
        self.quant_config = qc
        self.tensors = SafetensorsCheckpoint(self.folder)
        self.fp8: dict[str, tuple[str, str]] = {}  # prefix -> (weight name, scale name)
        self.plain: list[str] = []
        self._pair_up()

    # ------------------------------------------------------------------ structure checks (headers only)
    def _pair_up(self) -> None:
        qc, t = self.quant_config, self.tensors
        scale_names: dict[str, str] = {}
        for name in t.names():
            for suffix in SCALE_SUFFIXES:
                if name.endswith("." + suffix):
                    prefix = name[: -len(suffix) - 1]
                    if suffix != qc.scale_suffix:
                        raise CheckpointError(
                            f"a {qc.quant_method} checkpoint stores scales as '{qc.scale_suffix}', found "
                            f"'{suffix}' (is quantization_config.quant_method right?)",
                            file=t.info(name).file,
                            tensor=name,
                        )
                    scale_names[prefix] = name
        scales = set(scale_names.values())  # a set: membership in dict.values() made pairing quadratic
        for name in t.names():
            if name in scales:
                continue
            info = t.info(name)
            prefix = name[: -len(".weight")] if name.endswith(".weight") else None
            if info.dtype_code in FP8_CODES or info.dtype_code == "F8_E5M2":
                if prefix is None:
                    raise CheckpointError("an FP8 tensor that is not a '.weight' cannot be placed", file=info.file,
                                          tensor=name)
                if prefix not in scale_names:
                    raise CheckpointError(f"FP8 weight without its scale '{prefix}.{qc.scale_suffix}'",
                                          file=info.file, tensor=name)
                self._check_pair(info, t.info(scale_names[prefix]))
                self.fp8[prefix] = (name, scale_names[prefix])
            else:
                if prefix is not None and prefix in scale_names:
                    raise CheckpointError(
                        f"has a scale '{scale_names[prefix]}' but the weight is {info.dtype_code}, not F8_E4M3",
                        file=info.file, tensor=name,
                    )
                self.plain.append(name)
        for prefix, sname in scale_names.items():
            if prefix not in self.fp8:
                raise CheckpointError(f"scale without its weight '{prefix}.weight'", file=t.info(sname).file,
                                      tensor=sname)

    def _check_pair(self, w: TensorInfo, s: TensorInfo) -> None:
        qc = self.quant_config
        if w.dtype_code not in FP8_CODES:
            raise CheckpointError(f"FP8 weights must be F8_E4M3, this one is {w.dtype_code}", file=w.file,
                                  tensor=w.name)
        if len(w.shape) != 2:
            raise CheckpointError(
                f"FP8 weight of shape {list(w.shape)}: only 2-D [N, K] weights are supported (per-expert "
                "tensors for MoE)", file=w.file, tensor=w.name,
            )
        if 0 in w.shape:
            raise CheckpointError(f"FP8 weight of shape {list(w.shape)} holds no values", file=w.file,
                                  tensor=w.name)
        allowed = _SCALE_CODES[qc.quant_method][qc.scale_fmt]
        if s.dtype_code not in allowed:
            raise CheckpointError(
                f"scale dtype {s.dtype_code} is not valid for a {qc.quant_method} checkpoint with scale_fmt "
                f"{qc.scale_fmt}; expected {' or '.join(allowed)}", file=s.file, tensor=s.name,
            )
        expected = ref.weight_scale_shape(w.shape, qc.block_size)
        if tuple(s.shape) != expected:
            implied = _implied_blocks(w.shape, s.shape)
            hint = (f"; the scale shape fits block size {list(implied[0])}, so the weight_block_size "
                    f"{list(qc.block_size)} in {qc.source} disagrees with the scales" if implied else "")
            raise CheckpointError(
                f"scale shape {list(s.shape)} does not match weight {list(w.shape)} with block size "
                f"{list(qc.block_size)}: expected {list(expected)}{hint}", file=s.file, tensor=s.name,
            )

    # ------------------------------------------------------------------ reading
    @property
    def block_size(self) -> tuple[int, int]:
        return self.quant_config.block_size

    def read(self, name: str) -> torch.Tensor:
        """Any tensor, as stored."""
        return self.tensors.get(name)

    def read_fp8(self, prefix: str, check_values: bool = True) -> FP8Weight:
        """The FP8 weight and float32 scales of one module, values checked."""
        if prefix not in self.fp8:
            raise CheckpointError("no FP8 weight for this module", file=self.folder, tensor=f"{prefix}.weight")
        wname, sname = self.fp8[prefix]
        winfo, sinfo = self.tensors.info(wname), self.tensors.info(sname)
        w = self.tensors.get(wname)
        raw_scale = self.tensors.get(sname)
        try:
            scale = ref.scales_to_float32(raw_scale, sname)
        except ref.QuantError as exc:
            raise CheckpointError(str(exc), file=sinfo.file, tensor=sname) from None
        if check_values:
            nan = w.view(torch.uint8).bitwise_and(0x7F).eq(0x7F)  # E4M3FN has no Inf; NaN is S.1111.111
            if bool(nan.any()):
                idx = nan.nonzero()[0].tolist()
                raise CheckpointError(f"NaN in the FP8 weight at {idx}", file=winfo.file, tensor=wname)
            bad = ~(torch.isfinite(scale) & (scale > 0))
            if bool(bad.any()):
                idx = bad.nonzero()[0].tolist()
                raise CheckpointError(
                    f"scale at block {idx} is {float(scale[tuple(idx)])}; scales must be finite and positive",
                    file=sinfo.file, tensor=sname,
                )
            if self.quant_config.scale_fmt == "ue8m0" and not bool(ref.is_power_of_two(scale).all()):
                idx = (~ref.is_power_of_two(scale)).nonzero()[0].tolist()
                raise CheckpointError(
                    f"config says scale_fmt ue8m0 but the scale at block {idx} ({float(scale[tuple(idx)])}) is not a "
                    "power of two", file=sinfo.file, tensor=sname,
                )
        return FP8Weight(prefix, w, scale, self.block_size, winfo.file)

    def close(self) -> None:
        self.tensors.close()

    def __enter__(self) -> FP8Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_fp8_tensors(folder: str | Path, check_values: bool = True) -> Iterator[FP8Weight]:
    """Yield every FP8 weight of a block-FP8 checkpoint, lazily, with float32 scales.

    The whole checkpoint's structure is checked before the first yield; each pair's values when it is read.
    """
    with FP8Checkpoint(folder) as ckpt:
        for prefix in ckpt.fp8:
            yield ckpt.read_fp8(prefix, check_values=check_values)
