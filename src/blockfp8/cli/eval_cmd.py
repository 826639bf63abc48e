"""Evaluate a model's accuracy with and without block FP8 (GSM8K, LAMBADA) from a YAML config.

Every variant of the config runs on the same items; each is compared with the baseline (accuracy with a 95%
interval, McNemar's exact test, and for LAMBADA a paired bootstrap of perplexity). A variant passes when
accuracy >= accuracy_threshold - tolerance. Exit 0 when all pass, 1 when one fails, 2 on a bad config or flag.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/ and docs/eval.md)")
    p.add_argument("--limit", type=int, help="use only the first N items of the config's set")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=int, help="override the config's batch_size")
    p.add_argument("--variants", help="comma-separated subset of the config's variant names")
    p.add_argument("--json", metavar="FILE", help="write the full results (per-item outcomes included) as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the results table as markdown (also printed)")
    p.add_argument("--samples", metavar="FILE", help="write every generation / prediction as JSON lines")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from blockfp8.cli.args import UsageError
    from blockfp8.datasets import DataError
    from blockfp8.eval.config import EvalConfigError, load_config

    for flag in ("limit", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    try:
        cfg = load_config(args.config)
    except EvalConfigError as exc:
        raise UsageError(str(exc)) from None
    from blockfp8 import atomic

    for target in (args.json, args.markdown, args.samples):
        if target:
            atomic.check_target(target)  # fail now, not after the evaluation

    from blockfp8.eval.report import markdown, split_samples, write_json, write_samples
    from blockfp8.eval.runner import EvalError, evaluate
    from blockfp8.models import ModelError

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"blockfp8 eval: {msg}", file=sys.stderr, flush=True)

    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    try:
        results = evaluate(cfg, device=args.device, limit=args.limit, batch_size=args.batch_size, only=only, log=log)
    except (DataError, ModelError) as exc:
        raise UsageError(str(exc)) from None
    except EvalError as exc:
        print(f"blockfp8 eval: error: {exc}", file=sys.stderr)
        return 1
    results["command"] = "blockfp8 eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 \
        else f"blockfp8 eval {shlex.quote(args.config)}"
    samples = split_samples(results)
    table = markdown(results)
    print(table, end="")
    if args.markdown:
        from blockfp8 import atomic

        atomic.write_text(args.markdown, table)
    if args.json:
        write_json(results, args.json)
    if args.samples:
        write_samples(samples, args.samples)
    failed = [name for name, r in results["variants"].items() if not r["passed"]]
    if failed:
        print(f"blockfp8 eval: below threshold - tolerance: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
