"""`blockfp8 bench layer`: a whole ``BlockFP8Linear`` call (activation quantization included) per backend against
bf16 ``F.linear``, over the DeepSeek-V3 grid or any ``N x K`` list, in CUDA graphs (how serving engines run it).

Modes (``--modes``):

* ``chain`` (default): the layer as it runs inside a model's CUDA graph. One graph calls ``copies`` distinct
  copies of the layer (weights on separate memory, together at least 4x the L2 cache, so every call reads its
  weight from HBM as a model's next layer does) on the same input; the time is the replay's wall time divided by
  ``copies``: the graph launch is paid once per replay, as once per model forward in serving.
* ``graph``: one layer per graph, each replay timed on its own: the graph launch is part of every call, and the
  weight of a small layer stays in L2 between replays (what one isolated call costs; on an H200 most cells came
  within 10% of ``chain``, docs/kernels.md).
* ``eager``: plain calls in a loop, host overhead included.

The variants of a cell take turns: five rounds of ``reps / 5`` calls each, each round starting one variant later,
and the median round is reported, so no variant always runs right after the others.

Variants share one FP8 weight: ``scaled_mm`` / ``triton`` / ``deepgemm`` are layers forced to that backend (a
backend that cannot run here or cannot implement the shape is reported and skipped), ``auto`` is the layer the
policy builds with no setting (its per-M choice is in ``extra``). Every FP8 output is checked against
``quant.reference`` first. Speedups are against ``scaled_mm`` (torch's blockwise cuBLASLt path) and bf16.
"""

from __future__ import annotations

import math
import statistics

import torch

from blockfp8.bench import results, shapes

MODES = ("chain",)
ALL_MODES = ("chain", "graph", "eager")
VARIANTS = ("bf16", "scaled_mm", "cute", "triton", "deepgemm", "auto")
TABLE_COLS = ("m", "n", "k", "variant", "us", "speedup_vs_scaled_mm", "speedup_vs_bf16", "extra")
MIN_COPIES, MAX_COPIES = 4, 64


def chain_copies(n: int, k: int, l2_bytes: int) -> int:
    """Copies of an N x K layer for the ``chain`` mode: FP8 weights of all copies at least 4x the L2 cache."""
    return max(MIN_COPIES, min(MAX_COPIES, math.ceil(4 * l2_bytes / max(1, n * k))))


def _layers(w_q, w_s, variants, copies, log) -> dict[str, list]:
    """Per FP8 variant, ``copies`` layers on separate copies of the weight (the first is the one checked)."""
    from blockfp8.backends.select import BackendUnavailableError
    from blockfp8.config import BlockFP8Config
    from blockfp8.nn import BlockFP8Linear

    out = {}
    for name in variants:
        if name == "bf16":
            continue
        config = BlockFP8Config(linear_backend=name)
        try:
            out[name] = [BlockFP8Linear.from_fp8(w_q.clone(), w_s.clone(), config=config) for _ in range(copies)]
        except (BackendUnavailableError, ValueError) as exc:
            log(f"layer N={w_q.shape[0]} K={w_q.shape[1]} {name}: skipped: {str(exc).splitlines()[0][:200]}")
    return out


ROUNDS = 5


def _replay(mode: str, calls: list) -> tuple:
    """What one timed call runs in ``mode`` and how many layer calls it makes (``calls``: the layer's copies, each a
    no-argument callable)."""
    from blockfp8.bench import timing

    if mode == "eager":
        return calls[0], 1
    if mode == "graph":
        return timing.cuda_graphed(calls[0]), 1

    def chain():
        for call in calls:
            call()

    return timing.cuda_graphed(chain), len(calls)


def _interleaved(replays: dict, reps: int, log=print, where: str = "") -> dict:
    """Microseconds per layer call of each variant: the median of ``ROUNDS`` rounds of ``reps / ROUNDS`` calls, the
    variants taking turns and each round starting one variant later. Timed one after another, a variant's time
    depended on its place in the order: on an H200 the same kernel measured up to 10.5 % slower when timed after
    the others (``auto`` running ``scaled_mm`` against ``scaled_mm``, docs/kernels.md; the cause was not
    measured). A variant whose call raises is reported through ``log`` and left out (NaN)."""
    from blockfp8.bench import timing

    names = list(replays)
    times: dict = {name: [] for name in names}
    failed: set = set()
    per_round = max(1, reps // ROUNDS)
    for r in range(ROUNDS):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            if name in failed:
                continue
            fn, layer_calls = replays[name]
            try:
                times[name].append(timing.wall_us(fn, per_round, warmup=1) / layer_calls)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                log(f"layer {name} {where}: {type(exc).__name__}: {str(exc)[:160]}")
                failed.add(name)
    return {name: math.nan if name in failed else statistics.median(t) for name, t in times.items()}


def bench_layer(cells, variants=VARIANTS, modes=MODES, reps: int = 50, log=print) -> list[dict]:
    from blockfp8.bench.timing import copy_gbps
    from blockfp8.kernels.deepgemm import version as dg_version
    from blockfp8.quant import reference as R
    from blockfp8.testing.tolerances import gemm_atol

    bad = [m for m in modes if m not in ALL_MODES]
    if bad:
        raise ValueError(f"bench layer: mode(s) {', '.join(bad)} not valid; valid modes: {', '.join(ALL_MODES)}")

    env = results.environment()
    rows = [{"bench": "copy", "m": 0, "n": 0, "k": 0, "variant": "device_copy", "us": math.nan, "tflops": math.nan,
             "gbps": copy_gbps(), "speedup_vs_scaled_mm": math.nan, "speedup_vs_bf16": math.nan,
             "extra": "torch copy_ of 1 GiB; GB/s counts bytes read plus written", **env}]
    log(f"device copy bandwidth: {rows[0]['gbps']:.0f} GB/s")
    l2 = int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 50 * 2**20))
    by_nk: dict[tuple[int, int], list[int]] = {}
    for m, n, k in cells:
        by_nk.setdefault((n, k), []).append(m)
    for (n, k), ms in by_nk.items():
        torch.manual_seed(n * 31 + k)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
        w_q, w_s = R.quantize_weight(w, (128, 128))
        copies = chain_copies(n, k, l2) if "chain" in modes else 1
        layers = _layers(w_q, w_s, variants, copies, log)
        bf16_weights = [w] + [w.clone() for _ in range(copies - 1)] if "bf16" in variants else []
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            calls = {"bf16": [lambda x=x, w=wi: torch.nn.functional.linear(x, w) for wi in bf16_weights]} \
                if bf16_weights else {}
            extra = {}
            with torch.inference_mode():
                for name, copies_of in layers.items():
                    layer = copies_of[0]
                    d = layer.decision
                    ref_w = ((R.requant_to_ue8m0(w_q, w_s, (128, 128))) if d.requant_weight_ue8m0 else (w_q, w_s))
                    x_q, x_s = R.quantize_act(x, 128, str(d.act_scale_fmt))
                    ref = R.gemm_reference(x_q, x_s, *ref_w, (128, 128), torch.float32)
                    err = (layer(x).float() - ref).abs().max().item()
                    if not err <= gemm_atol(ref, torch.bfloat16):
                        raise AssertionError(f"layer {name} M={m} N={n} K={k}: max error {err}")
                    calls[name] = [lambda c=c, x=x: c(x) for c in copies_of]
                    ran = d.backend_for_m(m)
                    extra[name] = (f"runs {ran}" if name == "auto" else "") + \
                        (f"; deep_gemm {dg_version()}" if str(ran) == "deepgemm" else "")
                for mode in modes:
                    replays = {}
                    for name, fns in calls.items():
                        try:
                            replays[name] = _replay(mode, fns)
                        except Exception as exc:  # noqa: BLE001 - reported, not fatal
                            log(f"layer {name} {mode} M={m} N={n} K={k}: {type(exc).__name__}: {str(exc)[:160]}")
                    timed = _interleaved(replays, reps, log, where=f"{mode} M={m} N={n} K={k}")
                    us = {name: timed.get(name, math.nan) for name in calls}
                    for name, v in us.items():
                        note = "; ".join(p for p in (extra.get(name, ""),
                                                     f"{len(calls[name])} copies" if mode == "chain" else "") if p)
                        rows.append({"bench": "layer", "m": m, "n": n, "k": k, "variant": f"{name}_{mode}", "us": v,
                                     "tflops": shapes.gemm_flops(m, n, k) / v / 1e6,
                                     "gbps": shapes.gemm_bytes(m, n, k) / v / 1e3,
                                     "speedup_vs_scaled_mm": us.get("scaled_mm", math.nan) / v,
                                     "speedup_vs_bf16": us.get("bf16", math.nan) / v, "extra": note,
                                     **env})
                    log(f"[N={n} K={k} M={m} {mode}] " + "  ".join(f"{a}={b:.1f}us" for a, b in us.items()))
        del layers, w, w_q, w_s, bf16_weights
    return rows


def _geomean(values) -> float | None:
    """Geometric mean, None for no cells (the summary is written as JSON)."""
    values = list(values)
    return results.geomean(values) if values else None


def summarize(rows: list[dict]) -> dict:
    """Per FP8 variant and mode: geomean speedup over scaled_mm (all cells, decode M <= 64, M >= 512), worst cell."""
    out = {}
    copy = [r["gbps"] for r in rows if r["bench"] == "copy"]
    rows = [r for r in rows if r["bench"] == "layer"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        if variant.startswith(("bf16", "scaled_mm")):
            continue
        sp = [(r["m"], r["speedup_vs_scaled_mm"]) for r in rows if r["variant"] == variant
              and not math.isnan(r["speedup_vs_scaled_mm"])]
        if not sp:
            continue
        out[variant] = {"geomean": _geomean(s for _, s in sp),
                        "decode_geomean": _geomean(s for m, s in sp if m <= shapes.DECODE_MAX_M),
                        "m4096_geomean": _geomean(s for m, s in sp if m >= 4096),
                        "prefill_geomean": _geomean(s for m, s in sp if m >= 512),
                        "min": min(s for _, s in sp), "cells": len(sp)}
        if copy:  # decode at K >= 7168: the weight's bytes per second against the device's copy bandwidth
            stream = [r["n"] * r["k"] / r["us"] / 1e3 / copy[0] for r in rows if r["variant"] == variant
                      and r["m"] <= shapes.DECODE_MAX_M and r["k"] >= 7168 and not math.isnan(r["us"])]
            if stream:
                out[variant]["decode_weight_stream_of_copy_bw"] = {"min": min(stream),
                                                                   "geomean": _geomean(stream)}
    return out
