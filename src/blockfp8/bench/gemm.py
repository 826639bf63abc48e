"""`blockfp8 bench gemm` and the sweep behind `blockfp8 tune`."""

from __future__ import annotations

import math

import torch

from blockfp8.bench import results, shapes, timing
from blockfp8.bench.peers import GemmCase

GEMM_VARIANTS = ("bf16", "fp8_tensor", "scaled_mm", "triton", "auto")
TABLE_COLS = ("m", "n", "k", "variant", "us", "tflops", "gbps", "speedup_vs_scaled_mm", "speedup_vs_bf16")


def rows_for_shape(m, n, k, times: dict[str, list[float]], env: dict, extra: dict | None = None) -> list[dict]:
    med = {v: timing.median(t) for v, t in times.items()}
    rows = []
    for v, us in med.items():
        ok = not math.isnan(us)
        rows.append({
            "bench": "gemm", "m": m, "n": n, "k": k, "variant": v, "us": us,
            "tflops": shapes.gemm_flops(m, n, k) / us / 1e6 if ok else float("nan"),
            "gbps": shapes.gemm_bytes(m, n, k) / us / 1e3 if ok else float("nan"),
            "speedup_vs_scaled_mm": med.get("scaled_mm", float("nan")) / us if ok else float("nan"),
            "speedup_vs_bf16": med.get("bf16", float("nan")) / us if ok else float("nan"),
            "extra": (extra or {}).get(v, ""), **env,
        })
    return rows


def bench_gemm(cells, variants=GEMM_VARIANTS, reps: int = 50, scale_fmt: str = "float32", check: bool = True,
               log=print) -> list[dict]:
    from blockfp8.testing.tolerances import gemm_atol

    env = results.environment()
    flush = timing.L2Flusher()
    rows = []
    for m, n, k in cells:
        case = GemmCase(m, n, k, scale_fmt)
        fns = case.variants(variants)
        extra = {"triton": "cfg=" + ("tuned" if case.triton_config() else "default"),
                 "auto": "pick=" + case.auto_pick(),
                 "fp8_tensor": f"M padded to {case.x_q16.shape[0]}" if case.x_q16.shape[0] != m else ""}
        if check:  # every variant that computes the block-FP8 product is checked on these inputs
            ref = case.reference()
            for v in ("scaled_mm", "cute", "triton", "auto"):
                if v in fns:
                    try:
                        out = fns[v]()[:m].float()
                    except Exception as exc:  # noqa: BLE001
                        extra[v] = f"error: {type(exc).__name__}: {str(exc)[:80]}"
                        fns.pop(v)
                        continue
                    err = (out - ref).abs().max().item()
                    if not err <= gemm_atol(ref, torch.bfloat16):
                        raise AssertionError(f"variant={v} M={m} N={n} K={k} diff={err} atol="
                                             f"{gemm_atol(ref, torch.bfloat16)}")
        times = timing.time_kernels(fns, reps=reps, flush=flush)
        new = rows_for_shape(m, n, k, times, env, extra)
        rows += new
        log("  ".join(f"{r['variant']}={r['us']:.1f}us" for r in new) + f"   [M={m} N={n} K={k}]")
    return rows


def summarize(rows: list[dict]) -> dict:
    """Geometric means of speed vs blockwise scaled_mm, overall and for decode (M <= 64), per variant."""
    out = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == v]
        sp = [float(r["speedup_vs_scaled_mm"]) for r in sel if r["speedup_vs_scaled_mm"] not in ("", None)]
        dec = [float(r["speedup_vs_scaled_mm"]) for r in sel if int(r["m"]) <= shapes.DECODE_MAX_M
               and r["speedup_vs_scaled_mm"] not in ("", None)]
        big = [float(r["speedup_vs_scaled_mm"]) for r in sel if int(r["m"]) >= 4096
               and r["speedup_vs_scaled_mm"] not in ("", None)]
        out[v] = {"geomean": results.geomean(sp), "decode_geomean": results.geomean(dec),
                  "m4096_geomean": results.geomean(big), "min": min(sp) if sp else float("nan"), "cells": len(sp)}
    return out


# --------------------------------------------------------------------------------------------- tuning


def candidate_configs(m: int) -> list[dict]:
    base = {"kernel": "ptr", "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4}
    cfgs = []
    if m <= 64:
        bms = (16,) if m <= 16 else ((32, 64) if m <= 32 else (64,))
        for bm in bms:
            for bn in (64, 128):
                for split in (1, 2, 4, 8, 16):
                    for st in (4, 6):
                        cfgs.append({**base, "BLOCK_M": bm, "BLOCK_N": bn, "SPLIT_K": split, "num_stages": st})
                cfgs.append({**base, "BLOCK_M": bm, "BLOCK_N": bn, "SPLIT_K": 32, "num_stages": 4})
            for split in (4, 8, 16):
                cfgs.append({**base, "BLOCK_M": bm, "BLOCK_N": 32, "SPLIT_K": split, "num_stages": 6})
        return cfgs
    if m <= 256:
        for bn in (64, 128):
            for split in (1, 2, 4):
                cfgs.append({**base, "BLOCK_M": 64, "BLOCK_N": bn, "SPLIT_K": split, "num_stages": 4})
    if m > 256:
        for bm, bn, st in ((128, 128, 3), (128, 128, 4), (128, 256, 3), (256, 128, 3)):
            cfgs.append({**base, "BLOCK_M": bm, "BLOCK_N": bn, "SPLIT_K": 1, "num_warps": 8, "num_stages": st})
    tma = {"kernel": "tma", "BLOCK_K": 128, "SPLIT_K": 1, "GROUP_M": 8}
    # (tile, warps, stages, programs per SM (0: one per tile), register cap, N_SPLIT): several small programs per
    # SM overlap one's promotion with another's MMAs (docs/kernels.md, "Prefill without DeepGEMM").
    rows = [(64, 128, 4, 3, 3, 168, 1), (64, 128, 4, 4, 2, 0, 1), (64, 128, 4, 4, 0, 0, 1), (128, 64, 4, 4, 2, 0, 1),
            (128, 64, 4, 3, 3, 168, 1), (128, 128, 8, 4, 1, 0, 1)]
    if m > 256:
        rows += [(64, 128, 4, 3, 0, 168, 1), (128, 256, 8, 3, 1, 0, 2)]
    for bm, bn, w, st, occ, cap, split in rows:
        cfgs.append({**tma, "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": st, "persistent": occ > 0,
                     "occupancy": max(occ, 1), "maxnreg": cap, "N_SPLIT": split})
    return cfgs


def _compile_one(cfg: dict) -> str:
    import torch

    from blockfp8.kernels.triton import gemm

    m, k = (128 if cfg["kernel"] == "tma" else 16), 2048  # K deep enough that SPLIT_K is not clamped
    x = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
    w = torch.randn(576, k, device="cuda").to(torch.float8_e4m3fn)
    xs = torch.ones(m, k // 128, device="cuda")
    ws = torch.ones(5, k // 128, device="cuda")
    try:
        gemm.fp8_block_gemm(x, xs, w, ws, (128, 128), torch.bfloat16, config=cfg)
        torch.cuda.synchronize()
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"[:200]


def precompile(cfgs: list[dict], workers: int = 12) -> dict[str, str]:
    """Compile configs in parallel processes into Triton's on-disk cache (one compile serves every shape:
    M is not specialized and the DeepSeek N, K are multiples of 16)."""
    import concurrent.futures
    import json
    import multiprocessing

    uniq = {json.dumps(c, sort_keys=True): c for c in cfgs}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        res = dict(zip(uniq, ex.map(_compile_one, uniq.values()), strict=True))
    return res


def tune(cells, reps: int = 20, log=print, scale_fmt: str = "float32") -> tuple[dict, dict, list[dict]]:
    """For each (M bucket, N, K): the fastest Triton config and the fastest backend (triton vs scaled_mm, and
    DeepGEMM's dense kernel and the CuTe DSL kernel where they are usable on this GPU and fit the shape).
    Returns (triton table for this GPU, dispatch table for this GPU, rows)."""
    from blockfp8.backends.deepgemm import DeepGemmBackend
    from blockfp8.backends.tuned import m_bucket
    from blockfp8.kernels import deepgemm
    from blockfp8.kernels.triton import gemm
    from blockfp8.platform import detect
    from blockfp8.testing.tolerances import gemm_atol

    flush = timing.L2Flusher()
    gemm_table: dict[str, dict] = {}
    dispatch_table: dict[str, dict] = {}
    rows = []
    env = results.environment()
    with_deepgemm = scale_fmt == "float32" and DeepGemmBackend().is_supported(detect())[0]
    for m, n, k in cells:
        case = GemmCase(m, n, k, scale_fmt)
        ref = case.reference()
        atol = gemm_atol(ref, torch.bfloat16)
        cfgs = candidate_configs(m)
        fns = {}
        for i, cfg in enumerate(cfgs):
            def fn(cfg=cfg, case=case):
                return gemm.fp8_block_gemm(case.x_q, case.x_s, case.w_q, case.w_s, (128, 128), torch.bfloat16,
                                           config=cfg)

            try:
                err = (fn().float() - ref).abs().max().item()
            except Exception as exc:  # noqa: BLE001
                log(f"  skip cfg {cfg}: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            if not err <= atol:
                raise AssertionError(f"triton cfg={cfg} M={m} N={n} K={k} diff={err} atol={atol}")
            fns[f"cfg{i}"] = fn
        fns["scaled_mm"] = case.variants(("scaled_mm",))["scaled_mm"]
        if with_deepgemm and n % deepgemm.N_ALIGN == 0 and k % deepgemm.K_ALIGN == 0:
            fns["deepgemm"] = case.variants(("deepgemm",))["deepgemm"]
        if "cute" in case.dense_candidates():
            fns["cute"] = case.variants(("cute",))["cute"]
            err = (fns["cute"]().float() - ref).abs().max().item()
            if not err <= atol:
                raise AssertionError(f"cute M={m} N={n} K={k} diff={err} atol={atol}")
        times = timing.time_kernels(fns, reps=reps, flush=flush)
        med = {name: timing.median(t) for name, t in times.items()}
        ranked = sorted((v, name) for name, v in med.items() if name.startswith("cfg") and not math.isnan(v))
        best = ranked[0]
        for v, name in ranked[:4]:
            log(f"    {v:8.1f}us {cfgs[int(name[3:])]}")
        cfg = cfgs[int(best[1][3:])]
        gemm_table.setdefault(f"{n},{k}", {})[str(m_bucket(m))] = cfg
        sm = med.get("scaled_mm", float("nan"))
        timed = {"triton": best[0], "scaled_mm": sm, **{b: med[b] for b in ("deepgemm", "cute") if b in med}}
        timed = {b: v for b, v in timed.items() if not math.isnan(v)}
        pick = min(timed, key=timed.get)
        dispatch_table.setdefault(f"{n},{k}", {})[str(m_bucket(m))] = {
            "backend": pick, "us": {b: round(v, 2) for b, v in timed.items()}}
        others = "".join(f"  {b} {timed[b]:.1f}us" for b in ("deepgemm", "cute") if b in timed)
        log(f"M={m} N={n} K={k}: best triton {best[0]:.1f}us {cfg}  scaled_mm {sm:.1f}us{others} -> {pick}")
        rows.append({"bench": "tune", "m": m, "n": n, "k": k, "variant": "triton_best", "us": best[0],
                     "extra": str(cfg), **env})
    return gemm_table, dispatch_table, rows
