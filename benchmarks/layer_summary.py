"""Summarize a `blockfp8 bench layer` CSV against the kernel targets: per timing mode and FP8 variant, the speedup
over torch's blockwise ``scaled_mm`` (geomean over all cells, decode M <= 64, prefill M >= 512, worst cell), the
speedup over bf16 on the ragged shapes (worst M), and at decode with K >= 7168 the weight's streaming rate as a
share of the device's copy bandwidth; for the DeepSeek-V3 grid, the other families, and the held-out shapes.

    python benchmarks/layer_summary.py benchmarks/results/nvidia_h200/kernels/layer.csv
"""

from __future__ import annotations

import argparse
import csv
import math

from blockfp8.bench import layer, shapes

HELD_OUT = {(4096, 12288), (8192, 8192), (5120, 2880)}
RAGGED = {(2880, 2880), (5120, 2880)}


def _rows(path: str) -> list[dict]:
    out = []
    for r in csv.DictReader(open(path)):
        row = dict(r)
        for key in ("m", "n", "k"):
            row[key] = int(r[key])
        for key in ("us", "gbps", "speedup_vs_scaled_mm", "speedup_vs_bf16"):
            row[key] = float(r[key]) if r[key] not in ("", None) else math.nan
        out.append(row)
    return out


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    args = ap.parse_args()
    rows = _rows(args.csv)
    copy = [r for r in rows if r["bench"] == "copy"][-1:]
    if copy:
        print(f"device copy bandwidth {copy[0]['gbps']:.0f} GB/s")
    cells = [r for r in rows if r["bench"] == "layer"]
    groups = {"deepseek-v3": set(shapes.DEEPSEEK_V3_NK)}
    groups["other families"] = {(r["n"], r["k"]) for r in cells} - groups["deepseek-v3"]
    groups["held out"] = HELD_OUT
    groups["all"] = {(r["n"], r["k"]) for r in cells}
    print("group | variant | geomean | decode | prefill | worst | stream/copy (min)")
    for name, nks in groups.items():
        summary = layer.summarize(copy + [r for r in cells if (r["n"], r["k"]) in nks])
        for variant, s in summary.items():
            stream = s.get("decode_weight_stream_of_copy_bw", {}).get("min")
            print(" | ".join([name, variant] + [_f(s[key]) for key in ("geomean", "decode_geomean", "prefill_geomean",
                                                                       "min")] + [_f(stream, 2)]))
    if copy:
        for variant in dict.fromkeys(r["variant"] for r in cells if not r["variant"].startswith("bf16")):
            share = {(r["n"], r["k"]): r["n"] * r["k"] / r["us"] / 1e3 / copy[0]["gbps"] for r in cells
                     if r["variant"] == variant and r["m"] == 1 and r["k"] >= 7168 and not math.isnan(r["us"])}
            if share:
                by_size = sorted(share.items(), key=lambda item: item[0][0] * item[0][1])
                print(f"{variant}: weight stream / copy bandwidth at M=1: "
                      + ", ".join(f"{n}x{k} {v:.2f}" for (n, k), v in by_size))
    print("ragged vs bf16 (worst M): " + ", ".join(
        f"{v} {min(r['speedup_vs_bf16'] for r in cells if r['variant'] == v and (r['n'], r['k']) in RAGGED):.2f}x"
        for v in dict.fromkeys(r["variant"] for r in cells if (r["n"], r["k"]) in RAGGED)
        if not v.startswith("bf16")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
