"""One CuTe DSL GEMM and one torch blockwise ``scaled_mm`` (cuBLASLt) per shape, between cudaProfilerStart/Stop, so
Nsight Compute profiles exactly those kernels after a warm-up (compile, autotuning, first-call costs excluded).

Usage: ncu --profile-from-start off --clock-control none --set full -o prof \\
           python benchmarks/cute_ncu.py 4096x7168x16384 [MxNxK ...]
then:  ncu --import prof.ncu-rep --page details
       ncu --import prof.ncu-rep --page source --csv --print-source sass --kernel-name regex:kernel > src.csv
       python benchmarks/cute_ncu.py --stalls src.csv     (the SASS lines holding the most warp-stall samples)
"""

from __future__ import annotations

import csv
import sys

import torch
from cute_probe import operands  # the probe's operands (run as a script, benchmarks/ is on the path)

from blockfp8.kernels.cutedsl import gemm as cgemm
from blockfp8.kernels.scaled_mm import blockwise_gemm, pad_weight_scale


def calls_for(m: int, n: int, k: int) -> list:
    x_q, x_s, w_q, w_s = operands(m, n, k)
    x_s_mn, w_s_pad = x_s.t().contiguous().t(), pad_weight_scale(w_s)
    return [lambda: cgemm.fp8_block_gemm(x_q, x_s, w_q, w_s, torch.bfloat16),
            lambda: blockwise_gemm(x_q, x_s_mn, w_q, w_s_pad, torch.bfloat16)]


def stalls(path: str, top: int = 12) -> None:
    """Per profiled kernel in an ncu source-page CSV: total warp-stall samples by reason, then the SASS lines with
    the most samples and their main reasons."""
    kernels: list[list[dict]] = []
    header: list[str] = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "Kernel Name":
                kernels.append([])
            elif row and row[0] == "Address":
                header = row
            elif kernels and len(row) == len(header):
                kernels[-1].append(dict(zip(header, row, strict=True)))
    samples = "Warp Stall Sampling (All Samples)"
    for i, rows in enumerate(kernels):
        reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
        total = sum(int(r[samples]) for r in rows)
        by_reason = sorted(((sum(int(r[h]) for r in rows), h) for h in reasons), reverse=True)
        print(f"kernel {i}: {total} samples; " + ", ".join(f"{h} {n / total:.1%}" for n, h in by_reason[:6]))
        for r in sorted(rows, key=lambda r: -int(r[samples]))[:top]:
            main_reasons = sorted(((int(r[h]), h) for h in reasons), reverse=True)[:2]
            print(f"  {int(r[samples]) / total:6.1%}  {r['Source'].strip()[:60]:60s}  "
                  + ", ".join(f"{h} {n}" for n, h in main_reasons))


def main() -> None:
    if sys.argv[1:2] == ["--stalls"]:
        stalls(sys.argv[2])
        return
    shapes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[1:]] or [(4096, 7168, 16384)]
    calls = [c for m, n, k in shapes for c in calls_for(m, n, k)]
    for call in calls:
        for _ in range(3):
            call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for call in calls:
        call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("profiled", shapes)


if __name__ == "__main__":
    main()
