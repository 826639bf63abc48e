"""`blockfp8` entry point. Subcommands are registered from a table of modules; each module defines
``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy imports inside ``run``, so that
``blockfp8 --help`` imports neither torch's CUDA runtime nor Triton.

Exit codes: 0 ok, 1 findings/failure (also a bad input file or a failed write), 2 usage (bad flag or value, a path
that does not exist, bad environment variable, bad config), 130/143 interrupted by SIGINT/SIGTERM. Every error is
one line on stderr: this module's handler turns an ``OSError`` into ``path: cause`` for every subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator

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


def _one_line(exc: BaseException) -> str:
    """The error as one line naming the path (``OSError``) or what the exception says, cut to a readable size."""
    if isinstance(exc, OSError) and exc.filename is not None:
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        text = f"{where}: {exc.strerror or exc}"
    elif isinstance(exc, RecursionError):
        text = "input nested too deeply to process"
    elif isinstance(exc, MemoryError):
        text = "out of memory"
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= 2000 else text[:1997] + "..."


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM (``kill``, a batch scheduler, a container stop) raises KeyboardInterrupt like Ctrl-C, so every
    writer's cleanup runs and no partial output stays. Yields a list that receives the signal number."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def _interrupt(signum, frame):
        if not received:  # once: a second SIGTERM must not cut the cleanup short
            received.append(signum)
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from blockfp8 import log
    from blockfp8.envs import EnvError, validate_all
    from blockfp8.paths import InputError  # also every CheckpointError

    def fail(exc: BaseException, code: int) -> int:
        print(f"blockfp8 {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return code

    log.set_quiet(getattr(args, "quiet", False))  # --quiet: no progress lines from any step
    with _sigterm_as_interrupt() as received:
        try:
            validate_all()  # every BLOCKFP8_* variable, once, whichever subcommand reads it
            module = importlib.import_module(args._module)
            return int(module.run(args) or 0)
        except (EnvError, UsageError) as exc:
            return fail(exc, 2)
        except BrokenPipeError:
            return 0
        except KeyboardInterrupt:
            print(f"blockfp8 {args.command}: stopped by {'SIGTERM' if received else 'SIGINT'}", file=sys.stderr)
            return 128 + (received[0] if received else signal.SIGINT)
        except (OSError, InputError, RecursionError, MemoryError) as exc:
            return fail(exc, 1)


if __name__ == "__main__":
    raise SystemExit(main())
