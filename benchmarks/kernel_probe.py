"""Probe GEMM-only kernel options on one GPU before building them into blockfp8 (the numbers behind the choices in
docs/kernels.md, "Prefill without DeepGEMM" and the H200 sections). Writes one CSV row per (part, shape, M,
variant); prints a short table.

Parts:
* ``prefill``: Triton block-FP8 configs (the tuner's candidates plus occupancy-oriented ones) against torch's
  blockwise ``scaled_mm``, M in {512, 4096}; ``prefill_ws``: the same cells with a warp-specialized K loop
  (a part of its own, so that a hang there costs only that part); ``prefill_scalar``: the shipped TMA kernel (one
  FMA per element where a tile has one weight scale) in configs around the best ones, several programs per SM;
* ``ragged``: ``scaled_mm`` on a ragged N (2880) against the same GEMM with N padded to the next multiple of 128
  (M below 4 runs 4 rows, as the layer pads them);
* ``decode``: every Triton decode candidate on the ragged shapes, weights cold (a chain of copies in one graph).

Usage: python benchmarks/kernel_probe.py --out probe.csv [--parts ragged,prefill,decode,prefill_ws,prefill_scalar]
(On an H200 with Triton 3.6 the ``prefill`` part, then holding the warp-specialized variants too, did not finish
within 9 minutes and wrote nothing; which variant hung was not isolated. Run each part under ``timeout``: the CSV
is now rewritten after every row, and every variant is announced on stderr before it runs, so a run that is
killed keeps its rows and its last line names the variant that hung.)
"""
# ruff: noqa: B023  (every closure is timed within the loop iteration that made it)

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time

import torch
import triton
import triton.language as tl

from blockfp8.bench import timing
from blockfp8.bench.gemm import candidate_configs, precompile
from blockfp8.kernels.scaled_mm import blockwise_gemm, pad_weight_scale
from blockfp8.kernels.triton import gemm as tgemm
from blockfp8.kernels.triton._gemm_kernels import _epilogue, _tile_ids
from blockfp8.quant import reference as ref

PREFILL_NK = ((4096, 7168), (7168, 2048), (2112, 7168), (8192, 8192), (2880, 2880), (24576, 1536))
RAGGED_NK = ((2880, 2880), (5120, 2880))


@triton.jit(do_not_specialize=["M"])
def _ws_kernel(a_desc, b_desc, as_ptr, bs_ptr, out_ptr, M, N, K, stride_asm, stride_ask, stride_bsn, stride_bsk,
               stride_om, stride_on, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr):
    """One tile per program, the K loop warp-specialized (a TMA producer partition, MMA + promotion consumers)."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    rm = off_m + tl.arange(0, BLOCK_M)
    rn = off_n + tl.arange(0, BLOCK_N)
    as_ptrs = as_ptr + rm * stride_asm
    bs_ptrs = bs_ptr + (rn // SCALE_BN) * stride_bsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in tl.range(0, tl.cdiv(K, BLOCK_K), num_stages=NUM_STAGES, warp_specialize=True):
        k0 = kb * BLOCK_K
        a = a_desc.load([off_m, k0])
        b = b_desc.load([off_n, k0])
        sa = tl.load(as_ptrs + (k0 // SCALE_BK) * stride_ask, mask=rm < M, other=0.0)
        sb = tl.load(bs_ptrs + (k0 // SCALE_BK) * stride_bsk, mask=rn < N, other=0.0)
        acc += tl.dot(a, b.T) * (sa[:, None] * sb[None, :])
    _epilogue(acc, out_ptr, out_ptr, rm, rn, M, N, stride_om, stride_on, False)


def scalar_configs() -> list[dict]:
    """The shipped TMA kernel (one FMA per element where a tile has one weight scale) around the best configs
    of the first sweep: (tile, warps, stages, N_SPLIT, programs per SM (0: one per tile), register cap, GROUP_M)."""
    rows = ((64, 128, 4, 3, 1, 3, 168, 8), (64, 128, 4, 3, 1, 3, 160, 8), (64, 128, 4, 3, 1, 3, 168, 16),
            (64, 128, 4, 3, 1, 3, 168, 4), (64, 128, 4, 4, 1, 2, 0, 8), (64, 128, 4, 3, 1, 2, 0, 8),
            (64, 128, 4, 3, 1, 0, 168, 8), (64, 128, 4, 2, 1, 4, 128, 8), (64, 128, 4, 2, 1, 3, 168, 8),
            (128, 64, 4, 3, 1, 3, 168, 8), (128, 64, 4, 4, 1, 2, 0, 8), (64, 256, 4, 3, 2, 2, 0, 8),
            (64, 256, 4, 4, 2, 1, 0, 8), (128, 128, 8, 4, 1, 1, 0, 8), (128, 128, 4, 3, 2, 1, 0, 8),
            (64, 64, 4, 4, 1, 4, 128, 8))
    return [{"kernel": "tma", "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 128, "SPLIT_K": 1, "GROUP_M": gm,
             "num_warps": w, "num_stages": st, "N_SPLIT": sp, "persistent": occ > 0, "occupancy": max(occ, 1),
             "maxnreg": mr} for bm, bn, w, st, sp, occ, mr, gm in rows]


def ws_gemm(a, a_s, w, w_s, cfg):
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = a.shape
    n = w.shape[0]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    out = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _ws_kernel[grid](TensorDescriptor.from_tensor(a, [bm, 128]), TensorDescriptor.from_tensor(w, [bn, 128]),
                     a_s, w_s, out, m, n, k, a_s.stride(0), a_s.stride(1), w_s.stride(0), w_s.stride(1),
                     out.stride(0), out.stride(1), SCALE_BN=128, SCALE_BK=128, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128,
                     GROUP_M=8, NUM_STAGES=cfg["num_stages"], num_warps=cfg["num_warps"])
    return out


def extra_prefill_configs() -> list[dict]:
    """Occupancy-oriented TMA configs the tuner does not try: small register tiles, two or three programs per SM,
    so one program's promotion overlaps another's MMAs."""
    tma = {"kernel": "tma", "BLOCK_K": 128, "SPLIT_K": 1, "GROUP_M": 8}
    cfgs = []
    for bm, bn, w, stages in ((128, 64, 4, (3, 4, 5)), (64, 128, 4, (4, 5)), (128, 128, 4, (3, 4)),
                              (64, 256, 4, (3,)), (128, 256, 8, (3,)), (256, 128, 8, (3,))):
        for st in stages:
            for persistent in (False, True):
                cfgs.append({**tma, "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": st,
                             "persistent": persistent})
    return cfgs


def operands(m, n, k, device="cuda"):
    w = torch.randn(n, k, device=device) * 0.05
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    w_q, w_s = ref.quantize_weight(w, (128, 128))
    x_q, x_s = ref.quantize_act(x, 128)
    return x, x_q, x_s.contiguous(), w_q.contiguous(), w_s.float().contiguous()


def graph_us(fn, reps=20):
    return timing.wall_us(timing.cuda_graphed(fn), reps)


def check(out, ref_out, name):
    err = ((out.float() - ref_out.float()).abs().max() / ref_out.float().abs().max().clamp_min(1e-6)).item()
    if not err < 2e-2:
        raise AssertionError(f"{name}: max rel err {err}")


class Rows(list):
    """The probe's rows, written to ``path`` whole after every row, so that a killed run keeps what it measured."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.t0 = time.perf_counter()

    def append(self, row: dict) -> None:
        super().append(row)
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self[0]))
            w.writeheader()
            w.writerows(self)

    def trying(self, what: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {what}", file=sys.stderr, flush=True)


def part_prefill(rows, env, ws: bool = False, scalar: bool = False):
    if scalar:
        cfgs = scalar_configs()
    else:
        cfgs = [] if ws else [c for c in candidate_configs(4096) if c["kernel"] == "tma"] + extra_prefill_configs()
    rows.trying(f"prefill: compiling {len(cfgs)} configs")
    status = precompile(cfgs) if cfgs else {}
    cfgs = [c for c in cfgs if status[json.dumps(c, sort_keys=True)] == "ok"]
    for n, k in PREFILL_NK:
        for m in (512, 4096):
            x, x_q, x_s, w_q, w_s = operands(m, n, k)
            kp = math.ceil(k / 128) * 128
            w_pad = torch.nn.functional.pad(w_q.view(torch.uint8), (0, kp - k)).view(w_q.dtype).contiguous()
            x_pad = torch.nn.functional.pad(x_q.view(torch.uint8), (0, kp - k)).view(x_q.dtype)
            xs_mn = x_s.t().contiguous().t()
            ws_p = pad_weight_scale(w_s)
            expect = blockwise_gemm(x_pad, xs_mn, w_pad, ws_p)
            base = graph_us(lambda: blockwise_gemm(x_pad, xs_mn, w_pad, ws_p))
            flops = 2 * m * n * k
            rows.append({**env, "part": "prefill", "m": m, "n": n, "k": k, "variant": "scaled_mm", "config": "",
                         "us": base, "tflops": flops / base / 1e6, "vs_scaled_mm": 1.0})
            variants = [("triton", c, lambda c=c: tgemm.fp8_block_gemm(x_q, xs_mn, w_q, w_s, config=c))
                        for c in cfgs]
            for bm, bn, w, st in ((128, 128, 8, 3), (128, 128, 8, 4), (128, 256, 8, 3), (128, 128, 4, 4),
                                  (64, 128, 4, 4)) if ws else ():
                c = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": st}
                variants.append(("triton_ws", c, lambda c=c: ws_gemm(x_q, xs_mn, w_q, w_s, c)))
            for name, c, fn in variants:
                rows.trying(f"prefill M={m} {n}x{k} {name} {c}")
                try:
                    check(fn(), expect, f"{name} {c}")
                    us = graph_us(fn)
                except Exception as exc:  # noqa: BLE001
                    print(f"{name} {c}: {type(exc).__name__}: {str(exc)[:160]}", file=sys.stderr)
                    continue
                rows.append({**env, "part": "prefill", "m": m, "n": n, "k": k, "variant": name, "config": c,
                             "us": us, "tflops": flops / us / 1e6, "vs_scaled_mm": base / us})


def part_ragged(rows, env):
    for n, k in RAGGED_NK:
        for m in (1, 64, 512, 4096):
            for n_run in (n, math.ceil(n / 128) * 128):
                kp = math.ceil(k / 128) * 128
                x, x_q, x_s, w_q, w_s = operands(max(m, 4), n_run, kp)
                xs_mn = x_s.t().contiguous().t()
                ws_p = pad_weight_scale(w_s)
                us = graph_us(lambda: blockwise_gemm(x_q, xs_mn, w_q, ws_p), reps=50)
                rows.append({**env, "part": "ragged", "m": m, "n": n_run, "k": kp, "variant": "scaled_mm",
                             "config": f"layer N={n}", "us": us, "tflops": 2 * m * n * k / us / 1e6,
                             "vs_scaled_mm": ""})
            wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            us = graph_us(lambda: torch.nn.functional.linear(xb, wb), reps=50)
            rows.append({**env, "part": "ragged", "m": m, "n": n, "k": k, "variant": "bf16", "config": "",
                         "us": us, "tflops": 2 * m * n * k / us / 1e6, "vs_scaled_mm": ""})


def part_decode(rows, env):
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    for n, k in RAGGED_NK:
        copies = max(4, min(64, math.ceil(4 * l2 / (n * k))))
        for m in (1, 16, 64, 128):
            cfgs = candidate_configs(m)
            precompile(cfgs)
            x, x_q, x_s, w_q, w_s = operands(m, n, k)
            ws = [(w_q.clone(), w_s.clone()) for _ in range(copies)]
            expect = ref.gemm_reference(x_q, x_s, w_q, w_s, (128, 128), torch.bfloat16)
            for c in cfgs + [None]:
                rows.trying(f"decode M={m} {n}x{k} {c}")

                def chain(c=c):
                    for wq, wsc in ws:
                        tgemm.fp8_block_gemm(x_q, x_s, wq, wsc, config=c)
                try:
                    if expect is not None:
                        check(tgemm.fp8_block_gemm(x_q, x_s, w_q, w_s, config=c), expect, str(c))
                    us = graph_us(chain) / copies
                except Exception as exc:  # noqa: BLE001
                    print(f"decode {c}: {type(exc).__name__}: {str(exc)[:160]}", file=sys.stderr)
                    continue
                rows.append({**env, "part": "decode", "m": m, "n": n, "k": k, "variant": "triton",
                             "config": c if c else "default_config", "us": us,
                             "tflops": 2 * m * n * k / us / 1e6, "vs_scaled_mm": ""})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--parts", default="ragged,prefill,decode")
    args = p.parse_args()
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    rows = Rows(args.out)
    parts = {"prefill": part_prefill, "prefill_ws": lambda r, e: part_prefill(r, e, ws=True),
             "prefill_scalar": lambda r, e: part_prefill(r, e, scalar=True),
             "ragged": part_ragged, "decode": part_decode}
    for part in args.parts.split(","):
        rows.trying(f"part {part}")
        parts[part](rows, env)
    best: dict = {}
    for r in rows:
        key = (r["part"], r["m"], r["n"], r["k"], r["variant"])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    for key, r in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3], kv[0][1], kv[0][4])):
        print(f"{key[0]:8s} M={key[1]:5d} {key[2]}x{key[3]:<6d} {key[4]:10s} {r['us']:9.2f} us "
              f"{r['tflops']:7.1f} TF  x{r['vs_scaled_mm'] if r['vs_scaled_mm'] == '' else round(r['vs_scaled_mm'], 3)}"
              f"  {r['config']}")


if __name__ == "__main__":
    main()
