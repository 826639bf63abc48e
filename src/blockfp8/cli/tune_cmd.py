"""Regenerate the tuned tables for this GPU: the fastest Triton config per (N, K, M bucket)
(data/tuned/triton_gemm.json) and the fastest allowed backend per cell (data/tuned/dispatch.json),
over the DeepSeek-V3 grid or --nk/--m. Needs a CUDA GPU; writes into --out-dir (default: the package's data)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--m", default=None, help="comma list of M (default 1,16,64,128,512,4096)")
    p.add_argument("--nk", default=None, help="comma list of NxK pairs (default the DeepSeek-V3 list)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out-dir", default=None, help="folder for triton_gemm.json and dispatch.json")
    p.add_argument("--workers", type=int, default=12, help="parallel compile processes")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from blockfp8.backends import tuned
    from blockfp8.bench import gemm, shapes
    from blockfp8.platform import detect

    if not torch.cuda.is_available():
        print("blockfp8 tune: error: needs a CUDA GPU", file=sys.stderr)
        return 1
    ms = tuple(int(v) for v in args.m.split(",")) if args.m else shapes.GEMM_MS
    nks = (tuple(tuple(int(x) for x in p.split("x")) for p in args.nk.split(",")) if args.nk
           else shapes.DEEPSEEK_V3_NK)
    cfgs = [c for m in ms for c in gemm.candidate_configs(m)]
    bad = {k: v for k, v in gemm.precompile(cfgs, args.workers).items() if v != "ok"}
    for k, v in bad.items():
        print(f"compile failed: {k}: {v}")
    gemm_table, dispatch_table, _ = gemm.tune(shapes.gemm_grid(ms, nks), reps=args.reps)
    out = Path(args.out_dir) if args.out_dir else Path(__file__).resolve().parents[1] / "data" / "tuned"
    gpu = tuned.platform_keys(detect())[0]
    tuned.merge_write(out / tuned.TRITON_GEMM_FILE, gpu, gemm_table)
    tuned.merge_write(out / tuned.DISPATCH_FILE, gpu, dispatch_table)
    print(f"wrote {out / tuned.TRITON_GEMM_FILE} and {out / tuned.DISPATCH_FILE} for {gpu}")
    return 0
