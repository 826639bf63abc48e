"""GEMM-only probe of the CuTe DSL Hopper kernel (``blockfp8.kernels.cutedsl``) against torch's blockwise
``scaled_mm`` and the shipped Triton kernel, in one run on one GPU: correctness against ``quant.reference`` on
fresh random operands (ragged shapes included), then CUDA-graph timings (activation quantization not included:
this is the GEMM alone) and the eager host cost of one call.

Usage: python benchmarks/cute_probe.py --out cute_probe.csv [--m 512,4096] [--configs 128.128.1.1.1.1,64.64.1.1.1.1]
"""

# ruff: noqa: B023  (every closure is timed within the loop iteration that made it)

from __future__ import annotations

import argparse
import csv
import math
import sys
import time

import torch

from blockfp8.bench import timing
from blockfp8.kernels.cutedsl import gemm as cgemm
from blockfp8.kernels.scaled_mm import blockwise_gemm, pad_weight_scale
from blockfp8.kernels.triton import gemm as tgemm
from blockfp8.quant import reference as ref

SHAPES = ((4096, 7168), (7168, 2048), (2112, 7168), (24576, 1536), (8192, 8192), (2880, 2880), (5120, 2880),
          (7168, 16384))
CHECKS = ((1, 256, 256), (77, 2880, 2880), (130, 1000, 1040), (512, 7168, 2048), (300, 192, 4112), (4096, 64, 128))


def operands(m, n, k):
    w = torch.randn(n, k, device="cuda") * 0.05
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w_q, w_s = ref.quantize_weight(w, (128, 128))
    x_q, x_s = ref.quantize_act(x, 128)
    return x_q.contiguous(), x_s.float().contiguous(), w_q.contiguous(), w_s.float().contiguous()


def rel_err(out, want):
    return ((out.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6)).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--m", default="512,4096")
    p.add_argument("--configs", default="128.128.1.1.1.1,64.64.1.1.1.1",
                   help="tile_m.tile_n.cluster_m.cluster_n.swizzle.raster_m, comma-separated")
    args = p.parse_args()
    tiles = [tuple(int(v) for v in c.split(".")) for c in args.configs.split(",")]
    t0 = time.perf_counter()
    for tile in tiles:
        for m, n, k in CHECKS:
            x_q, x_s, w_q, w_s = operands(m, n, k)
            want = ref.gemm_reference(x_q, x_s, w_q, w_s, (128, 128), torch.bfloat16)
            got = cgemm.fp8_block_gemm(x_q, x_s, w_q, w_s, torch.bfloat16, config=tile)
            torch.cuda.synchronize()
            err = rel_err(got, want)
            print(f"check tile {tile} M={m} N={n} K={k}: max rel err {err:.2e} "
                  f"[{time.perf_counter() - t0:.1f} s]", flush=True)
            if not err < 1e-2:
                sys.exit(f"cute gemm wrong at tile {tile} {m}x{n}x{k}: {err}")
    rows = []
    for n, k in SHAPES:
        for m in (int(v) for v in args.m.split(",")):
            x_q, x_s, w_q, w_s = operands(m, n, k)
            x_s_mn = x_s.t().contiguous().t()
            w_s_pad = pad_weight_scale(w_s)
            fns = {"scaled_mm": lambda: blockwise_gemm(x_q, x_s_mn, w_q, w_s_pad, torch.bfloat16),
                   "triton": lambda: tgemm.fp8_block_gemm(x_q, x_s, w_q, w_s, (128, 128), torch.bfloat16)}
            for tile in tiles:
                fns["cute" + ".".join(map(str, tile))] = lambda tile=tile: cgemm.fp8_block_gemm(
                    x_q, x_s, w_q, w_s, torch.bfloat16, config=tile)
            times = {name: timing.wall_us(timing.cuda_graphed(fn), 30) for name, fn in fns.items()}
            for name, us in times.items():
                rows.append({"m": m, "n": n, "k": k, "variant": name, "us": round(us, 2),
                             "tflops": round(2 * m * n * k / us / 1e6, 1),
                             "vs_scaled_mm": round(times["scaled_mm"] / us, 3),
                             "gpu": torch.cuda.get_device_name(), "torch": torch.__version__})
            print(f"M={m:5d} {n}x{k}: " + "  ".join(f"{v} {times[v]:.1f}us ({times['scaled_mm'] / times[v]:.2f}x)"
                                                    for v in fns), flush=True)
    x_q, x_s, w_q, w_s = operands(16, 4096, 7168)
    for _ in range(3):
        cgemm.fp8_block_gemm(x_q, x_s, w_q, w_s)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(200):
        cgemm.fp8_block_gemm(x_q, x_s, w_q, w_s)
    host = (time.perf_counter() - t) / 200 * 1e6
    torch.cuda.synchronize()
    kernel = cgemm._compiled(cgemm.DEFAULT_CONFIG, torch.bfloat16, torch.cuda.current_device())
    out = torch.empty(16, 4096, dtype=torch.bfloat16, device="cuda")
    xu, wu = x_q.view(torch.uint8), w_q.view(torch.uint8)
    t = time.perf_counter()
    for _ in range(200):
        kernel(xu, wu, x_s, w_s, out)
    bare = (time.perf_counter() - t) / 200 * 1e6
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(200):
        tgemm.fp8_block_gemm(x_q, x_s, w_q, w_s, (128, 128), torch.bfloat16)
    tri = (time.perf_counter() - t) / 200 * 1e6
    torch.cuda.synchronize()
    print(f"eager host time per call (M=16, 4096x7168): launcher {host:.1f} us, compiled call alone {bare:.1f} us, "
          f"Triton launcher {tri:.1f} us")
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for v in sorted({r["variant"] for r in rows}):
        for lo, hi in ((512, 512), (4096, 4096)):
            sel = [r["vs_scaled_mm"] for r in rows if r["variant"] == v and lo <= r["m"] <= hi]
            if sel:
                print(f"{v:10s} M={lo}: geomean {math.exp(sum(map(math.log, sel)) / len(sel)):.3f}x scaled_mm "
                      f"({min(sel):.2f}-{max(sel):.2f})")


if __name__ == "__main__":
    main()
