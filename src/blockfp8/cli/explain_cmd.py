"""Explain the GEMM backend decision for a model's dense and MoE layers: the backend, its scale format, where the
choice came from (config, env, guard, audit, default), why every other backend was skipped, and the warnings that
would be logged. With --arch (or BLOCKFP8_ARCH) on a machine without that GPU, the answer is a plan for that GPU.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blockfp8.config import BlockFP8Config

DEFAULT_HIDDEN = 7168  # DeepSeek-V3 hidden size: the layer shape when neither a checkpoint nor --n/--k give one
DEFAULT_EXPERTS = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    from blockfp8.cli.args import KNOWN_ARCHES, MODEL_TYPE_HELP, add_config_arguments, add_output_arguments, arch

    source = p.add_mutually_exclusive_group()
    source.add_argument("--model-type", help=MODEL_TYPE_HELP)
    source.add_argument("--checkpoint", metavar="PATH",
                        help="checkpoint directory (or its config.json): model type and quantization_config")
    p.add_argument("--arch", type=arch, help=f"plan for this SM capability ({', '.join(KNOWN_ARCHES)}); overrides "
                                             "BLOCKFP8_ARCH")
    add_config_arguments(p, model_type=False)
    p.add_argument("--moe", action="store_true",
                   help="the model has MoE layers (implied by a checkpoint with experts): their warnings count too")
    p.add_argument("--n", type=int, help="output features of the layer to plan for (default: hidden size or 7168)")
    p.add_argument("--k", type=int, help="input features of the layer to plan for (default: hidden size or 7168)")
    p.add_argument("--audit", metavar="REPORT",
                   help="a `blockfp8 audit`/`check` report (report.json or its folder): its measured UE8M0 verdict "
                        "feeds the accuracy guard, outranking the known-bad list (model type from the report if none "
                        "is given)")
    add_output_arguments(p, "the explanation")


def run(args: argparse.Namespace) -> int:
    from blockfp8 import envs, platform
    from blockfp8.backends.explain import explain, layer_choices, render_layer_choices, render_text
    from blockfp8.cli.args import write_json_output

    envs.validate_all()  # a bad BLOCKFP8_* value is a usage error (exit 2) before anything else
    config, hf_config = _config(args)
    layers: list = []
    if args.audit:
        config, layers = _with_audit(config, args.audit)
    plat = platform.detect(arch=args.arch)
    n, k, experts, has_moe = _layer(args, hf_config)
    explanation = explain(config, plat, n, k, moe=has_moe, num_experts=experts)
    choices = layer_choices(layers, config, plat) if layers else []
    if args.json is not None:
        wrote = write_json_output(args.json, {**explanation.as_dict(), "layers": [c.as_dict() for c in choices]})
        if wrote:
            print(f"wrote {wrote}")
    else:
        print(render_text(explanation))
        if choices:
            print("\n" + "\n".join(render_layer_choices(choices)))
    return 1 if explanation.failed else 0


def _config(args: argparse.Namespace) -> tuple[BlockFP8Config, dict]:
    """The config the flags describe, on top of the checkpoint's ``quantization_config`` when one is given; and
    the checkpoint's ``config.json`` ({} without one)."""
    from blockfp8.cli.args import UsageError, config_from_args
    from blockfp8.config import BlockFP8Config, ConfigError
    from blockfp8.formats.errors import CheckpointError
    from blockfp8.formats.hf_config import block_config, read_config_json

    hf_config: dict = {}
    try:
        base = BlockFP8Config()
        if args.checkpoint:
            hf_config = read_config_json(args.checkpoint)
            base = block_config(hf_config)
        return config_from_args(args, base), hf_config
    except (ConfigError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None


def _with_audit(config: BlockFP8Config, report: str) -> tuple[BlockFP8Config, list[tuple[str, int, int]]]:
    """``config`` fed the UE8M0 verdict (and per-layer plan) of an audit report (its model type when the config
    names none), and the report's dense layers ``(name, N, K)`` of a model-level audit."""
    from dataclasses import replace
    from pathlib import Path

    from blockfp8.audit.report import REPORT_JSON, AuditReport
    from blockfp8.audit.verdict import VerdictError, load_verdict
    from blockfp8.cli.args import UsageError

    try:
        verdict = load_verdict(report)
        path = Path(report) / REPORT_JSON if Path(report).is_dir() else Path(report)
        audited = AuditReport.load(path)
    except VerdictError as exc:
        raise UsageError(f"--audit: {exc}") from None
    layers = [] if audited.level == "checkpoint" else [(r["name"], *r["shape"]) for r in audited.layers
                                                        if "shape" in r]
    return replace(config, audit=verdict, model_type=config.model_type or verdict.model_type), layers


def _layer(args: argparse.Namespace, hf_config: dict) -> tuple[int, int, int, bool]:
    """N, K and the expert count of the layer to plan for (flags, else the checkpoint, else the defaults), and
    whether the model has MoE layers."""
    from blockfp8.formats.hf_config import has_experts, hidden_size, num_experts

    hidden = hidden_size(hf_config) or DEFAULT_HIDDEN
    experts = num_experts(hf_config) or DEFAULT_EXPERTS
    return args.n or hidden, args.k or hidden, experts, bool(args.moe or has_experts(hf_config))
