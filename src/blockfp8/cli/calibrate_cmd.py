"""Calibrate the audit's task-level verdict on your own evaluations: pair an end-to-end audit report (`blockfp8
audit --model M --calib N --e2e`, or `check`) with `blockfp8 eval CONFIG --json` results of the same model, and
write the calibration points (`--verdict-calibration FILE` of audit and check reads them). Every pair of variants
both files hold becomes a point: bf16 / float32 scales / UE8M0 scales / a plan. --append adds to an existing file
(several models or tasks). Prints what the points calibrate to. Exit 0, 1 on a bad input file, 2 usage.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audit", required=True, metavar="REPORT", help="audit report.json (or its folder) with --e2e")
    p.add_argument("--eval", required=True, action="append", metavar="RESULTS",
                   help="`blockfp8 eval --json` results of the same model (repeatable)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="calibration file to write")
    p.add_argument("--append", action="store_true", help="keep the points already in FILE")
    from blockfp8.cli.args import add_output_arguments

    add_output_arguments(p, "the points and what they calibrate to")


def _read_json(path, what: str):
    import json
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def run(args: argparse.Namespace) -> int:
    import sys
    from dataclasses import asdict, is_dataclass
    from pathlib import Path

    from blockfp8 import atomic
    from blockfp8.audit.predict import calibrate, leave_one_out, load_points
    from blockfp8.cli.args import human_stream, write_json_output
    from blockfp8.eval.calibration import SCHEMA, calibration_points

    audit = Path(args.audit)
    if audit.is_dir():
        audit = audit / "report.json"
    try:
        report = _read_json(audit, "audit report")
        points = []
        if args.append and Path(args.out).exists():
            points, _ = load_points(args.out)
        for results in args.eval:
            points += calibration_points(report, _read_json(results, "eval results"), str(audit), results)
        tasks = sorted({p["task"] for p in points})
        calibrations = [calibrate(points, t) for t in tasks]
    except ValueError as exc:
        print(f"blockfp8 calibrate: error: {exc}", file=sys.stderr)
        return 1
    data = {"schema": SCHEMA,
            "about": "Calibration points of the task-level UE8M0 verdict (blockfp8 calibrate; docs/audit.md)",
            "points": points}
    out = human_stream(args)
    print(f"wrote {atomic.write_json(args.out, data)}: {len(points)} points", file=out)
    if args.json is not None:
        cal = [asdict(c) if is_dataclass(c) else vars(c) for c in calibrations]
        wrote = write_json_output(args.json, {**data, "calibrations": cal})
        if wrote:
            print(f"wrote {wrote}", file=out)
        return 0
    for c in calibrations:
        print(f"  {c.task}: task accuracy change = {c.acc_ratio:.3f} x audit next-token accuracy change "
              f"(sd {c.acc_sd:.2f} pp); perplexity {c.ppl_ratio:.3f} x (sd {c.ppl_sd:.2f}%); unsafe above a "
              f"predicted loss of {c.loss_boundary_pp:.2f} pp{'' if c.separable else ' (points not separable)'}")
        if c.target_ppl_ratio is not None:
            print(f"  {c.task}: task perplexity change = {c.target_ppl_ratio:.3f} x audit target-word perplexity "
                  f"change (sd {c.target_ppl_sd:.2f}%, {c.target_points} points)")
        if c.points >= 3:
            for row in leave_one_out(points, c.task):
                ppl = (f"; perplexity {row['ppl']:+.2f}% in [{row['ppl_interval'][0]:+.2f}, "
                       f"{row['ppl_interval'][1]:+.2f}]"
                       f"{' (from the target words)' if row['ppl_from'] == 'target_words' else ''}: "
                       f"{'covered' if row['ppl_covered'] else 'MISSED'}" if "ppl" in row else "")
                print(f"    leave-one-out {row['pair'][0]} vs {row['pair'][1]}: accuracy {row['acc']:+.2f} pp in "
                      f"[{row['acc_interval'][0]:+.2f}, {row['acc_interval'][1]:+.2f}]: "
                      f"{'covered' if row['acc_covered'] else 'MISSED'}{ppl}")
    return 0
