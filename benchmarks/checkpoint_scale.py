"""Opening, pairing and planning a checkpoint with DeepSeek-V3's tensor list (90k tensors, 163 shards), on a sparse
copy (headers only; blockfp8.testing.sparse), so the time measured is blockfp8's bookkeeping, not disk reads.

    python benchmarks/checkpoint_scale.py [--out benchmarks/results/cpu/checkpoint_scale.md]
    python benchmarks/checkpoint_scale.py --fp8 DIR   # FP8 phases only, on a folder written by
                                                      # `python -m blockfp8.testing.sparse DIR` (e.g. for an
                                                      # older blockfp8 on PYTHONPATH)

Phases: FP8 checkpoint open (headers parsed and checked) + weight/scale pairing, the audit's plan; for
`blockfp8 quantize` on the bf16 layout, the model built on the meta device from config.json (transformers) and
the tensor plan (which tensors become FP8).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import transformers

from blockfp8.audit.plan import OpenCheckpoint, plan_checkpoint
from blockfp8.formats.safetensors_io import SafetensorsCheckpoint
from blockfp8.formats.writer import QuantizeCheckpointReport, _plan
from blockfp8.nn.load import ModelTensorSelector
from blockfp8.platform import run_environment


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="also write the table to this markdown file")
    p.add_argument("--fp8", metavar="DIR", help="only the FP8 phases, on this sparse FP8 checkpoint")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.fp8 is None:
            from blockfp8.testing.sparse import write_deepseek_v3
        fp8 = Path(args.fp8) if args.fp8 else write_deepseek_v3(Path(tmp) / "fp8", fp8=True)
        ck, t_open = _timed(lambda: OpenCheckpoint(fp8))
        plan, t_plan = _timed(lambda: plan_checkpoint(ck))
        rows.append(("FP8: open + pair (audit, load)", f"{len(ck.tensors)} tensors, {len(plan.jobs)} pairs", t_open))
        rows.append(("FP8: audit plan", f"{len(plan.jobs)} jobs", t_plan))
        ck.close()
        if args.fp8 is None:
            bf16 = write_deepseek_v3(Path(tmp) / "bf16", fp8=False)
            selector, t_model = _timed(lambda: ModelTensorSelector(bf16))
            src, t_src = _timed(lambda: SafetensorsCheckpoint(bf16))
            report = QuantizeCheckpointReport(str(bf16), "-", (128, 128), "float32")
            _, t_qplan = _timed(lambda: _plan(src, selector, (128, 128), report))
            rows.append(("bf16: open (quantize SRC)", f"{len(src)} tensors", t_src))
            rows.append(("bf16: meta model from config.json (transformers)", f"{len(selector.modules)} modules",
                         t_model))
            rows.append(("bf16: quantize plan", f"{len(report.quantized)} to FP8, {len(report.kept)} kept", t_qplan))
    lines = [f"# Checkpoint bookkeeping at DeepSeek-V3 scale ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/checkpoint_scale.py{' --fp8 ' + args.fp8 if args.fp8 else ''}`; "
             f"blockfp8 commit {run_environment('cpu', commit=True)['commit']}, "
             f"{platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}", "",
             "| phase | size | seconds |", "|---|---|---|"]
    lines += [f"| {what} | {size} | {sec:.2f} |" for what, size, sec in rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        from blockfp8 import atomic

        atomic.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
