"""Quantize a bf16/fp32 safetensors model folder (SRC) into a block-FP8 checkpoint folder (DST) that vLLM,
SGLang, transformers and `blockfp8.load_fp8_checkpoint` read (HF `quant_method: fp8`).

Every nn.Linear of the model except lm_head, MoE router gates and --ignore'd modules, and every MoE expert,
is quantized in 2-D blocks; other tensors are copied; tokenizer and other files are copied. It streams tensor
by tensor (peak memory ~ the largest tensor), writes to a temporary folder beside DST and renames it at the
end, never modifies SRC, and refuses an existing DST unless --overwrite. Pickle checkpoints (.bin/.pt) are
refused. Exit codes: 0 done, 1 bad checkpoint (nothing written), 2 usage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from blockfp8.cli.args import block_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="model folder: config.json + *.safetensors (single or sharded)")
    p.add_argument("dst", metavar="DST", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--block", type=block_size, default=(128, 128), metavar="N,K",
                   help="weight block size: N,K, NxK or one number for a square block (default 128,128)")
    p.add_argument("--scale-fmt", choices=("float32", "ue8m0"), default="float32",
                   help="block scale format: float32 (block max lands on 448) or ue8m0 (powers of two, written as "
                        "float32 values with scale_fmt: ue8m0 in the config); default float32")
    p.add_argument("--plan", metavar="REPORT",
                   help="an audit report.json with a per-layer plan: the plan's UE8M0 layers get power-of-two scales, "
                        "its float32 layers (and layers it did not audit) float32 scales")
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="leave matching modules unquantized (repeatable): a module name (also matches modules "
                        "under it and ending in it), a glob (*.mlp.down_proj) or re:REGEX")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from blockfp8.cli.args import UsageError
    from blockfp8.formats import CheckpointError, quantize_checkpoint
    from blockfp8.nn.load import ModelTensorSelector

    if not Path(args.src).is_dir():
        raise UsageError(f"SRC {args.src}: not a model folder (expected a folder with config.json and *.safetensors)")
    if args.plan and args.scale_fmt != "float32":
        raise UsageError("--plan chooses the scale format per layer: drop --scale-fmt")
    try:
        ue8m0 = _plan_weights(args.plan) if args.plan else ()
        selector = ModelTensorSelector(args.src, args.ignore)
        report = quantize_checkpoint(args.src, args.dst, selector, block_size=args.block, scale_fmt=args.scale_fmt,
                                     overwrite=args.overwrite, progress=not args.no_progress, ue8m0_weights=ue8m0)
    except CheckpointError as exc:
        print(f"blockfp8 quantize: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print(f"wrote {report.dst}: {len(report.quantized)} weights quantized to FP8 (block {list(report.block_size)}, "
          f"{report.scale_fmt} scales), {len(report.kept)} tensors copied as is; "
          f"{report.bytes_in / 2**20:.1f} MiB -> {report.bytes_out / 2**20:.1f} MiB")
    if report.ue8m0_weights:
        print(f"per-layer plan: {len(report.ue8m0_weights)} weights with power-of-two (UE8M0) scales, "
              f"{len(report.quantized) - len(report.ue8m0_weights)} with float32 scales")
    if report.skipped_modules:
        shown = ", ".join(report.skipped_modules[:6]) + (" ..." if len(report.skipped_modules) > 6 else "")
        print(f"left in high precision ({len(report.skipped_modules)}): {shown}")
    if report.copied_files:
        print(f"copied: {', '.join(report.copied_files)}")
    for name, why in report.not_copied.items():
        print(f"not copied: {name} ({why})")
    return 0


def _plan_weights(path: str) -> set[str]:
    """The weight tensors a report's plan lets run with UE8M0 scales: every audited layer not on float32 scales."""
    from blockfp8.audit.report import REPORT_JSON, AuditReport
    from blockfp8.audit.verdict import VerdictError
    from blockfp8.formats import CheckpointError

    report_path = Path(path) / REPORT_JSON if Path(path).is_dir() else Path(path)
    try:
        report = AuditReport.load(report_path)
    except VerdictError as exc:
        raise CheckpointError(str(exc)) from None
    if report.plan is None:
        raise CheckpointError("field plan is missing: audit with --e2e (and without --no-plan)", file=report_path)
    float32 = set(report.plan["float32_layers"])
    return {f"{r['name']}.weight" for r in report.layers if r["name"] not in float32}
