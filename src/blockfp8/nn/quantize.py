"""Whole models: :func:`quantize_model` (a float transformers model made block-FP8 in place),
:func:`load_fp8_checkpoint` (an FP8 checkpoint folder into a transformers model with block-FP8 layers) and
:class:`ModelTensorSelector` (which tensors of a model folder ``blockfp8 quantize`` converts).

The three share one rule for what is converted (:func:`skip_reason`): every ``nn.Linear`` and every fused
experts module (transformers 5.x ``gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``), except

* ``lm_head`` (FP8 checkpoints keep the output projection in high precision; SmolLM2 ties it to the embedding),
* MoE router gates (``<block>.gate`` beside ``<block>.experts``, ``shared_expert_gate``): engines keep them
  unquantized (vLLM builds them with ``quant_config=None``),
* modules matched by ``BlockFP8Config.ignored_layers`` / ``--ignore`` (see ``formats.matches_any``).

MoE blocks keep the model's own router (so model-specific routing, shared experts, grouped top-k stay exact);
their experts module is replaced by :class:`BlockFP8Experts`, whose forward has the same signature.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from blockfp8.config import BlockFP8Config
from blockfp8.formats import CheckpointError, FP8Checkpoint, matches_any, read_config_json
from blockfp8.formats.hf_config import text_model_type
from blockfp8.log import get_logger
from blockfp8.nn.linear import BlockFP8Linear, runtime_platform
from blockfp8.nn.moe import BlockFP8Experts, is_fused_experts
from blockfp8.platform import Platform

ROUTER_NAMES = ("shared_expert_gate",)
# per-expert tensors on disk -> (part) of a fused experts module; Qwen2/3-MoE and Mixtral spellings
EXPERT_RE = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<expert>\d+)\.(?P<part>gate_proj|up_proj|down_proj|w1|w3|w2)$")
EXPERT_PART = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}
# checkpoint module prefixes that transformers 5.x renames when it builds the model (conversion_mapping.py)
PREFIX_RENAMES = ((".block_sparse_moe.", ".mlp."),)
# buffers some checkpoints carry that the model recomputes
IGNORABLE_TENSORS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

_log = get_logger("nn.quantize")


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


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." not in name:
        return model, name
    head, leaf = name.rsplit(".", 1)
    return model.get_submodule(head), leaf


def _tied_ids(model: nn.Module) -> set[int]:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    w = getattr(emb, "weight", None)
    return {id(w)} if isinstance(w, torch.Tensor) else set()


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, "linear" | "experts") for every convertible module, outermost first."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not isinstance(module, BlockFP8Linear):
            out.append((name, module, "linear"))
        elif is_fused_experts(module) and not isinstance(module, BlockFP8Experts):
            out.append((name, module, "experts"))
    return out


# ------------------------------------------------------------------------------------------------ quantize_model


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` / :func:`load_fp8_checkpoint` did."""

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


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _count_decisions(report: QuantizeReport, module: nn.Module) -> None:
    decisions = [module.decision] if isinstance(module, BlockFP8Linear) else list(module.decisions.values())
    for d in decisions:
        requant = " (requant ue8m0)" if d.requant_weight_ue8m0 else ""
        report.backends[f"{d.kind}: {d.backend}/{d.act_scale_fmt}{requant}"] += 1


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
    tied = _tied_ids(model)
    plat = None
    for name, module, kind in _candidates(model):
        parent, leaf = _parent(model, name)
        why = skip_reason(name, module, parent, config.ignored_layers, tied)
        weight = module.weight if kind == "linear" else module.gate_up_proj
        if why is None and weight.is_meta:
            why = "weights are on the meta device (not materialized)"
        if why is None and not weight.is_floating_point():
            why = f"weight dtype {weight.dtype} is not floating point"
        if why is not None:
            report.skipped[name] = why
            continue
        plat = plat or runtime_platform(weight.device, platform)
        before = _param_bytes(module)
        if kind == "linear":
            new = BlockFP8Linear.from_linear(module, config, scale_fmt=fmt, name=name, platform=plat)
            report.converted.append(name)
        else:
            new = BlockFP8Experts.from_fused(module.gate_up_proj.detach(), module.down_proj.detach(),
                                             act_fn=getattr(module, "act_fn", None), config=config, scale_fmt=fmt,
                                             name=name, platform=plat)
            report.converted_experts.append(name)
        setattr(parent, leaf, new)
        del module
        report.bytes_before += before
        report.bytes_after += _param_bytes(new)
        _count_decisions(report, new)
    if not report.converted and not report.converted_experts:
        _log.warning("quantize_model converted nothing: %s", report.summary())
    return report


# ------------------------------------------------------------------------------------------------ checkpoint selector


def _meta_model(folder: Path, trust_remote_code: bool = False):
    """The model of ``folder/config.json`` built on the meta device (no weights)."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as exc:
        raise CheckpointError("needs transformers to read the model structure: pip install 'blockfp8[hf]'",
                              file=folder) from exc
    try:
        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"transformers cannot read config.json ({exc})", file=folder / "config.json") from None
    if getattr(cfg, "quantization_config", None) is not None:
        cfg.quantization_config = None
        if hasattr(cfg, "__dict__"):
            cfg.__dict__.pop("quantization_config", None)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"transformers cannot build a causal LM for model_type={cfg.model_type!r} ({exc})",
                              file=folder / "config.json") from None
    return model


def _module_for_prefix(prefix: str, names: dict[str, nn.Module]) -> str | None:
    if prefix in names:
        return prefix
    for old, new in PREFIX_RENAMES:
        renamed = prefix.replace(old, new)
        if renamed in names:
            return renamed
    return None


class ModelTensorSelector:
    """Which tensors of a float model folder become FP8, decided from the model's own module structure
    (built from config.json on the meta device, so no weights are read)."""

    def __init__(self, folder: str | Path, ignore: Iterable[str] = (), *, model: nn.Module | None = None):
        self.folder = Path(folder)
        self.ignore = tuple(ignore)
        model = model if model is not None else _meta_model(self.folder)
        tied = _tied_ids(model)
        self.modules: dict[str, nn.Module] = {}
        self.kinds: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        for name, module, kind in _candidates(model):
            parent, _ = _parent(model, name)
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


# ------------------------------------------------------------------------------------------------ load


def _resolve_config(config: BlockFP8Config | None, ckpt: FP8Checkpoint, hf: dict) -> BlockFP8Config:
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


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, file, device, dtype) -> None:
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
        try:
            from accelerate import init_empty_weights
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError as exc:
            raise CheckpointError("loading a model needs transformers and accelerate: pip install 'blockfp8[hf]'",
                                  file=folder) from exc
        tcfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
        tcfg.quantization_config = None  # ours, not transformers' own FP8 integration
        tcfg.__dict__.pop("quantization_config", None)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(tcfg, dtype=dtype, trust_remote_code=trust_remote_code)
        model.eval()
        report = QuantizeReport(weight_scale_fmt=ckpt.quant_config.scale_fmt)

        # 1. structure: FP8 modules where the checkpoint has FP8 weights
        modules = {n: m for n, m, _ in _candidates(model)}
        experts_of: dict[str, list[tuple[str, int, str]]] = {}
        linear_fp8: dict[str, str] = {}
        for prefix in ckpt.fp8:
            file = ckpt.tensors.info(ckpt.fp8[prefix][0]).file
            m = EXPERT_RE.match(prefix)
            target = _module_for_prefix(m["prefix"] if m else prefix, modules)
            if target is None:
                raise CheckpointError("FP8 weight of a module the model built from config.json does not have",
                                      file=file, tensor=f"{prefix}.weight")
            if m:
                if not is_fused_experts(modules[target]):
                    raise CheckpointError(f"expert weight, but {target} is not a fused experts module", file=file,
                                          tensor=f"{prefix}.weight")
                experts_of.setdefault(target, []).append((prefix, int(m["expert"]), EXPERT_PART[m["part"]]))
            elif isinstance(modules[target], nn.Linear):
                if modules[target].bias is not None and f"{prefix}.bias" not in ckpt.tensors:
                    raise CheckpointError("the layer has a bias but the checkpoint has none", file=file,
                                          tensor=f"{prefix}.bias")
                linear_fp8[target] = prefix
            else:
                raise CheckpointError(f"FP8 weight for {type(modules[target]).__name__}, not a linear layer",
                                      file=file, tensor=f"{prefix}.weight")
        for name, module in modules.items():
            parent, leaf = _parent(model, name)
            if name in linear_fp8:
                new = BlockFP8Linear(module.in_features, module.out_features, module.bias is not None,
                                     block_size=cfg.weight_block_size, config=cfg, params_dtype=dtype,
                                     device=device, name=name)
                setattr(parent, leaf, new)
                report.converted.append(name)
            elif name in experts_of:
                e, two_i, h = module.gate_up_proj.shape
                new = BlockFP8Experts(e, h, two_i // 2, act_fn=getattr(module, "act_fn", None),
                                      block_size=cfg.weight_block_size, config=cfg, params_dtype=dtype,
                                      device=device, name=name)
                setattr(parent, leaf, new)
                report.converted_experts.append(name)
            else:
                report.skipped[name] = "stored unquantized in the checkpoint"

        # 2. FP8 weights
        for name, prefix in linear_fp8.items():
            fw = ckpt.read_fp8(prefix)
            model.get_submodule(name).load_weights(fw.weight.to(device), fw.scale.to(device))
        for name, parts in experts_of.items():
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

        # 3. everything else, in the model's dtype
        plain_experts: dict[str, dict[tuple[int, str], tuple[str, torch.Tensor]]] = {}
        for name in ckpt.plain:
            file = ckpt.tensors.info(name).file
            if IGNORABLE_TENSORS.search(name):
                continue
            prefix, leaf = name.rsplit(".", 1)
            m = EXPERT_RE.match(prefix)
            if m and leaf == "weight":
                target = _module_for_prefix(m["prefix"], modules)
                if target is not None and is_fused_experts(modules[target]):
                    plain_experts.setdefault(target, {})[(int(m["expert"]), EXPERT_PART[m["part"]])] = (
                        name, ckpt.read(name))
                    continue
            target = _module_for_prefix(prefix, dict(model.named_modules()))
            _set_tensor(model, f"{target or prefix}.{leaf}", ckpt.read(name), file, device, dtype)
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

    # 4. tied weights, then nothing may be left on the meta device
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

    # 5. one decision per layer
    plat = runtime_platform(device, platform)
    for name in report.converted + report.converted_experts:
        layer = model.get_submodule(name)
        layer.process_weights_after_loading(plat)
        _count_decisions(report, layer)
        report.bytes_after += _param_bytes(layer)
    model.blockfp8_report = report
    return model
