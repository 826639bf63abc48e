"""FP8 checkpoint folders and models: :func:`load_fp8_checkpoint` (an FP8 checkpoint folder into a transformers
model with block-FP8 layers) and :class:`ModelTensorSelector` (which tensors of a float model folder
``blockfp8 quantize`` converts).

Both decide from the model's own module structure, built from ``config.json`` on the meta device, with the rule
of :func:`blockfp8.nn.convert.skip_reason`. Checkpoints store MoE experts one tensor per expert and projection
(``...experts.<e>.gate_proj``); the model holds them fused (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``).

Loading runs in phases, each a function below: build the empty model, plan which modules become block FP8 (from
the checkpoint's FP8 weights), replace them, read the FP8 weights, read everything else in the model's dtype, tie
and check that nothing is missing, and finally resolve one decision per layer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from blockfp8.config import BlockFP8Config
from blockfp8.formats import CheckpointError, FP8Checkpoint, read_config_json
from blockfp8.formats.hf_config import CONFIG_FILE, check_model_sizes, text_model_type
from blockfp8.nn.convert import (
    QuantizeReport,
    convertible_modules,
    count_decisions,
    param_bytes,
    parent_module,
    skip_reason,
    tied_weight_ids,
)
from blockfp8.nn.linear import BlockFP8Linear, runtime_platform
from blockfp8.nn.moe import BlockFP8Experts, is_fused_experts
from blockfp8.platform import Platform

# per-expert tensors on disk -> (part) of a fused experts module; Qwen2/3-MoE and Mixtral spellings
EXPERT_RE = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<expert>\d+)\.(?P<part>gate_proj|up_proj|down_proj|w1|w3|w2)$")
EXPERT_PART = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}
# checkpoint module prefixes that transformers 5.x renames when it builds the model (conversion_mapping.py)
PREFIX_RENAMES = ((".block_sparse_moe.", ".mlp."),)
# buffers some checkpoints carry that the model recomputes
IGNORABLE_TENSORS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _module_for_prefix(prefix: str, names: dict[str, nn.Module]) -> str | None:
    """The model's module a checkpoint prefix names (directly or under a transformers rename), or None."""
    if prefix in names:
        return prefix
    for old, new in PREFIX_RENAMES:
        renamed = prefix.replace(old, new)
        if renamed in names:
            return renamed
    return None


# ------------------------------------------------------------------------------------------------ checkpoint selector


def _meta_model(folder: Path, trust_remote_code: bool = False):
    """The model of ``folder/config.json`` built on the meta device (no weights)."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as exc:
        raise CheckpointError("needs transformers to read the model structure: pip install 'blockfp8[hf]'",
                              file=folder) from exc
    check_model_sizes(read_config_json(folder), folder / CONFIG_FILE)
    try:
        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise CheckpointError(f"transformers cannot read it ({str(exc)[:300]})", file=folder / CONFIG_FILE) from None
    if getattr(cfg, "quantization_config", None) is not None:
        cfg.quantization_config = None
        if hasattr(cfg, "__dict__"):
            cfg.__dict__.pop("quantization_config", None)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"transformers cannot build a causal LM for model_type={cfg.model_type!r} "
                              f"({str(exc)[:300]})", file=folder / CONFIG_FILE) from None
    return model


class ModelTensorSelector:
    """Which tensors of a float model folder become FP8, decided from the model's own module structure
    (built from config.json on the meta device, so no weights are read)."""

    def __init__(self, folder: str | Path, ignore: Iterable[str] = (), *, model: nn.Module | None = None):
        self.folder = Path(folder)
        self.ignore = tuple(ignore)
        model = model if model is not None else _meta_model(self.folder)
        tied = tied_weight_ids(model)
        self.modules: dict[str, nn.Module] = {}
        self.kinds: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        for name, module, kind in convertible_modules(model):
            parent, _ = parent_module(model, name)
            why = skip_reason(name, module, parent, self.ignore, tied)
            self.modules[name], self.kinds[name] = module, kind
            if why is not None:
                self.skipped[name] = why

    def decide(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[bool, str]:
        prefix = name[: -len(".weight")]
        m = EXPERT_RE.match(prefix)
        if m:
            target = _module_for_prefix(m["prefix"], self.modules)
            if target is None or self.kinds[target] != "experts":
                return False, "expert weight of a module the model does not fuse (kept as is)"
            if target in self.skipped:
                return False, self.skipped[target]
            module = self.modules[target]
            e, two_i, h = module.gate_up_proj.shape
            want = (two_i // 2, h) if EXPERT_PART[m["part"]] in ("gate", "up") else (h, two_i // 2)
            self._check(name, shape, want, int(m["expert"]), e)
            return True, "expert weight"
        target = _module_for_prefix(prefix, self.modules)
        if target is None or self.kinds[target] != "linear":
            return False, "not the weight of a linear layer (embedding, norm, ...)"
        if target in self.skipped:
            return False, self.skipped[target]
        self._check(name, shape, tuple(self.modules[target].weight.shape))
        return True, "linear weight"

    def _check(self, name: str, shape, want, expert: int | None = None, num_experts: int | None = None) -> None:
        if tuple(shape) != tuple(want):
            raise CheckpointError(f"shape {list(shape)} but config.json describes {list(want)} for this layer",
                                  file=self.folder, tensor=name)
        if expert is not None and expert >= num_experts:
            raise CheckpointError(f"expert {expert} but config.json describes {num_experts} experts",
                                  file=self.folder, tensor=name)

    def skipped_modules(self) -> list[str]:
        return sorted(self.skipped)


# ------------------------------------------------------------------------------------------------ load: config, model


def _resolve_config(config: BlockFP8Config | None, ckpt: FP8Checkpoint, hf: dict) -> BlockFP8Config:
    """The checkpoint's ``quantization_config`` (and model type), with an explicit ``config`` laid on top; the
    block size is the checkpoint's (the stored scales are per block of that size)."""
    qc = ckpt.quant_config
    base = BlockFP8Config.from_hf_quant_config(qc.as_hf_dict(), model_type=text_model_type(hf))
    if config is None:
        return base
    if tuple(config.weight_block_size) != qc.block_size and config.weight_block_size != (128, 128):
        raise ValueError(f"config.weight_block_size={list(config.weight_block_size)} disagrees with the "
                         f"checkpoint's {list(qc.block_size)} ({qc.source})")
    return dataclasses.replace(
        config,
        weight_block_size=qc.block_size,
        ignored_layers=tuple(dict.fromkeys((*base.ignored_layers, *config.ignored_layers))),
        model_type=config.model_type or base.model_type,
        scale_fmt=config.scale_fmt if config.scale_fmt is not None else base.scale_fmt,
    )


def _empty_model(folder: Path, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    """The causal LM of ``folder/config.json`` with its parameters on the meta device (buffers materialized),
    built without transformers' own FP8 integration (this loader replaces the layers itself). Eval mode."""
    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as exc:
        raise CheckpointError("loading a model needs transformers and accelerate: pip install 'blockfp8[hf]'",
                              file=folder) from exc
    check_model_sizes(read_config_json(folder), folder / CONFIG_FILE)
    tcfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    tcfg.quantization_config = None
    tcfg.__dict__.pop("quantization_config", None)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(tcfg, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


# ------------------------------------------------------------------------------------------------ load: structure


@dataclass
class _Plan:
    """Which modules of the empty model become block FP8, from the checkpoint's FP8 weights."""

    modules: dict[str, nn.Module]  # every convertible module of the model as built, by name
    linear_fp8: dict[str, str] = field(default_factory=dict)  # linear module -> checkpoint prefix
    experts_of: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)  # module -> (prefix, e, part)


def _plan_fp8_modules(model: nn.Module, ckpt: FP8Checkpoint) -> _Plan:
    """Map every FP8 weight of the checkpoint to the linear or fused experts module it belongs to; raises naming
    the file and tensor when the model has no such module or the layer's bias is missing."""
    plan = _Plan({n: m for n, m, _ in convertible_modules(model)})
    for prefix in ckpt.fp8:
        file = ckpt.tensors.info(ckpt.fp8[prefix][0]).file
        m = EXPERT_RE.match(prefix)
        target = _module_for_prefix(m["prefix"] if m else prefix, plan.modules)
        if target is None:
            raise CheckpointError("FP8 weight of a module the model built from config.json does not have",
                                  file=file, tensor=f"{prefix}.weight")
        module = plan.modules[target]
        if m:
            if not is_fused_experts(module):
                raise CheckpointError(f"expert weight, but {target} is not a fused experts module", file=file,
                                      tensor=f"{prefix}.weight")
            plan.experts_of.setdefault(target, []).append((prefix, int(m["expert"]), EXPERT_PART[m["part"]]))
        elif isinstance(module, nn.Linear):
            if module.bias is not None and f"{prefix}.bias" not in ckpt.tensors:
                raise CheckpointError("the layer has a bias but the checkpoint has none", file=file,
                                      tensor=f"{prefix}.bias")
            plan.linear_fp8[target] = prefix
        else:
            raise CheckpointError(f"FP8 weight for {type(module).__name__}, not a linear layer",
                                  file=file, tensor=f"{prefix}.weight")
    return plan


def _replace_fp8_modules(model: nn.Module, plan: _Plan, cfg: BlockFP8Config, dtype: torch.dtype,
                         device: torch.device, report: QuantizeReport) -> None:
    """Put an empty block-FP8 layer where the plan says; every other convertible module is recorded as skipped."""
    for name, module in plan.modules.items():
        parent, leaf = parent_module(model, name)
        if name in plan.linear_fp8:
            new = BlockFP8Linear(module.in_features, module.out_features, module.bias is not None,
                                 block_size=cfg.weight_block_size, config=cfg, params_dtype=dtype,
                                 device=device, name=name)
            setattr(parent, leaf, new)
            report.converted.append(name)
        elif name in plan.experts_of:
            e, two_i, h = module.gate_up_proj.shape
            new = BlockFP8Experts(e, h, two_i // 2, act_fn=getattr(module, "act_fn", None),
                                  block_size=cfg.weight_block_size, config=cfg, params_dtype=dtype,
                                  device=device, name=name)
            setattr(parent, leaf, new)
            report.converted_experts.append(name)
        else:
            report.skipped[name] = "stored unquantized in the checkpoint"


# ------------------------------------------------------------------------------------------------ load: tensors


def _load_fp8_weights(model: nn.Module, ckpt: FP8Checkpoint, plan: _Plan, device: torch.device,
                      folder: Path) -> None:
    """Read every FP8 weight and its scales into the block-FP8 layers; every expert needs all three parts."""
    for name, prefix in plan.linear_fp8.items():
        fw = ckpt.read_fp8(prefix)
        model.get_submodule(name).load_weights(fw.weight.to(device), fw.scale.to(device))
    for name, parts in plan.experts_of.items():
        layer = model.get_submodule(name)
        seen = set()
        for prefix, expert, part in parts:
            fw = ckpt.read_fp8(prefix)
            try:
                layer.load_expert(expert, part, fw.weight.to(device), fw.scale.to(device))
            except ValueError as exc:
                raise CheckpointError(str(exc), file=fw.file, tensor=f"{prefix}.weight") from None
            seen.add((expert, part))
        missing = [(x, p) for x in range(layer.num_experts) for p in ("gate", "up", "down") if (x, p) not in seen]
        if missing:
            raise CheckpointError(f"experts module {name}: no FP8 weight for expert {missing[0][0]} "
                                  f"{missing[0][1]} ({len(missing)} missing)", file=folder)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, file, device, dtype) -> None:
    """Put one unquantized checkpoint tensor into the parameter or buffer ``name`` (floats in ``dtype``)."""
    mod_name, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    try:
        module = model.get_submodule(mod_name)
    except AttributeError:
        raise CheckpointError("tensor has no place in the model built from config.json", file=file,
                              tensor=name) from None
    current = module._parameters.get(leaf) if leaf in module._parameters else module._buffers.get(leaf)
    if current is None and leaf not in module._parameters and leaf not in module._buffers:
        raise CheckpointError("tensor has no place in the model built from config.json", file=file, tensor=name)
    if current is not None and tuple(current.shape) != tuple(value.shape):
        raise CheckpointError(f"shape {list(value.shape)} but the model expects {list(current.shape)}", file=file,
                              tensor=name)
    if value.is_floating_point():
        value = value.to(dtype)
    value = value.to(device)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def _load_plain_tensors(model: nn.Module, ckpt: FP8Checkpoint, plan: _Plan, device: torch.device,
                        dtype: torch.dtype) -> dict[str, dict[tuple[int, str], tuple[str, torch.Tensor]]]:
    """Read every unquantized tensor into its place in ``dtype``. Per-expert weights of a fused experts module
    are returned, by module and (expert, part), for :func:`_fuse_plain_experts`."""
    plain_experts: dict[str, dict[tuple[int, str], tuple[str, torch.Tensor]]] = {}
    named = dict(model.named_modules())
    for name in ckpt.plain:
        file = ckpt.tensors.info(name).file
        if IGNORABLE_TENSORS.search(name):
            continue
        prefix, leaf = name.rsplit(".", 1)
        m = EXPERT_RE.match(prefix)
        if m and leaf == "weight":
            target = _module_for_prefix(m["prefix"], plan.modules)
            if target is not None and is_fused_experts(plan.modules[target]):
                plain_experts.setdefault(target, {})[(int(m["expert"]), EXPERT_PART[m["part"]])] = (
                    name, ckpt.read(name))
                continue
        target = _module_for_prefix(prefix, named)
        _set_tensor(model, f"{target or prefix}.{leaf}", ckpt.read(name), file, device, dtype)
    return plain_experts


def _fuse_plain_experts(model: nn.Module, plain_experts: dict[str, dict[tuple[int, str], tuple[str, torch.Tensor]]],
                        device: torch.device, dtype: torch.dtype, folder: Path) -> None:
    """Stack unquantized per-expert weights into the fused ``gate_up_proj`` / ``down_proj`` parameters."""
    for name, parts in plain_experts.items():
        module = model.get_submodule(name)
        e, two_i, h = module.gate_up_proj.shape
        i = two_i // 2
        gu = torch.empty((e, two_i, h), dtype=dtype, device=device)
        down = torch.empty((e, h, i), dtype=dtype, device=device)
        for x in range(e):
            for part in ("gate", "up", "down"):
                if (x, part) not in parts:
                    raise CheckpointError(f"experts module {name}: expert {x} {part} weight missing", file=folder)
                tname, t = parts[(x, part)]
                dst = gu[x, :i] if part == "gate" else gu[x, i:] if part == "up" else down[x]
                if tuple(t.shape) != tuple(dst.shape):
                    raise CheckpointError(f"shape {list(t.shape)}, expected {list(dst.shape)}", file=folder,
                                          tensor=tname)
                dst.copy_(t)
        module.gate_up_proj = nn.Parameter(gu, requires_grad=False)
        module.down_proj = nn.Parameter(down, requires_grad=False)


def _tie_and_check(model: nn.Module, folder: Path) -> None:
    """Tie the embeddings when the config says so, then require that no parameter is left on the meta device."""
    if getattr(model.config, "tie_word_embeddings", False) or getattr(
            getattr(model.config, "get_text_config", lambda: None)(), "tie_word_embeddings", False):
        emb, out = model.get_input_embeddings(), model.get_output_embeddings()
        if emb is not None and out is not None and emb.weight.is_meta and not out.weight.is_meta:
            emb.weight = out.weight  # the checkpoint stored the tied pair under the output name
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors the model needs are not in the checkpoint, e.g. "
                              f"{', '.join(missing[:5])}", file=folder)


def _resolve_decisions(model: nn.Module, report: QuantizeReport, device: torch.device,
                       platform: Platform | None) -> None:
    """One decision per block-FP8 layer, its weight prepared for the chosen backend; counted in ``report``."""
    plat = runtime_platform(device, platform)
    for name in report.converted + report.converted_experts:
        layer = model.get_submodule(name)
        layer.process_weights_after_loading(plat)
        count_decisions(report, layer)
        report.bytes_after += param_bytes(layer)


# ------------------------------------------------------------------------------------------------ load


@torch.no_grad()
def load_fp8_checkpoint(
    folder: str | Path,
    config: BlockFP8Config | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    platform: Platform | None = None,
    trust_remote_code: bool = False,
):
    """Load a block-FP8 checkpoint folder (HF `fp8` or compressed-tensors, single file or sharded) into a
    transformers causal LM whose quantized linear layers are :class:`BlockFP8Linear` and whose quantized experts
    are :class:`BlockFP8Experts`, every decision resolved. Tensors are read lazily, one at a time; the
    checkpoint's structure (pairs, shapes, dtypes, block size) is checked before any weight is read. Other
    tensors are loaded in ``dtype``. Returns the model (eval mode); ``model.blockfp8_report`` says what was
    loaded as FP8 and which backend each layer got."""
    folder = Path(folder)
    device = torch.device(device)
    hf = read_config_json(folder)
    with FP8Checkpoint(folder) as ckpt:
        cfg = _resolve_config(config, ckpt, hf)
        model = _empty_model(folder, dtype, trust_remote_code)
        report = QuantizeReport(weight_scale_fmt=ckpt.quant_config.scale_fmt)
        plan = _plan_fp8_modules(model, ckpt)
        _replace_fp8_modules(model, plan, cfg, dtype, device, report)
        _load_fp8_weights(model, ckpt, plan, device, folder)
        plain_experts = _load_plain_tensors(model, ckpt, plan, device, dtype)
        _fuse_plain_experts(model, plain_experts, device, dtype, folder)
    _tie_and_check(model, folder)
    _resolve_decisions(model, report, device, platform)
    model.blockfp8_report = report
    return model
