"""Flags shared by several subcommands, each parsed one way: a subcommand adds the group it needs and turns the
parsed namespace into library objects with the ``*_from_args`` helpers. Imports nothing heavy at module level."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def block_size(text: str) -> tuple[int, int]:
    """A weight block size: ``128`` (square), ``128x128`` or ``128,128``."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a block size: give BN,BK (e.g. 128,128), BNxBK or one "
                                         "number for a square block")
    return values[0], values[1]


def resolve_device(text: str, flag: str = "--device") -> str:
    """``auto`` -> cuda when a GPU is there, else cpu; ``cpu``, ``cuda`` and ``cuda:N`` as given (a CUDA device
    without a GPU is a usage error)."""
    import torch

    if text in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text != "cpu" and text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise UsageError(f"{flag} {text!r}: expected auto, cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{flag} {text}: no CUDA GPU is available")
    return text


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
