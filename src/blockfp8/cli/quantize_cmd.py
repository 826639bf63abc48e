"""Quantize a bf16/fp32 safetensors model folder (SRC) into a block-FP8 checkpoint folder (DST) that vLLM,
SGLang, transformers and `blockfp8.load_fp8_checkpoint` read (HF `quant_method: fp8`).

Every nn.Linear of the model except lm_head, MoE router gates and --ignore'd modules, and every MoE expert,
is quantized in 2-D blocks; other tensors are copied; tokenizer and other files are copied (a link out of SRC
is never followed). It streams tensor by tensor (peak memory ~ the largest tensor), writes to a temporary folder
beside DST and renames it at the end, never modifies SRC, and refuses a DST that exists, at the start or when
the result is published, unless --overwrite. SRC and DST are compared after resolving links. Pickle checkpoints
(.bin/.pt) are refused. Exit codes: 0 done, 1 bad checkpoint or failed write (nothing left at DST), 2 usage;
interrupted (Ctrl-C, SIGTERM) 130/143, also with nothing left behind.
"""

from __future__ import annotations

import argparse

from blockfp8.cli.args import block_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="model folder: config.json + *.safetensors (single or sharded)")
    p.add_argument("dst", metavar="DST", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--block", type=block_size, default=(128, 128), metavar="N,K",
                   help="weight block size: N,K, NxK or one number for a square block (default 128,128)")
    p.add_argument("--scale-fmt", choices=("float32", "ue8m0"), default="float32",
                   help="block scale format: float32 (block max lands on 448) or ue8m0 (powers of two, written as "
                        "float32 values with scale_fmt: ue8m0 in the config); default float32")
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
    from blockfp8.formats.hf_config import check_model_sizes, read_config_json
    from blockfp8.formats.writer import check_destination

    if not Path(args.src).is_dir():
        raise UsageError(f"SRC {args.src}: not a model folder (expected a folder with config.json and *.safetensors)")
    try:
        # the paths and config.json first: a bad one fails before transformers is even imported
        check_destination(args.src, args.dst, args.overwrite)
        check_model_sizes(read_config_json(args.src), Path(args.src) / "config.json")
        from blockfp8.nn.load import ModelTensorSelector

        selector = ModelTensorSelector(args.src, args.ignore)
        report = quantize_checkpoint(args.src, args.dst, selector, block_size=args.block, scale_fmt=args.scale_fmt,
                                     overwrite=args.overwrite, progress=not args.no_progress)
    except CheckpointError as exc:
        print(f"blockfp8 quantize: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print(f"wrote {report.dst}: {len(report.quantized)} weights quantized to FP8 (block {list(report.block_size)}, "
          f"{report.scale_fmt} scales), {len(report.kept)} tensors copied as is; "
          f"{report.bytes_in / 2**20:.1f} MiB -> {report.bytes_out / 2**20:.1f} MiB")
    if report.skipped_modules:
        shown = ", ".join(report.skipped_modules[:6]) + (" ..." if len(report.skipped_modules) > 6 else "")
        print(f"left in high precision ({len(report.skipped_modules)}): {shown}")
    if report.copied_files:
        print(f"copied: {', '.join(report.copied_files)}")
    for name, why in report.not_copied.items():
        print(f"not copied: {name} ({why})")
    return 0
