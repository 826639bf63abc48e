"""`blockfp8` entry point. Subcommands are registered from a table of modules; each module defines
``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy imports inside ``run``, so that
``blockfp8 --help`` imports neither torch's CUDA runtime nor Triton.

Exit codes: 0 ok, 1 findings/failure, 2 usage (bad flag, bad environment variable, bad config).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from blockfp8.cli.args import UsageError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "env": ("blockfp8.cli.env_cmd", "versions, GPU and SM capability, optional libraries"),
    "explain": ("blockfp8.cli.explain_cmd", "which GEMM backend and scale format each layer kind gets, and why"),
    "quantize": ("blockfp8.cli.quantize_cmd", "bf16/fp32 safetensors model folder -> block-FP8 checkpoint folder"),
    "audit": ("blockfp8.cli.audit_cmd", "measure the UE8M0-vs-float32 error of a model layer by layer"),
    "check": ("blockfp8.cli.check_cmd", "will this model lose accuracy with UE8M0 scales? verdict, numbers, selection"),
    "calibrate": ("blockfp8.cli.calibrate_cmd", "calibrate the task-level verdict on your own audit + eval runs"),
    "eval": ("blockfp8.cli.eval_cmd", "accuracy of FP8 variants vs a baseline: GSM8K, LAMBADA, from a YAML config"),
    "bench": ("blockfp8.cli.bench_cmd", "benchmark GEMM / quant / MoE / model kernels against their peers"),
    "tune": ("blockfp8.cli.tune_cmd", "regenerate the tuned Triton configs and per-shape dispatch table"),
}


def build_parser() -> argparse.ArgumentParser:
    from blockfp8 import __version__

    parser = argparse.ArgumentParser(
        prog="blockfp8",
        description="Block-scaled FP8 for PyTorch: numerics, kernel selection, UE8M0 accuracy audit.",
    )
    parser.add_argument("--version", action="version", version=f"blockfp8 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from blockfp8.envs import EnvError

    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (EnvError, UsageError) as exc:
        print(f"blockfp8 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
