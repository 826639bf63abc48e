"""Write the shipped MoE dispatch table (``data/tuned/moe_dispatch.json``) from a `blockfp8 bench moe` CSV.

    python benchmarks/moe_dispatch_table.py benchmarks/results/nvidia_h200/deepgemm/moe.csv [--gpu NVIDIA_H200]

Per model shape and token count, the CUDA-graph time of each grouped backend as the library runs it: ``triton``
from ``triton_graph``; ``deepgemm`` from ``deepgemm_masked_graph`` up to the masked/contiguous switch
(``kernels.deepgemm_moe.MASKED_MAX_TOKENS``) and ``deepgemm_contiguous_graph`` above it (else ``deepgemm_graph``).
Entries go under the GPU's key and its SM family's (``sm90``), for GPUs of the family nobody measured.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from blockfp8.backends import tuned
from blockfp8.kernels.deepgemm_moe import MASKED_MAX_TOKENS


def table_from_csv(path: str) -> dict:
    us: dict[tuple[str, int], dict[str, float]] = {}
    shape: dict[str, tuple[int, int, int]] = {}
    for r in csv.DictReader(open(path)):
        if not r["variant"].endswith("_graph") or not r["us"] or math.isnan(float(r["us"])):
            continue
        model, dims = r["n"].split(":")  # "qwen3-30b-a3b:E128xI768", k = hidden
        e, i = (int(v[1:]) for v in dims.split("x"))
        shape[model] = (e, 2 * i, int(r["k"]))
        us.setdefault((model, int(r["m"])), {})[r["variant"].removesuffix("_graph")] = float(r["us"])
    out: dict[str, dict] = {}
    for (model, t), v in sorted(us.items()):
        forced = v.get("deepgemm_masked" if t <= MASKED_MAX_TOKENS else "deepgemm_contiguous")
        timed = {"triton": v.get("triton"), "deepgemm": forced if forced is not None else v.get("deepgemm")}
        timed = {b: round(x, 2) for b, x in timed.items() if x is not None}
        if not timed:
            continue
        e, n, k = shape[model]
        out.setdefault(tuned.moe_shape_key(e, n, k), {})[str(tuned.m_bucket(t))] = {
            "backend": min(timed, key=timed.get), "us": timed}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--gpu", default="NVIDIA_H200")
    ap.add_argument("--family", default="sm90")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src" / "blockfp8" / "data" / "tuned"
                                      / tuned.MOE_DISPATCH_FILE))
    args = ap.parse_args()
    table = table_from_csv(args.csv)
    for key in (args.gpu, args.family):
        tuned.merge_write(args.out, key, table)
    for shape_key, buckets in table.items():
        print(shape_key, ", ".join(f"T<={b}: {v['backend']}" for b, v in buckets.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
