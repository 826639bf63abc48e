"""Quantize a bf16/fp32 model into a block-FP8 checkpoint folder (DST) in the HF `quant_method: fp8` format.
SRC is a safetensors model folder, the embedded `smollm2`, or a `.gguf` file (dequantized and written as a
temporary bf16 folder first).

Every nn.Linear of the model except lm_head, MoE router gates and --ignore'd modules, and every MoE expert,
is quantized in 2-D blocks; other tensors are copied; tokenizer and other files are copied (a link out of SRC
is never followed). It streams tensor by tensor (peak memory ~ the largest tensor), writes to a temporary folder
beside DST and renames it at the end, never modifies SRC, and refuses a DST that exists, at the start or when
the result is published, unless --overwrite. SRC and DST are compared after resolving links. Pickle checkpoints
(.bin/.pt) are refused. Afterwards it says which programs load DST: blockfp8 always; transformers only when every
quantized weight is a whole number of blocks (else it names a --block that is). Exit codes: 0 done, 1 bad
checkpoint or failed write (nothing left at DST), 2 usage (a bad flag, a SRC that does not exist, an existing DST
without --overwrite); interrupted (Ctrl-C, SIGTERM) 130/143, also with nothing left behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from blockfp8.cli.args import BLOCK_SIDES, add_output_arguments, block_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="model folder (config.json + *.safetensors, single or sharded), an "
                                              "embedded model (smollm2) or a .gguf file")
    p.add_argument("dst", metavar="DST", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--block", type=block_size, default=(128, 128), metavar="N,K",
                   help="weight block size: N,K, NxK or one number for a square block, each side one of "
                        f"{', '.join(map(str, BLOCK_SIDES))} (default 128,128: what DeepGEMM and cuBLASLt take; "
                        "transformers needs a block that divides every weight's shape)")
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
    add_output_arguments(p, "the report")


def run(args: argparse.Namespace) -> int:
    import sys
    import tempfile
    from pathlib import Path

    from blockfp8.cli.args import UsageError, human_stream, write_json_output
    from blockfp8.formats import CheckpointError, quantize_checkpoint
    from blockfp8.formats.consumers import check_consumers, checkpoint_shapes
    from blockfp8.formats.hf_config import check_model_sizes, read_config_json
    from blockfp8.formats.writer import check_destination
    from blockfp8.models import ModelError, ModelNotFoundError, export_float_folder, is_gguf

    if Path(args.dst).exists() and not args.overwrite:
        raise UsageError(f"DST {args.dst}: already exists; pass --overwrite to replace it")
    if args.plan and args.scale_fmt != "float32":
        raise UsageError("--plan chooses the scale format per layer: drop --scale-fmt")
    gguf = is_gguf(args.src)
    if not gguf and not Path(args.src).is_dir():
        raise UsageError(f"SRC {args.src}: not a model folder (expected a folder with config.json and "
                         "*.safetensors), an embedded model (smollm2) or a .gguf file")
    with tempfile.TemporaryDirectory(prefix="blockfp8-src-") as tmp:
        try:
            if not gguf:  # the paths and config.json first: a bad one fails before transformers is even imported
                check_destination(args.src, args.dst, args.overwrite)
                check_model_sizes(read_config_json(args.src), Path(args.src) / "config.json")
            ue8m0 = _plan_weights(args.plan) if args.plan else ()
            src = str(export_float_folder(args.src, Path(tmp) / "bf16")) if gguf else args.src
            from blockfp8.nn.load import ModelTensorSelector

            selector = ModelTensorSelector(src, args.ignore)
            report = quantize_checkpoint(src, args.dst, selector, block_size=args.block, scale_fmt=args.scale_fmt,
                                         overwrite=args.overwrite, progress=not args.quiet, ue8m0_weights=ue8m0)
            consumers = check_consumers(checkpoint_shapes(report.dst, report.quantized), report.block_size)
        except ModelNotFoundError as exc:
            raise UsageError(str(exc)) from None
        except (CheckpointError, ModelError) as exc:
            print(f"blockfp8 quantize: error: {exc}", file=sys.stderr)
            return 1
    if gguf:
        report.src = args.src
    out = human_stream(args)
    if args.json is not None:
        wrote = write_json_output(args.json, {**report.as_dict(), "consumers": consumers.as_dict()})
        if wrote:
            print(f"wrote {wrote}", file=out)
    print(f"wrote {report.dst}: {len(report.quantized)} weights quantized to FP8 (block {list(report.block_size)}, "
          f"{report.scale_fmt} scales), {len(report.kept)} tensors copied as is; "
          f"{report.bytes_in / 2**20:.1f} MiB -> {report.bytes_out / 2**20:.1f} MiB", file=out)
    if report.ue8m0_weights:
        print(f"per-layer plan: {len(report.ue8m0_weights)} weights with power-of-two (UE8M0) scales, "
              f"{len(report.quantized) - len(report.ue8m0_weights)} with float32 scales", file=out)
    if report.skipped_modules:
        shown = ", ".join(report.skipped_modules[:6]) + (" ..." if len(report.skipped_modules) > 6 else "")
        print(f"left in high precision ({len(report.skipped_modules)}): {shown}", file=out)
    if report.copied_files:
        print(f"copied: {', '.join(report.copied_files)}", file=out)
    for name, why in report.not_copied.items():
        print(f"not copied: {name} ({why})", file=out)
    for line in consumers.lines():
        print(line, file=out)
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
