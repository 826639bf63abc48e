"""Flags shared by several subcommands, each parsed one way: a subcommand adds the group it needs and turns the
parsed namespace into library objects with the ``*_from_args`` helpers. Imports nothing heavy at module level."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockfp8.audit.verdict import Thresholds
    from blockfp8.config import BlockFP8Config

_TRISTATE_FLAG = {"auto": None, "on": True, "off": False}
MODEL_TYPE_HELP = "HF (text) model type, e.g. qwen3_5_text: what the accuracy guard reads"


class UsageError(Exception):
    """Bad command-line usage: printed as one line, exit code 2."""


# ------------------------------------------------------------------------------------------------ values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def tolerance_value(text: str) -> float | str:
    """A number, or the word ``floor`` (--plan-tolerance)."""
    if text == "floor":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'floor'") from None


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or a positive integer")
    return value


# Block sides every backend family can run: powers of two (Triton tiles need >= 16); DeepGEMM and cuBLASLt take
# 128,128 only, so another size runs on Triton or the reference backend.
BLOCK_SIDES = (16, 32, 64, 128, 256)
# SM capabilities blockfp8 knows a plan for (what --arch accepts).
KNOWN_ARCHES = ("sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_100", "sm_101", "sm_103", "sm_110", "sm_120",
                "sm_121")


def block_size(text: str) -> tuple[int, int]:
    """A weight block size: ``128`` (square), ``128x128`` or ``128,128``; each side one of :data:`BLOCK_SIDES`."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    valid = ", ".join(map(str, BLOCK_SIDES))
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a block size: give BN,BK (e.g. 128,128), BNxBK or one "
                                         f"number for a square block; each side one of {valid}")
    if any(v not in BLOCK_SIDES for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid block size: each side must be one of {valid} "
                                         "(128,128 is what DeepGEMM and cuBLASLt take; others run on Triton or the "
                                         "reference backend)")
    return values[0], values[1]


def arch(text: str) -> str:
    """An SM capability to plan for (``sm_90``, ``90``, ``9.0``, ``sm_100a``): one of :data:`KNOWN_ARCHES`."""
    from blockfp8.envs import EnvError, parse_arch

    valid = ", ".join(KNOWN_ARCHES)
    try:
        major, minor = parse_arch(text)
    except EnvError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an SM capability; valid: {valid} (also written 90, "
                                         "9.0, sm_90a)") from None
    if f"sm_{major}{minor}" not in KNOWN_ARCHES:
        raise argparse.ArgumentTypeError(f"{text!r} (sm_{major}{minor}) is not a known SM capability; valid: {valid}")
    return text


def resolve_device(text: str, flag: str = "--device") -> str:
    """``platform.resolve_device`` (``auto`` -> cuda when a GPU is there, else cpu; ``cpu``, ``cuda``, ``cuda:N``),
    with a bad value or a CUDA device without a GPU turned into a usage error."""
    from blockfp8.platform import DeviceError
    from blockfp8.platform import resolve_device as resolve

    try:
        return resolve(text, flag)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None


# ------------------------------------------------------------------------------------------------ config flags


def add_config_arguments(parser: argparse.ArgumentParser, model_type: bool = True) -> None:
    """The :class:`BlockFP8Config` flags shared by every subcommand that builds layers (explain, eval, bench, ...).
    ``model_type=False`` leaves ``--model-type`` to the caller (e.g. in a group exclusive with ``--checkpoint``)."""
    from blockfp8.config import SCALE_FMTS
    from blockfp8.envs import BACKEND_IDS

    if model_type:
        parser.add_argument("--model-type", help=MODEL_TYPE_HELP)
    parser.add_argument("--use-deep-gemm", choices=tuple(_TRISTATE_FLAG), default="auto",
                        help="DeepGEMM for dense and MoE layers: on forces it (even for a guarded model), off disables "
                             "it, auto lets the policy decide (default); outranks BLOCKFP8_USE_DEEP_GEMM")
    parser.add_argument("--moe-use-deep-gemm", choices=tuple(_TRISTATE_FLAG), default="auto",
                        help="the same for MoE layers only; outranks --use-deep-gemm there")
    parser.add_argument("--linear-backend", choices=BACKEND_IDS, default="auto", help="backend for dense layers")
    parser.add_argument("--moe-backend", choices=BACKEND_IDS, default="auto", help="backend for MoE layers")
    parser.add_argument("--scale-fmt", choices=("auto", *SCALE_FMTS), default="auto",
                        help="scale format for every kernel; auto = float32 unless the kernel needs UE8M0")


def config_from_args(args: argparse.Namespace, base: BlockFP8Config | None = None) -> BlockFP8Config:
    """``base`` (e.g. from a checkpoint) with every flag the user actually gave applied on top."""
    from blockfp8.config import BlockFP8Config

    explicit: dict[str, Any] = {}
    if getattr(args, "model_type", None):
        explicit["model_type"] = args.model_type
    for flag in ("use_deep_gemm", "moe_use_deep_gemm"):
        value = getattr(args, flag, "auto")
        if value != "auto":
            explicit[flag] = _TRISTATE_FLAG[value]
    for flag in ("linear_backend", "moe_backend"):
        if getattr(args, flag, "auto") != "auto":
            explicit[flag] = getattr(args, flag)
    if getattr(args, "scale_fmt", "auto") != "auto":
        explicit["scale_fmt"] = args.scale_fmt
    return replace(base or BlockFP8Config(), **explicit)


# ------------------------------------------------------------------------------------------------ audit flags


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--<threshold>`` flag per field of :class:`blockfp8.audit.verdict.Thresholds`, its help and default
    read from the dataclass (a flag left out keeps the dataclass default)."""
    from blockfp8.audit.verdict import Thresholds

    defaults = Thresholds()
    group = parser.add_argument_group("thresholds (defaults from our measurements: docs/audit.md)")
    for f in fields(Thresholds):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=float, default=None, metavar="X",
                           help=f"{f.metadata['help']} (default {getattr(defaults, f.name):g})")


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    """The thresholds with every flag the user gave; a bad value is a usage error naming the threshold."""
    from blockfp8.audit.verdict import Thresholds, VerdictError

    given = {f.name: getattr(args, f.name) for f in fields(Thresholds) if getattr(args, f.name, None) is not None}
    try:
        return Thresholds(**given)
    except VerdictError as exc:
        raise UsageError(str(exc)) from None


def given_thresholds(args: argparse.Namespace) -> list[str]:
    """The thresholds the user set on the command line (they apply beside the task-level rule)."""
    from blockfp8.audit.verdict import Thresholds

    return [f.name for f in fields(Thresholds) if getattr(args, f.name, None) is not None]


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The per-layer scale-format plan and the calibrated verdict (``audit --e2e``, ``check``)."""
    from blockfp8.audit.scale_plan import RANKINGS, PlanTolerance

    group = parser.add_argument_group("per-layer plan and task-level verdict (docs/audit.md)")
    group.add_argument("--no-plan", action="store_true", help="do not choose a per-layer scale-format plan")
    group.add_argument("--plan-tolerance", type=tolerance_value, default=PlanTolerance().kl_share, metavar="S",
                       help="the plan may keep this share of all-UE8M0's KL increase over all-float32 (default "
                            f"{PlanTolerance().kl_share:g}), or 'floor': the largest share a re-rounding of "
                            "all-float32 keeps on the selection windows (--plan-roundings of them)")
    group.add_argument("--plan-rank", choices=RANKINGS, default=PlanTolerance().rank,
                       help="order layers go to float32 scales in: fisher_per_flop = Fisher-weighted UE8M0 output "
                            "error per GEMM FLOP, fisher = that error, bits = calibrated bits lost (default "
                            f"{PlanTolerance().rank})")
    group.add_argument("--plan-min-flops", type=float, default=0.0, metavar="S",
                       help="keep at least this share of the GEMM FLOPs on UE8M0, even past the tolerance (default 0)")
    group.add_argument("--plan-windows", type=positive_int, default=16, metavar="N",
                       help="calibration windows the plan is chosen on (default 16)")
    group.add_argument("--plan-roundings", type=nonnegative_int, default=2, metavar="N",
                       help="measure all-float32 rounded anew N times beside the plan: the rounding floor, what "
                            "the same precision with another rounding moves (default 2; 0 = none)")
    group.add_argument("--verdict-calibration", metavar="FILE",
                       help="task-level calibration made by `blockfp8 calibrate` (default: the shipped data)")
    group.add_argument("--task", default="lambada", help="the task whose predicted effect decides (default lambada)")


def plan_from_args(args: argparse.Namespace):
    """(PlanTolerance or None, keyword arguments for the verdict); a bad value is a usage error."""
    from blockfp8.audit.scale_plan import PlanTolerance

    try:
        floor = args.plan_tolerance == "floor"
        if floor and not args.no_plan and args.plan_roundings == 0:
            raise ValueError("'floor' needs at least one rounding; --plan-roundings is 0")
        plan = None if args.no_plan else PlanTolerance(PlanTolerance().kl_share if floor else args.plan_tolerance,
                                                       args.plan_rank, args.plan_min_flops, floor)
    except ValueError as exc:
        raise UsageError(f"--plan-tolerance / --plan-min-flops: {exc}") from None
    verdict = {"given_thresholds": given_thresholds(args), "verdict_calibration": args.verdict_calibration,
               "task": args.task}
    return plan, verdict


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Running a transformers model on text (``audit --model``, ``check``): window length, device, dtype, batch
    size in tokens and bootstrap resamples."""
    parser.add_argument("--seq-len", type=positive_int, default=128, metavar="L",
                        help="tokens per text window (default 128)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="model dtype: auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch-tokens", type=positive_int, default=2048, metavar="T",
                        help="tokens per forward pass (default 2048)")
    parser.add_argument("--bootstrap", type=positive_int, default=2000, metavar="B",
                        help="bootstrap resamples (default 2000)")


# ------------------------------------------------------------------------------------------------ output flags
# One rule for every subcommand: `--json` (or `--json -`) prints JSON on stdout and nothing else there (the
# human summary and "wrote ..." lines go to stderr); `--json FILE` writes it to FILE. `-` as any output FILE
# means stdout. `--quiet` silences progress lines (`--no-progress` is the same flag).


def add_output_arguments(parser: argparse.ArgumentParser, json_help: str = "the result") -> None:
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help=f"{json_help} as JSON: on stdout (alone or with -), or into FILE")
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress lines on stderr")


def json_on_stdout(args: argparse.Namespace) -> bool:
    return getattr(args, "json", None) == "-"


def human_stream(args: argparse.Namespace):
    """Where the human-readable text goes: stdout, except when stdout carries JSON."""
    import sys

    return sys.stderr if json_on_stdout(args) else sys.stdout


def write_output(path: str, text: str) -> str:
    """``text`` to stdout when ``path`` is ``-``, else into the file (atomically, mode from the umask); returns
    a description for a "wrote ..." line ("" for stdout)."""
    import sys

    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return ""
    from blockfp8 import atomic

    return str(atomic.write_text(path, text))


def write_json_output(path: str, payload) -> str:
    """``payload`` as JSON (non-finite numbers refused, as in ``atomic.write_json``) via :func:`write_output`."""
    import json

    return write_output(path, json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")
