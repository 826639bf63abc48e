"""Measure what UE8M0 (power-of-two) block scales cost compared with float32 scales, layer by layer, and give a
verdict (safe / unsafe for UE8M0) backed by the numbers. Three levels, each usable alone:

  blockfp8 audit PATH                         checkpoint: requantizing an FP8 checkpoint's scales to UE8M0
                                              (a bf16 checkpoint is quantized both ways); streams tensor by tensor
  blockfp8 audit --model M --weights-only     weights of a transformers model quantized both ways
  blockfp8 audit --model M --calib N [--e2e]  calibrated: each linear layer's GEMM output SNR on N windows of real
                                              text; --e2e adds KL / top-1 / perplexity on held-out text with
                                              bootstrap intervals, a per-layer scale-format plan and the
                                              predicted task-level effect the verdict follows

`torchrun --nproc-per-node N -m blockfp8 audit PATH` splits a checkpoint's tensors across ranks and writes one
report. The calibrated and end-to-end levels simulate FP8 GEMMs with blockfp8.quant.reference (the numerics our
kernels are tested against). --model takes an embedded model (smollm2), a .gguf file, a transformers folder or a
block-FP8 folder (what `blockfp8 quantize` writes: its dequantized weights are audited). Exit 0 (1 with --strict
when the verdict is unsafe; 1 on a bad checkpoint or model file; 2 usage, also a path that does not exist).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blockfp8.cli.args import (
    UsageError,
    add_model_arguments,
    add_output_arguments,
    add_plan_arguments,
    add_threshold_arguments,
    block_size,
    plan_from_args,
    positive_int,
    resolve_device,
    thresholds_from_args,
)

DEFAULT_CALIB = 16  # calibration windows when --calib is not given (--e2e alone, or neither)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("path", nargs="?", help="checkpoint: a safetensors file or a model folder (FP8 or bf16)")
    what.add_argument("--model", help="embedded model (smollm2), a .gguf file, a transformers folder or a block-FP8 "
                                      "folder")
    what.add_argument("--rejudge", metavar="REPORT",
                      help="judge an existing report.json again (thresholds, --verdict-calibration); measures nothing")
    p.add_argument("--weights-only", action="store_true", help="with --model: audit the weights alone")
    p.add_argument("--calib", type=positive_int, metavar="N",
                   help=f"with --model: N calibration windows (default {DEFAULT_CALIB})")
    p.add_argument("--e2e", action="store_true", help="with --calib: also compare end to end on held-out text")
    p.add_argument("--eval", type=positive_int, default=None, metavar="N",
                   help="held-out windows for --e2e (default 2x --calib)")
    add_model_arguments(p)
    p.add_argument("--block", type=block_size, default=None, metavar="BN,BK",
                   help="weight block size: BN,BK, BNxBK or one number (default: the checkpoint's, else 128,128)")
    p.add_argument("--measure-read", action="store_true",
                   help="checkpoint: also time merely reading the same tensors and report the rate ratio")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.md and PNG plots into DIR")
    p.add_argument("--top", type=int, default=0, metavar="N", help="print only the N layers that lose most")
    p.add_argument("--emit", choices=("vllm", "sglang"), help="print the serving settings that follow the verdict")
    p.add_argument("--strict", action="store_true", help="exit 1 when the verdict is unsafe")
    add_output_arguments(p, "the report")
    add_threshold_arguments(p)
    add_plan_arguments(p)


def _check_combination(args: argparse.Namespace) -> None:
    if args.rejudge:
        return
    if bool(args.path) == bool(args.model):
        raise UsageError("give either a checkpoint PATH or --model NAME_OR_PATH")
    if args.path and (args.weights_only or args.calib or args.e2e):
        raise UsageError("--weights-only, --calib and --e2e go with --model, not with a checkpoint PATH")
    if args.weights_only and (args.calib or args.e2e):
        raise UsageError("--weights-only excludes --calib and --e2e")
    if args.path and not Path(args.path).exists():
        raise UsageError(f"PATH {args.path}: no such file or folder")


def run(args: argparse.Namespace) -> int:
    from blockfp8 import atomic
    from blockfp8.audit import distributed, emit
    from blockfp8.audit import run as levels
    from blockfp8.audit.render import render_text
    from blockfp8.audit.report import write_report_folder
    from blockfp8.cli.args import human_stream, write_json_output
    from blockfp8.formats.errors import CheckpointError
    from blockfp8.models import ModelError, ModelNotFoundError, checkpoint_block, load_causal_lm

    _check_combination(args)
    if args.model and args.weights_only and checkpoint_block(args.model):
        # Already FP8: float32 scales reproduce its weights exactly, so the question is what requantizing its
        # stored scales to UE8M0 costs: the checkpoint level.
        args.path, args.model, args.weights_only = args.model, None, False
    for target, folder in ((args.json, False), (args.report, True)):
        if target and target != "-":  # "-" is stdout
            atomic.check_target(target, folder=folder)  # fail now, not after the whole audit
    thresholds = thresholds_from_args(args)
    plan, verdict = plan_from_args(args)
    device = resolve_device(args.device)
    progress = not args.quiet
    command = "blockfp8 audit " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["audit"] else None
    dist = None
    try:
        if args.rejudge:
            report = _rejudge(args, thresholds, verdict)
        elif args.path:
            dist = distributed.init(device)
            report = levels.audit_checkpoint(
                args.path, block=args.block, thresholds=thresholds, device=device, measure_read=args.measure_read,
                progress=progress and (dist is None or dist.is_main), dist=dist)
            if report is None:  # a rank other than 0: rank 0 writes the report
                return 0
        else:
            model, tokenizer = load_causal_lm(args.model, dtype=args.dtype, device=device)
            block = args.block or checkpoint_block(args.model) or (128, 128)  # an FP8 folder: its own block
            if args.weights_only:
                report = levels.audit_model_weights(model, args.model, block=block, thresholds=thresholds,
                                                    device=device, progress=progress)
            else:
                calib = args.calib or DEFAULT_CALIB
                report = levels.audit_model(
                    model, tokenizer, args.model, calib=calib, seq_len=args.seq_len,
                    eval_windows=(args.eval or 2 * calib) if args.e2e else 0, block=block, thresholds=thresholds,
                    device=device, batch_tokens=args.batch_tokens, n_boot=args.bootstrap, progress=progress,
                    plan=plan, plan_windows=args.plan_windows, verdict=verdict, roundings=args.plan_roundings)
    except ModelNotFoundError as exc:  # no such model, file or package: a usage problem
        raise UsageError(str(exc)) from None
    except (CheckpointError, ModelError, ValueError) as exc:  # a bad checkpoint, model or report, a non-finite result
        print(f"blockfp8 audit: error: {exc}", file=sys.stderr)
        return 1
    finally:
        distributed.finish(dist)
    if command:  # a re-judged report keeps the command that measured it
        report = report.with_run(**{"rejudged_by" if args.rejudge else "command": command})
    out = human_stream(args)
    print(render_text(report, args.top), file=out)
    if args.json is not None:
        wrote = write_json_output(args.json, report.to_dict())
        if wrote:
            print(f"wrote {wrote}", file=out)
    if args.report:
        for path in write_report_folder(report, args.report):
            print(f"wrote {path}", file=out)
    if args.emit:
        print(emit.emit(args.emit, report), file=out)
    return 1 if args.strict and not report.safe else 0


def _rejudge(args: argparse.Namespace, thresholds, verdict: dict):
    """The report at ``--rejudge`` judged again: the thresholds given on this command line (else the report's own)
    and the task-level calibration."""
    from blockfp8.audit.report import AuditReport, rejudge
    from blockfp8.cli.args import given_thresholds

    report = AuditReport.load(args.rejudge)
    return rejudge(report, thresholds if given_thresholds(args) else None, **verdict)
