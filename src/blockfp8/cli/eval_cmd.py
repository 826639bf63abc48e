"""Evaluate a model's accuracy with and without block FP8 (GSM8K, LAMBADA) from a YAML config.

Every variant of the config runs on the same items; each is compared with the baseline (accuracy with a 95%
interval, McNemar's exact test, and for LAMBADA a paired bootstrap of perplexity). A variant passes when
accuracy >= accuracy_threshold - tolerance. The config's `model:` is anything the other commands take: an
embedded model (smollm2), a .gguf file, a transformers folder or a block-FP8 folder (dequantized: its baseline
is the checkpoint's own weights). Exit 0 when all pass, 1 when one fails or the model file is bad, 2 on a bad
config or flag or a model that does not exist.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from blockfp8.cli.args import add_output_arguments, positive_int

    p.add_argument("config", help="YAML config (see configs/ and docs/eval.md)")
    p.add_argument("--limit", type=positive_int, help="use only the first N items of the config's set")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=positive_int, help="override the config's batch_size")
    p.add_argument("--variants", help="comma-separated subset of the config's variant names")
    p.add_argument("--model", help="run this model instead of the config's `model:` (an embedded model, a .gguf "
                                   "file, a transformers folder or a block-FP8 folder)")
    add_output_arguments(p, "the full results (per-item outcomes included)")
    p.add_argument("--markdown", metavar="FILE", help="write the results table as markdown (also printed; - for "
                                                      "stdout)")
    p.add_argument("--samples", metavar="FILE", help="write every generation / prediction as JSON lines (- for "
                                                     "stdout)")


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from blockfp8.cli.args import UsageError, human_stream, write_output
    from blockfp8.datasets import DataError
    from blockfp8.eval.config import EvalConfigError, load_config

    try:
        cfg = load_config(args.config)
    except EvalConfigError as exc:
        raise UsageError(str(exc)) from None
    from blockfp8 import atomic

    for target in (args.json, args.markdown, args.samples):
        if target and target != "-":  # "-" is stdout
            atomic.check_target(target)  # fail now, not after the evaluation
    if args.model:
        from dataclasses import replace

        cfg = replace(cfg, model=args.model)

    from blockfp8.eval.report import dumps, markdown, samples_text, split_samples
    from blockfp8.eval.runner import EvalError, evaluate
    from blockfp8.models import ModelError, ModelNotFoundError

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"blockfp8 eval: {msg}", file=sys.stderr, flush=True)

    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    try:
        results = evaluate(cfg, device=args.device, limit=args.limit, batch_size=args.batch_size, only=only, log=log)
    except (DataError, ModelNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    except (EvalError, ModelError) as exc:
        print(f"blockfp8 eval: error: {exc}", file=sys.stderr)
        return 1
    results["command"] = "blockfp8 eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 \
        else f"blockfp8 eval {shlex.quote(args.config)}"
    samples = split_samples(results)
    table = markdown(results)
    out = human_stream(args)
    print(table, end="", file=out)
    for path, text in ((args.markdown, table), (args.json, dumps(results) + "\n"),
                       (args.samples, samples_text(samples))):
        if path is not None:
            wrote = write_output(path, text)
            if wrote:
                print(f"wrote {wrote}", file=out)
    failed = [name for name, r in results["variants"].items() if not r["passed"]]
    if failed:
        print(f"blockfp8 eval: below threshold - tolerance: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
