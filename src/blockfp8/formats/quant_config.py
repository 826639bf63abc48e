"""`quantization_config` in a checkpoint's config.json: HF/DeepSeek `fp8` and compressed-tensors
`float-quantized` block FP8, read into one :class:`CheckpointQuantConfig`; and the dict we write.

HF / DeepSeek (`quant_method: fp8`)::

    {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
     "scale_fmt": "ue8m0",                       # optional: scales are powers of two
     "modules_to_not_convert": [...],             # HF skip list
     "ignored_layers": [...]}                     # vLLM skip list (we read and write both)

tensors ``<prefix>.weight`` (F8_E4M3) + ``<prefix>.weight_scale_inv`` (F32, or E8M0 bytes with ue8m0).

compressed-tensors (`quant_method: compressed-tensors`, `format: float-quantized`): ``config_groups`` whose
``weights`` are ``{num_bits: 8, type: float, strategy: block, block_structure: [bn, bk]}`` and whose
``input_activations`` are dynamic 1 x bk groups; skip list ``ignore``; tensors ``<prefix>.weight`` +
``<prefix>.weight_scale`` (often bf16).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockfp8.formats.errors import CheckpointError
from blockfp8.formats.hf_config import CONFIG_FILE, read_config_json
from blockfp8.paths import quote

QUANT_METHODS = ("fp8", "compressed-tensors")
SCALE_SUFFIX = {"fp8": "weight_scale_inv", "compressed-tensors": "weight_scale"}


def matches_any(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that selects module ``name``, or None.

    A pattern is ``re:REGEX`` (``re.match``, compressed-tensors style), a glob when it contains ``*?[``
    (``fnmatch`` on the full name), or a module name that matches itself, any module under it
    (``model.layers.0`` selects ``model.layers.0.mlp.down_proj``) and any module ending in it
    (``down_proj`` selects every ``*.down_proj``; ``lm_head`` selects ``lm_head``).
    """
    for p in patterns:
        if p.startswith("re:"):
            if re.match(p[3:], name):
                return p
        elif any(c in p for c in "*?["):
            if fnmatch.fnmatchcase(name, p):
                return p
        elif name == p or name.startswith(p + ".") or name.endswith("." + p):
            return p
    return None


@dataclass(frozen=True)
class CheckpointQuantConfig:
    """What a block-FP8 checkpoint's config says, in one shape for both formats."""

    quant_method: str  # "fp8" | "compressed-tensors"
    block_size: tuple[int, int]
    scale_fmt: str  # "float32" | "ue8m0"
    activation_scheme: str  # "dynamic"
    ignored: tuple[str, ...]  # union of modules_to_not_convert / ignored_layers / ignore, as written
    source: str  # the config.json it came from
    targets: tuple[str, ...] = ("Linear",)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def scale_suffix(self) -> str:
        """On-disk name of the scale next to ``<prefix>.weight``."""
        return SCALE_SUFFIX[self.quant_method]

    def is_ignored(self, module_name: str) -> str | None:
        return matches_any(module_name, self.ignored)

    def as_hf_dict(self) -> dict:
        """The HF `fp8` form (what BlockFP8Config.from_hf_quant_config reads), whatever the source format."""
        return fp8_quant_config_dict(self.block_size, self.scale_fmt, self.ignored)


def _block_size(value: Any, source: str, path: str) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise CheckpointError(f"field {path}={quote(value)} must be two positive integers, e.g. [128, 128]",
                              file=source)
    return int(value[0]), int(value[1])


def _str_list(value: Any, source: str, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"field {path}={quote(value)} must be a list of module names", file=source)
    return tuple(value)


def _parse_fp8(qc: dict, source: str) -> CheckpointQuantConfig:
    base = "quantization_config"
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise CheckpointError(f"field {base}.fmt={quote(fmt)} is not supported; only 'e4m3' block FP8", file=source)
    scheme = qc.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise CheckpointError(
            f"field {base}.activation_scheme={quote(scheme)} is not supported; block FP8 uses 'dynamic' 1x128 "
            "activation scales",
            file=source,
        )
    if qc.get("weight_block_size") is None:
        raise CheckpointError(
            f"field {base}.weight_block_size is missing: this is per-tensor FP8, not block FP8", file=source
        )
    block = _block_size(qc["weight_block_size"], source, f"{base}.weight_block_size")
    scale_fmt = qc.get("scale_fmt") or "float32"
    if scale_fmt not in ("float32", "ue8m0"):
        raise CheckpointError(f"field {base}.scale_fmt={quote(scale_fmt)} is not valid; valid: ue8m0 (or absent)",
                              file=source)
    ignored = _str_list(qc.get("modules_to_not_convert"), source, f"{base}.modules_to_not_convert")
    ignored += tuple(
        n for n in _str_list(qc.get("ignored_layers"), source, f"{base}.ignored_layers") if n not in ignored
    )
    return CheckpointQuantConfig("fp8", block, scale_fmt, "dynamic", ignored, source, raw=qc)


def _parse_compressed_tensors(qc: dict, source: str) -> CheckpointQuantConfig:
    base = "quantization_config"
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise CheckpointError(f"field {base}.config_groups is missing or empty", file=source)
    top_format = qc.get("format")
    block: tuple[int, int] | None = None
    targets: list[str] = []
    for gname, group in groups.items():
        gpath = f"{base}.config_groups.{gname[:80]}"
        if not isinstance(group, dict):
            raise CheckpointError(f"field {gpath} must be an object", file=source)
        fmt = group.get("format") or top_format
        if fmt != "float-quantized":
            raise CheckpointError(
                f"field {gpath}.format={quote(fmt)} is not supported; only 'float-quantized' block FP8", file=source
            )
        w = group.get("weights") or {}
        if not isinstance(w, dict):
            raise CheckpointError(f"field {gpath}.weights={quote(w)} must be an object", file=source)
        want = {"num_bits": 8, "type": "float", "strategy": "block"}
        for key, value in want.items():
            if w.get(key) != value:
                raise CheckpointError(
                    f"field {gpath}.weights.{key}={quote(w.get(key))} is not supported; block FP8 needs {quote(value)}",
                    file=source,
                )
        if w.get("dynamic", False):
            raise CheckpointError(f"field {gpath}.weights.dynamic=true: weights must be stored quantized",
                                  file=source)
        gblock = _block_size(w.get("block_structure"), source, f"{gpath}.weights.block_structure")
        if block is not None and gblock != block:
            raise CheckpointError(
                f"field {gpath}.weights.block_structure={list(gblock)} differs from another group's "
                f"{list(block)}; one block size per checkpoint is supported",
                file=source,
            )
        block = gblock
        act = group.get("input_activations")
        if act is not None and not isinstance(act, dict):
            raise CheckpointError(f"field {gpath}.input_activations={quote(act)} must be an object", file=source)
        if act is not None:
            if act.get("dynamic") is not True or act.get("type", "float") != "float" or act.get("num_bits", 8) != 8:
                raise CheckpointError(
                    f"field {gpath}.input_activations={quote(act)} is not supported; block FP8 quantizes activations "
                    "dynamically to 8-bit float",
                    file=source,
                )
            gs = act.get("group_size")
            if act.get("strategy") == "group" and gs is not None and gs != gblock[1]:
                raise CheckpointError(
                    f"field {gpath}.input_activations.group_size={gs} must equal the weight block K {gblock[1]}",
                    file=source,
                )
        targets += [t for t in _str_list(group.get("targets"), source, f"{gpath}.targets") if t not in targets]
    ignored = _str_list(qc.get("ignore"), source, f"{base}.ignore")
    assert block is not None
    return CheckpointQuantConfig("compressed-tensors", block, "float32", "dynamic", ignored, source,
                                 targets=tuple(targets) or ("Linear",), raw=qc)


def parse_quant_config(qc: Any, source: str = "<config>") -> CheckpointQuantConfig:
    """Parse a `quantization_config` dict; errors name ``source`` and the field."""
    if not isinstance(qc, dict):
        raise CheckpointError(f"field quantization_config must be an object, got {type(qc).__name__}", file=source)
    method = qc.get("quant_method")
    if method == "fp8":
        return _parse_fp8(qc, source)
    if method == "compressed-tensors":
        return _parse_compressed_tensors(qc, source)
    raise CheckpointError(
        f"field quantization_config.quant_method={quote(method)} is not supported; valid: {', '.join(QUANT_METHODS)}",
        file=source,
    )


def read_quant_config(folder: str | Path) -> CheckpointQuantConfig | None:
    """The block-FP8 quantization config of a model folder, or None when config.json has none."""
    path = Path(folder) / CONFIG_FILE
    qc = read_config_json(folder).get("quantization_config")
    return None if qc is None else parse_quant_config(qc, str(path))


def fp8_quant_config_dict(
    block_size: Sequence[int], scale_fmt: str = "float32", skipped: Iterable[str] = ()
) -> dict:
    """The `quantization_config` we write (HF `fp8` form), with both skip-list keys."""
    if scale_fmt not in ("float32", "ue8m0"):
        raise CheckpointError(f"scale_fmt={quote(scale_fmt)} is not valid; valid: float32, ue8m0")
    d: dict[str, Any] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [int(block_size[0]), int(block_size[1])],
    }
    if scale_fmt == "ue8m0":
        d["scale_fmt"] = "ue8m0"
    names = sorted(dict.fromkeys(skipped))
    d["modules_to_not_convert"] = list(names)
    d["ignored_layers"] = list(names)
    return d
