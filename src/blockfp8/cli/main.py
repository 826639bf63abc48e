"""`blockfp8` entry point. Subcommands are registered from a table of modules; each module defines
``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy imports inside ``run``, so that
``blockfp8 --help`` imports neither torch's CUDA runtime nor Triton.

Exit codes: 0 ok, 1 findings/failure, 2 usage (bad flag, bad environment variable, bad config).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "env": ("blockfp8.cli.env_cmd", "versions, GPU and SM capability, optional libraries"),
    "audit": ("blockfp8.cli.audit_cmd", "measure the UE8M0-vs-float32 error of a model layer by layer"),
}


class UsageError(Exception):
    """Bad user input that is not an argparse error; exit code 2."""


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
