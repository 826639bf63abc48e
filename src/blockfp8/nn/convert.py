"""Whole models made block-FP8 in place: :func:`quantize_model` turns a float transformers model's layers into
block-FP8 ones and says what it did in a :class:`QuantizeReport`.

The rule for what is converted (:func:`skip_reason`) is shared with the checkpoint loader and the checkpoint
converter (``nn.load``): every ``nn.Linear`` and every fused experts module (transformers 5.x
``gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``), except

* ``lm_head`` (FP8 checkpoints keep the output projection in high precision; SmolLM2 ties it to the embedding),
* MoE router gates (``<block>.gate`` beside ``<block>.experts``, ``shared_expert_gate``): engines keep them
  unquantized (vLLM builds them with ``quant_config=None``),
* modules matched by ``BlockFP8Config.ignored_layers`` / ``--ignore`` (see ``formats.matches_any``).

MoE blocks keep the model's own router (so model-specific routing, shared experts, grouped top-k stay exact);
their experts module is replaced by :class:`BlockFP8Experts`, whose forward has the same signature.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from blockfp8.config import BlockFP8Config
from blockfp8.formats import fp8_quant_config_dict, matches_any
from blockfp8.log import get_logger
from blockfp8.nn.linear import BlockFP8Linear, runtime_platform
from blockfp8.nn.moe import BlockFP8Experts, is_fused_experts
from blockfp8.platform import Platform

ROUTER_NAMES = ("shared_expert_gate",)

_log = get_logger("nn.convert")


# ------------------------------------------------------------------------------------------------ the rule


def _is_router(name: str, parent: nn.Module | None) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ROUTER_NAMES or (leaf == "gate" and parent is not None and hasattr(parent, "experts"))


def skip_reason(name: str, module: nn.Module, parent: nn.Module | None, ignored: Iterable[str],
                tied: set[int] = frozenset()) -> str | None:
    """Why ``module`` (an nn.Linear or fused experts module named ``name``) stays in high precision, or None."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "lm_head":
        return "lm_head: the output projection stays in high precision (as in FP8 checkpoints)"
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and id(weight) in tied:
        return "weight tied to the input embedding"
    if isinstance(module, nn.Linear) and _is_router(name, parent):
        return "MoE router gate: engines keep it unquantized"
    pattern = matches_any(name, ignored)
    if pattern is not None:
        return f"ignored (matches {pattern!r})"
    return None


def parent_module(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding submodule ``name`` of ``model``, and the attribute it is held under."""
    if "." not in name:
        return model, name
    head, leaf = name.rsplit(".", 1)
    return model.get_submodule(head), leaf


def tied_weight_ids(model: nn.Module) -> set[int]:
    """``id`` of the input embedding's weight: a layer sharing it is tied and stays in high precision."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    w = getattr(emb, "weight", None)
    return {id(w)} if isinstance(w, torch.Tensor) else set()


def convertible_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, "linear" | "experts") for every convertible module not yet converted, outermost first."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not isinstance(module, BlockFP8Linear):
            out.append((name, module, "linear"))
        elif is_fused_experts(module) and not isinstance(module, BlockFP8Experts):
            out.append((name, module, "experts"))
    return out


# ------------------------------------------------------------------------------------------------ the report


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` / ``load_fp8_checkpoint`` did."""

    converted: list[str] = field(default_factory=list)  # BlockFP8Linear
    converted_experts: list[str] = field(default_factory=list)  # BlockFP8Experts
    skipped: dict[str, str] = field(default_factory=dict)  # module -> why it stays in high precision
    backends: Counter = field(default_factory=Counter)  # "linear: reference/float32" -> number of GEMM decisions
    weight_scale_fmt: str = "float32"
    bytes_before: int = 0  # parameter bytes of the converted modules before
    bytes_after: int = 0  # ... and after (FP8 weights + float32 scales)

    def summary(self) -> str:
        size = (f"{self.bytes_before / 2**20:.1f} MiB -> " if self.bytes_before else "") + \
            f"{self.bytes_after / 2**20:.1f} MiB"
        lines = [f"{len(self.converted)} linear layers and {len(self.converted_experts)} expert blocks in block FP8 "
                 f"({self.weight_scale_fmt} weight scales): {size}"]
        lines += [f"  {k}: {v}" for k, v in sorted(self.backends.items())]
        reasons = Counter(self.skipped.values())
        for why, n in sorted(reasons.items()):
            names = [k for k, v in self.skipped.items() if v == why]
            lines.append(f"  skipped {n} ({why}): {', '.join(names[:4])}{' ...' if n > 4 else ''}")
        return "\n".join(lines)


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def count_decisions(report: QuantizeReport, module: nn.Module) -> None:
    """Count each GEMM decision of a converted layer under "kind: backend/activation scales"."""
    decisions = [module.decision] if isinstance(module, BlockFP8Linear) else list(module.decisions.values())
    for d in decisions:
        requant = " (requant ue8m0)" if d.requant_weight_ue8m0 else ""
        report.backends[f"{d.kind}: {d.backend}/{d.act_scale_fmt}{requant}"] += 1


# ------------------------------------------------------------------------------------------------ quantize_model


def _weight_of(module: nn.Module, kind: str) -> torch.Tensor:
    return module.weight if kind == "linear" else module.gate_up_proj


def _unusable_weight(weight: torch.Tensor) -> str | None:
    """Why a float weight cannot be quantized where it is, or None."""
    if weight.is_meta:
        return "weights are on the meta device (not materialized)"
    if not weight.is_floating_point():
        return f"weight dtype {weight.dtype} is not floating point"
    return None


def _convert(module: nn.Module, kind: str, name: str, config: BlockFP8Config, fmt: str,
             platform: Platform) -> BlockFP8Linear | BlockFP8Experts:
    """The block-FP8 layer quantized from ``module``'s float weights, its decision resolved for ``platform``."""
    if kind == "linear":
        return BlockFP8Linear.from_linear(module, config, scale_fmt=fmt, name=name, platform=platform)
    return BlockFP8Experts.from_fused(module.gate_up_proj.detach(), module.down_proj.detach(),
                                      act_fn=getattr(module, "act_fn", None), config=config, scale_fmt=fmt, name=name,
                                      platform=platform)


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    config: BlockFP8Config | None = None,
    *,
    weight_scale_fmt: str | None = None,
    platform: Platform | None = None,
) -> QuantizeReport:
    """Replace, in place, every ``nn.Linear`` and fused experts module of ``model`` (see the module docstring for
    what is skipped) with block-FP8 layers quantized from their float weights, and resolve each one's decision.

    ``weight_scale_fmt`` is the format the weights are quantized in (the "checkpoint" format): default
    ``config.scale_fmt`` or float32. ``config.scale_fmt`` asks every kernel for that format; a float32-quantized
    weight used by a UE8M0 kernel is requantized by its backend (the second rounding real deployments pay).
    The float originals are released as each module is replaced: converted weights take 1 byte per parameter
    plus one float32 scale per block.
    """
    config = config if config is not None else BlockFP8Config()
    fmt = weight_scale_fmt or config.scale_fmt or "float32"
    if fmt not in ("float32", "ue8m0"):
        raise ValueError(f"weight_scale_fmt={fmt!r} is not valid; valid values: float32, ue8m0")
    report = QuantizeReport(weight_scale_fmt=fmt)
    tied = tied_weight_ids(model)
    plat = None
    for name, module, kind in convertible_modules(model):
        parent, leaf = parent_module(model, name)
        weight = _weight_of(module, kind)
        why = skip_reason(name, module, parent, config.ignored_layers, tied) or _unusable_weight(weight)
        if why is not None:
            report.skipped[name] = why
            continue
        plat = plat or runtime_platform(weight.device, platform)
        before = param_bytes(module)
        new = _convert(module, kind, name, config, fmt, plat)
        (report.converted if kind == "linear" else report.converted_experts).append(name)
        setattr(parent, leaf, new)
        del module, weight
        report.bytes_before += before
        report.bytes_after += param_bytes(new)
        count_decisions(report, new)
    if not report.converted and not report.converted_experts:
        _log.warning("quantize_model converted nothing: %s", report.summary())
    else:
        _describe_for_saving(model, config, fmt, report)
    return report


def _describe_for_saving(model: nn.Module, config: BlockFP8Config, fmt: str, report: QuantizeReport) -> None:
    """Make transformers' ``model.save_pretrained`` write a checkpoint that says what it holds: the HF ``fp8``
    ``quantization_config`` (block size, scale format, both skip lists), as ``blockfp8 quantize`` writes it.
    Without it the FP8 weights would be read back as plain floats and the model would silently produce garbage.
    Fused MoE experts are held in a layout that is not the per-expert one on disk, so saving such a model is
    refused (``blockfp8 quantize`` writes it)."""
    hf_config = getattr(model, "config", None)
    if hf_config is None or not hasattr(model, "save_pretrained"):
        return
    if report.converted_experts:
        model.save_pretrained = functools.partial(_refuse_save, report.converted_experts[0])
        return
    hf_config.quantization_config = fp8_quant_config_dict(config.weight_block_size, fmt, report.skipped)


def _refuse_save(experts: str, *args, **kwargs) -> None:
    raise ValueError(f"save_pretrained after quantize_model: {experts} holds fused FP8 experts, which this model "
                     "cannot write in the per-expert checkpoint layout; quantize the bf16 folder with `blockfp8 "
                     "quantize SRC DST` instead")
