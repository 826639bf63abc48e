"""Write the shipped dense dispatch table (``data/tuned/dispatch.json``) from a `blockfp8 bench layer` CSV.

    python benchmarks/dispatch_table.py benchmarks/results/nvidia_h200/deepgemm/layer.csv \\
        --hold-out 4096x12288,8192x8192,5120x2880 [--gpu NVIDIA_H200 --family sm90]

Per (N, K) and M bucket: the time of a whole layer call (activation quantization included) inside a CUDA graph
(``--mode chain``, the default: the layer among many, as in a model's graph) of each backend that ran
(``scaled_mm``, ``cute``, ``triton``, ``deepgemm``), and the fastest. Whole-layer times are what a user's model sees;
``blockfp8 tune`` fills the same table from GEMM-only times (and the Triton configs). Shapes given to
``--hold-out`` are left out, so the benchmark can check the policy on shapes the table never saw. With several
CSVs, a later file's time for a (shape, M, backend) replaces an earlier one's.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from blockfp8.backends import tuned

BACKENDS = ("scaled_mm", "cute", "triton", "deepgemm")


def table_from_csv(paths: list[str], hold_out: set[tuple[int, int]], mode: str = "chain") -> dict:
    out: dict[str, dict] = {}
    for r in (r for path in paths for r in csv.DictReader(open(path))):
        if r["bench"] != "layer" or not r["variant"].endswith("_" + mode):
            continue
        name = r["variant"].removesuffix("_" + mode)
        n, k, m = int(r["n"]), int(r["k"]), int(r["m"])
        if name not in BACKENDS or (n, k) in hold_out or not r["us"] or math.isnan(float(r["us"])):
            continue
        cell = out.setdefault(f"{n},{k}", {}).setdefault(str(tuned.m_bucket(m)), {"us": {}})
        cell["us"][name] = round(float(r["us"]), 2)
    for cells in out.values():
        for cell in cells.values():
            cell["backend"] = min(cell["us"], key=cell["us"].get)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--hold-out", default="", help="comma list of NxK shapes to leave out")
    ap.add_argument("--mode", default="chain", help="which timing mode's rows to use (bench layer --modes)")
    ap.add_argument("--gpu", default="NVIDIA_H200")
    ap.add_argument("--family", default="sm90")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src" / "blockfp8" / "data" / "tuned"
                                      / tuned.DISPATCH_FILE))
    args = ap.parse_args()
    hold = {tuple(int(v) for v in s.split("x")) for s in args.hold_out.split(",") if s}
    table = table_from_csv(args.csv, hold, args.mode)
    for key in (args.gpu, args.family):
        tuned.merge_write(args.out, key, table)
    for nk, cells in table.items():
        print(nk, ", ".join(f"M<={b}: {c['backend']}" for b, c in sorted(cells.items(), key=lambda x: int(x[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
