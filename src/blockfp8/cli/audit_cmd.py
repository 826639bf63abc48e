"""Measure what UE8M0 (power-of-two) block scales cost a model compared with float32 scales, layer by layer.

Level available now: weights-only (`--model NAME_OR_PATH --weights-only`): every decoder linear weight is
quantized with float32 and with UE8M0 block scales; the table shows relative error and SNR bits for both,
bits lost, and the scale inflation (UE8M0 / float32 scale, mean and max over blocks).
"""

from __future__ import annotations

import argparse
import sys


def _block(text: str) -> tuple[int, int]:
    try:
        bn, bk = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--block {text!r}: expected two integers like 128,128") from None
    if bn <= 0 or bk <= 0:
        raise argparse.ArgumentTypeError(f"--block {text!r}: block sizes must be positive")
    return bn, bk


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="embedded model name (smollm2) or a transformers model folder")
    p.add_argument("--weights-only", action="store_true", help="audit the weights alone (no calibration data)")
    p.add_argument("--block", type=_block, default=(128, 128), metavar="BN,BK", help="weight block size")
    p.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    p.add_argument("--top", type=int, default=0, metavar="N", help="print only the N layers that lose most")


def run(args: argparse.Namespace) -> int:
    from blockfp8.audit import report, weights
    from blockfp8.models import ModelError, load_causal_lm

    if not args.weights_only:
        print("blockfp8 audit: only --weights-only is available in this version", file=sys.stderr)
        return 2
    try:
        model, _ = load_causal_lm(args.model)
    except ModelError as exc:
        print(f"blockfp8 audit: error: {exc}", file=sys.stderr)
        return 2
    rows = weights.audit_weights(weights.linear_weights(model), args.block, progress=sys.stderr.isatty())
    summary = weights.summarize(rows)
    shown = sorted(rows, key=lambda r: -r.bits_lost)[: args.top] if args.top else rows
    headers = ["layer", "shape", "relerr_fp32", "relerr_ue8m0", "bits_fp32", "bits_ue8m0", "bits_lost",
               "infl_mean", "infl_max"]
    table = [
        [r.name, "x".join(map(str, r.shape)), r.rel_err_fp32, r.rel_err_ue8m0, r.bits_fp32, r.bits_ue8m0,
         r.bits_lost, r.scale_inflation_mean, r.scale_inflation_max]
        for r in shown
    ]
    print(f"weights-only audit of {args.model}: block {list(args.block)}, {len(rows)} linear layers")
    print(report.format_table(headers, table))
    print(
        f"\nsummary: mean bits float32 {summary['mean_bits_fp32']:.3f}, UE8M0 {summary['mean_bits_ue8m0']:.3f}; "
        f"bits lost mean {summary['mean_bits_lost']:.3f}, max {summary['max_bits_lost']:.3f} "
        f"({summary['worst_layer']}); mean scale inflation {summary['mean_scale_inflation']:.3f}"
    )
    if args.json:
        payload = {
            "model": args.model,
            "level": "weights",
            "block_size": list(args.block),
            "layers": [r.as_dict() for r in rows],
            "summary": summary,
        }
        path = report.write_json_atomic(args.json, payload)
        print(f"wrote {path}")
    return 0
