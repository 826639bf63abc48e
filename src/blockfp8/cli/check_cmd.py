"""Will this model lose accuracy if its FP8 layers run with UE8M0 scales (DeepGEMM on Blackwell)? Runs the
calibrated audit and a short end-to-end comparison on the embedded SmolLM2-135M (default) or any transformers
model folder (--model), and/or the checkpoint level on an FP8 checkpoint (--checkpoint); prints the verdict with
the numbers behind it and what blockfp8 would select on Hopper and on Blackwell; writes the report folder
(report.json, report.md, bits_lost.png, scale_inflation.png). --model takes what every model-reading command
takes: an embedded model, a .gguf file, a float model folder, or a block-FP8 folder (what `blockfp8 quantize`
writes; its dequantized weights are audited). CPU is fine (the README gives a measured time). Exit 0 (1 with
--strict when the verdict is unsafe; 1 on a bad checkpoint or model file; 2 usage, also a path that does not
exist)."""

from __future__ import annotations

import argparse
import sys

from blockfp8.cli.args import (
    add_model_arguments,
    add_output_arguments,
    add_plan_arguments,
    add_threshold_arguments,
    plan_from_args,
    positive_int,
    resolve_device,
    thresholds_from_args,
)

ARCHES = (("Hopper", "sm_90"), ("Blackwell", "sm_100"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="embedded model (smollm2, the default), a .gguf file, a transformers folder or a block-FP8 "
                        "folder")
    p.add_argument("--checkpoint", metavar="PATH", help="also audit this FP8 (or bf16) safetensors checkpoint")
    p.add_argument("--calib", type=positive_int, default=16, metavar="N", help="calibration windows (default 16)")
    p.add_argument("--eval", type=positive_int, default=32, metavar="N", help="held-out windows (default 32)")
    add_model_arguments(p)
    p.add_argument("--out", default="reports/check", metavar="DIR",
                   help="report folder (default ./reports/check; with --model too, the checkpoint's goes to "
                        "DIR/checkpoint)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a verdict is unsafe")
    add_output_arguments(p, "the report(s), keyed model / checkpoint")
    add_threshold_arguments(p)
    add_plan_arguments(p)


def selection_lines(report: dict) -> list[str]:
    """What the policy picks for this model's worst layer on a Hopper and a Blackwell plan, fed the verdict."""
    from blockfp8.audit.report import AuditReport
    from blockfp8.audit.verdict import verdict_of
    from blockfp8.backends.explain import render_selection, selection_for_verdict

    s = report["summary"]
    worst = next(r for r in report["layers"] if r["name"] == s["worst_layer"])
    n, k = worst["shape"]
    audit = verdict_of(AuditReport.from_dict(report))
    selections = selection_for_verdict(n, k, tuple(report["block_size"]), audit, arches=ARCHES,
                                       layer=s["worst_layer"])
    return render_selection(s["worst_layer"], n, k, selections) + plan_selection_lines(report)


def plan_selection_lines(report: dict) -> list[str]:
    """With a per-layer plan: what each audited layer gets on a Blackwell plan (DeepGEMM where installed)."""
    from blockfp8.audit.report import AuditReport
    from blockfp8.audit.verdict import verdict_of
    from blockfp8.backends.explain import layer_choices, render_layer_choices
    from blockfp8.config import BlockFP8Config
    from blockfp8.platform import detect

    if not report.get("plan"):
        return []
    audit = verdict_of(AuditReport.from_dict(report))
    config = BlockFP8Config(model_type=audit.model_type, audit=audit, weight_block_size=tuple(report["block_size"]))
    plat = detect(arch="sm_100")
    choices = layer_choices([(r["name"], *r["shape"]) for r in report["layers"]], config, plat)
    return ["with the per-layer plan on Blackwell sm_100 (the guard's answer decides where DeepGEMM is installed):",
            *render_layer_choices(choices)]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from blockfp8 import atomic
    from blockfp8.audit import run as levels
    from blockfp8.audit.render import render_check_summary
    from blockfp8.audit.report import write_report_folder
    from blockfp8.cli.args import UsageError, human_stream, write_json_output
    from blockfp8.formats.errors import CheckpointError
    from blockfp8.models import ModelError, ModelNotFoundError, checkpoint_block, load_causal_lm

    atomic.check_target(args.out, folder=True)  # fail now, not after the audit
    thresholds = thresholds_from_args(args)
    plan, verdict = plan_from_args(args)
    device = resolve_device(args.device)
    progress = not args.quiet
    model_name = args.model or (None if args.checkpoint else "smollm2")
    if args.checkpoint and not Path(args.checkpoint).exists():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file or folder")
    command = "blockfp8 check " + " ".join(sys.argv[2:])
    reports = []
    try:
        if args.checkpoint:
            ck = levels.audit_checkpoint(args.checkpoint, thresholds=thresholds, device=device, measure_read=True,
                                         progress=progress)
            reports.append(("checkpoint", ck.with_run(command=command),
                            f"{args.out}/checkpoint" if model_name else args.out))
        if model_name:
            model, tokenizer = load_causal_lm(model_name, dtype=args.dtype, device=device)
            mr = levels.audit_model(model, tokenizer, model_name, calib=args.calib, seq_len=args.seq_len,
                                    block=checkpoint_block(model_name) or (128, 128),
                                    eval_windows=args.eval, thresholds=thresholds, device=device,
                                    batch_tokens=args.batch_tokens, n_boot=args.bootstrap, progress=progress,
                                    plan=plan, plan_windows=args.plan_windows, verdict=verdict,
                                    roundings=args.plan_roundings)
            reports.append(("model", mr.with_run(command=command), args.out))
    except ModelNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except (CheckpointError, ModelError, ValueError) as exc:
        print(f"blockfp8 check: error: {exc}", file=sys.stderr)
        return 1
    out = human_stream(args)
    for _, report, folder in reports:
        print(render_check_summary(report), file=out)
        print("\n".join(selection_lines(report.to_dict())), file=out)
        for path in write_report_folder(report, folder):
            print(f"wrote {path}", file=out)
    if args.json is not None:
        payload = {kind: {**report.to_dict(), "selection": selection_lines(report.to_dict())}
                   for kind, report, _ in reports}
        wrote = write_json_output(args.json, payload)
        if wrote:
            print(f"wrote {wrote}", file=out)
    unsafe = any(not r.safe for _, r, _ in reports)
    return 1 if args.strict and unsafe else 0
