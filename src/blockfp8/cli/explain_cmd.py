"""Explain the GEMM backend decision for a model's dense and MoE layers: the backend, its scale format, where the
choice came from (config, env, guard, audit, default), why every other backend was skipped, and the warnings that
would be logged. With --arch (or BLOCKFP8_ARCH) on a machine without that GPU, the answer is a plan for that GPU.
"""

from __future__ import annotations

import argparse

DEFAULT_HIDDEN = 7168  # DeepSeek-V3 hidden size: the layer shape when neither a checkpoint nor --n/--k give one
DEFAULT_EXPERTS = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    from blockfp8.cli.args import MODEL_TYPE_HELP, add_config_arguments

    source = p.add_mutually_exclusive_group()
    source.add_argument("--model-type", help=MODEL_TYPE_HELP)
    source.add_argument("--checkpoint", metavar="PATH",
                        help="checkpoint directory (or its config.json): model type and quantization_config")
    p.add_argument("--arch", help="plan for this SM capability (sm_90, sm_100a, ...); overrides BLOCKFP8_ARCH")
    add_config_arguments(p, model_type=False)
    p.add_argument("--moe", action="store_true",
                   help="the model has MoE layers (implied by a checkpoint with experts): their warnings count too")
    p.add_argument("--n", type=int, help="output features of the layer to plan for (default: hidden size or 7168)")
    p.add_argument("--k", type=int, help="input features of the layer to plan for (default: hidden size or 7168)")
    p.add_argument("--audit", metavar="REPORT",
                   help="a `blockfp8 audit`/`check` report (report.json or its folder): its measured UE8M0 verdict "
                        "feeds the accuracy guard, outranking the known-bad list (model type from the report if none "
                        "is given)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import json

    from blockfp8 import envs, platform
    from blockfp8.backends.base import GemmProblem, ScaleFmt
    from blockfp8.backends.select import BackendUnavailableError, NoBackendError, resolve
    from blockfp8.cli.args import UsageError, config_from_args
    from blockfp8.config import BlockFP8Config, ConfigError
    from blockfp8.formats.errors import CheckpointError
    from blockfp8.formats.hf_config import block_config, has_experts, read_config_json

    envs.validate_all()  # a bad BLOCKFP8_* value is a usage error (exit 2) before anything else
    hf_config: dict = {}
    try:
        base = BlockFP8Config()
        if args.checkpoint:
            hf_config = read_config_json(args.checkpoint)
            base = block_config(hf_config)
        config = config_from_args(args, base)
    except (ConfigError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    if args.audit:
        from dataclasses import replace

        from blockfp8.audit.verdict import VerdictError, load_verdict

        try:
            verdict = load_verdict(args.audit)
        except VerdictError as exc:
            raise UsageError(f"--audit: {exc}") from None
        config = replace(config, audit=verdict, model_type=config.model_type or verdict.model_type)
    plat = platform.detect(arch=args.arch)
    text = hf_config.get("text_config") or hf_config
    hidden = text.get("hidden_size", DEFAULT_HIDDEN)
    n, k = args.n or hidden, args.k or hidden
    experts = next((text[key] for key in ("num_experts", "n_routed_experts", "num_local_experts") if key in text),
                   DEFAULT_EXPERTS)
    checkpoint_fmt = ScaleFmt.UE8M0 if config.scale_fmt == "ue8m0" else ScaleFmt.FLOAT32
    problems = {
        "linear": GemmProblem(n, k, config.weight_block_size, checkpoint_scale_fmt=checkpoint_fmt),
        "moe": GemmProblem(n, k, config.weight_block_size, checkpoint_scale_fmt=checkpoint_fmt, grouped=True,
                           num_experts=int(experts)),
    }
    has_moe = bool(args.moe or has_experts(hf_config))

    paths: dict[str, dict] = {}
    failed = False
    for kind, problem in problems.items():
        try:
            paths[kind] = resolve(problem, config, plat, kind=kind).as_dict()
        except (BackendUnavailableError, NoBackendError) as exc:
            paths[kind] = {"kind": kind, "error": str(exc)}
            failed = failed or kind == "linear" or has_moe
    logged = [*paths["linear"].get("warnings", []), *(paths["moe"].get("warnings", []) if has_moe else [])]
    report = {
        "platform": plat.as_dict(),
        "plan_only": plat.simulated,
        "model_type": config.model_type,
        "audit": None if config.audit is None else {"ue8m0_ok": config.audit.ue8m0_ok,
                                                    "model_type": config.audit.model_type,
                                                    "evidence": config.audit.evidence},
        "has_moe": has_moe,
        "problem": {"n": n, "k": k, "block_size": list(config.weight_block_size), "num_experts": int(experts)},
        "env": {name: envs.get(name) for name in envs.ENV_VARS if envs.is_set(name)},
        "linear": paths["linear"],
        "moe": paths["moe"],
        "use_deep_gemm": {kind: d.get("use_deep_gemm") for kind, d in paths.items()},
        "source": {kind: d.get("source") for kind, d in paths.items()},
        "reasons": {kind: d.get("reasons", [d.get("error")]) for kind, d in paths.items()},
        "warnings": list(dict.fromkeys(logged)),  # each logged once however many layers share it
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_text(report, plat.describe())
    return 1 if failed else 0


def _print_text(report: dict, device: str) -> None:
    print(f"platform    {device}" + ("  (a plan for that GPU, not this machine)" if report["plan_only"] else ""))
    print(f"model_type  {report['model_type'] or '(unknown: the accuracy guard cannot match it)'}")
    if report.get("audit"):
        a = report["audit"]
        print(f"audit       UE8M0 {'acceptable' if a['ue8m0_ok'] else 'harmful'}: {a['evidence']}")
    problem = report["problem"]
    print(f"layer       N={problem['n']} K={problem['k']} block={problem['block_size']}")
    for name, value in report["env"].items():
        print(f"env         {name}={value}")
    for kind, title in (("linear", "dense layers"), ("moe", "MoE layers")):
        d = report[kind]
        note = "" if kind == "linear" or report["has_moe"] else "  (no MoE layers declared: shown for reference)"
        print()
        if "error" in d:
            print(f"{title}: ERROR{note}\n  {d['error']}")
            continue
        print(f"{title}: {d['backend']}, {d['act_scale_fmt']} activation scales, {d['scale_fmt']} weight scales"
              f"{' (UE8M0 requant)' if d['requant_weight_ue8m0'] else ''}, source: {d['source']}{note}")
        for reason in d["reasons"]:
            print(f"  {reason}")
    print()
    if report["warnings"]:
        print("warnings that would be logged (once each):")
        for message in report["warnings"]:
            print(f"  {message}")
    else:
        print("no warnings would be logged")
