"""`blockfp8 bench layer`: a whole ``BlockFP8Linear`` call (activation quantization included) per backend against
bf16 ``F.linear``, over the DeepSeek-V3 grid or any ``N x K`` list, replayed from a CUDA graph (how serving engines
run it; ``--modes eager`` adds the eager call with its host overhead).

Variants share one FP8 weight: ``scaled_mm`` / ``triton`` / ``deepgemm`` are layers forced to that backend (a
backend that cannot run here or cannot implement the shape is reported and skipped), ``auto`` is the layer the
policy builds with no setting (its per-M choice is in ``extra``). Every FP8 output is checked against
``quant.reference`` first. Speedups are against ``scaled_mm`` (torch's blockwise cuBLASLt path) and bf16.
"""

from __future__ import annotations

import math

import torch

from blockfp8.bench import results, shapes

MODES = ("graph",)
VARIANTS = ("bf16", "scaled_mm", "triton", "deepgemm", "auto")
TABLE_COLS = ("m", "n", "k", "variant", "us", "speedup_vs_scaled_mm", "speedup_vs_bf16", "extra")


def _layers(w_q, w_s, variants, log) -> dict:
    from blockfp8.backends.select import BackendUnavailableError
    from blockfp8.config import BlockFP8Config
    from blockfp8.nn import BlockFP8Linear

    out = {}
    for name in variants:
        if name == "bf16":
            continue
        config = BlockFP8Config(linear_backend=name)
        try:
            out[name] = BlockFP8Linear.from_fp8(w_q, w_s, config=config)
        except (BackendUnavailableError, ValueError) as exc:
            log(f"layer N={w_q.shape[0]} K={w_q.shape[1]} {name}: skipped: {str(exc).splitlines()[0][:200]}")
    return out


def bench_layer(cells, variants=VARIANTS, modes=MODES, reps: int = 50, log=print) -> list[dict]:
    from blockfp8.bench import timing
    from blockfp8.kernels.deepgemm import version as dg_version
    from blockfp8.quant import reference as R
    from blockfp8.testing.tolerances import gemm_atol

    env = results.environment()
    rows = []
    by_nk: dict[tuple[int, int], list[int]] = {}
    for m, n, k in cells:
        by_nk.setdefault((n, k), []).append(m)
    for (n, k), ms in by_nk.items():
        torch.manual_seed(n * 31 + k)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
        w_q, w_s = R.quantize_weight(w, (128, 128))
        layers = _layers(w_q, w_s, variants, log)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            fns = {"bf16": lambda x=x, w=w: torch.nn.functional.linear(x, w)} if "bf16" in variants else {}
            extra = {}
            with torch.inference_mode():
                for name, layer in layers.items():
                    d = layer.decision
                    ref_w = ((R.requant_to_ue8m0(w_q, w_s, (128, 128))) if d.requant_weight_ue8m0 else (w_q, w_s))
                    x_q, x_s = R.quantize_act(x, 128, str(d.act_scale_fmt))
                    ref = R.gemm_reference(x_q, x_s, *ref_w, (128, 128), torch.float32)
                    err = (layer(x).float() - ref).abs().max().item()
                    if not err <= gemm_atol(ref, torch.bfloat16):
                        raise AssertionError(f"layer {name} M={m} N={n} K={k}: max error {err}")
                    fns[name] = lambda layer=layer, x=x: layer(x)
                    ran = d.backend_for_m(m)
                    extra[name] = (f"runs {ran}" if name == "auto" else "") + \
                        (f"; deep_gemm {dg_version()}" if str(ran) == "deepgemm" else "")
                for mode in modes:
                    us = {}
                    for name, fn in fns.items():
                        try:
                            us[name] = timing.wall_us(fn if mode == "eager" else timing.cuda_graphed(fn), reps)
                        except Exception as exc:  # noqa: BLE001 - reported, not fatal
                            log(f"layer {name} {mode} M={m} N={n} K={k}: {type(exc).__name__}: {str(exc)[:160]}")
                            us[name] = math.nan
                    for name, v in us.items():
                        rows.append({"bench": "layer", "m": m, "n": n, "k": k, "variant": f"{name}_{mode}", "us": v,
                                     "tflops": shapes.gemm_flops(m, n, k) / v / 1e6,
                                     "gbps": shapes.gemm_bytes(m, n, k) / v / 1e3,
                                     "speedup_vs_scaled_mm": us.get("scaled_mm", math.nan) / v,
                                     "speedup_vs_bf16": us.get("bf16", math.nan) / v, "extra": extra.get(name, ""),
                                     **env})
                    log(f"[N={n} K={k} M={m} {mode}] " + "  ".join(f"{a}={b:.1f}us" for a, b in us.items()))
        del layers, w, w_q, w_s
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per FP8 variant and mode: geomean speedup over scaled_mm (all cells, decode M <= 64, M >= 512), worst cell."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        if variant.startswith(("bf16", "scaled_mm")):
            continue
        sp = [(r["m"], r["speedup_vs_scaled_mm"]) for r in rows if r["variant"] == variant
              and not math.isnan(r["speedup_vs_scaled_mm"])]
        if not sp:
            continue
        out[variant] = {"geomean": results.geomean(s for _, s in sp),
                        "decode_geomean": results.geomean(s for m, s in sp if m <= shapes.DECODE_MAX_M),
                        "m4096_geomean": results.geomean(s for m, s in sp if m >= 4096),
                        "prefill_geomean": results.geomean(s for m, s in sp if m >= 512),
                        "min": min(s for _, s in sp), "cells": len(sp)}
    return out
