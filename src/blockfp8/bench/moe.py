"""`blockfp8 bench moe`: a whole MoE block's experts, blockfp8's grouped kernels against bf16, from 1 to 16384
tokens, on Qwen3-30B-A3B shapes (128 experts, top-8, hidden 2048, expert intermediate 768) and DeepSeek-V3 shapes
(256 experts, top-8, hidden 7168, expert intermediate 2048).

Variants: ``bf16`` is a grouped MoE on ``torch._grouped_mm`` (``bench.decoders.Bf16GroupedMoE``); ``triton`` is
``BlockFP8Experts`` on Triton's fused MoE; ``deepgemm`` on DeepGEMM's grouped kernels (masked up to
``masked_max_tokens`` tokens, contiguous above), where DeepGEMM is installed and passes its smoke GEMM;
``auto`` is the layer the policy builds with no setting (with its per-token dispatch between grouped backends);
``deepgemm_masked`` / ``deepgemm_contiguous`` force one DeepGEMM kernel at every token count (what the switch
point was measured with). Every variant shares one set of quantized weights. Each runs eager (wall time per call,
host overhead included) and replayed from a CUDA graph (the whole block captured once: routing, quantization and
both grouped GEMMs). Every FP8 output is checked against ``quant.reference.moe_reference`` first.
"""

from __future__ import annotations

import copy
import math

import torch

from blockfp8.bench import decoders, results, shapes

MODES = ("eager", "graph")
MODELS = {"qwen3-30b-a3b": shapes.QWEN3_30B_A3B_MOE, "deepseek-v3": shapes.DEEPSEEK_V3_MOE}
VARIANTS = ("bf16", "triton", "deepgemm", "auto")  # auto: the policy's choice with its per-token dispatch
FORCED = {"deepgemm_masked": 1 << 30, "deepgemm_contiguous": 0}  # masked_max_tokens forcing one DeepGEMM kernel
CHECK_MAX_TOKENS = 512  # the per-expert reference is slow beyond
MASKED_BENCH_MAX_TOKENS = 1024  # forced masked slabs are E x T rows: gigabytes beyond


def _fp8_variants(w13, w2, names, log) -> dict:
    from blockfp8.backends.select import BackendUnavailableError
    from blockfp8.config import BlockFP8Config
    from blockfp8.nn import BlockFP8Experts

    base = BlockFP8Experts.from_fused(w13, w2, process=False)  # quantized once, shared by every variant
    out = {}
    for name in names:
        if name == "bf16":
            continue
        backend = "deepgemm" if name.startswith("deepgemm") else name
        layer = copy.copy(base)
        layer.config = BlockFP8Config(moe_backend=backend)
        try:
            layer.process_weights_after_loading()
        except BackendUnavailableError as exc:
            log(f"moe {name}: skipped: {str(exc)[:300]}")
            continue
        if name in FORCED:
            layer.prepared_moe.extra = {**layer.prepared_moe.extra, "masked_max_tokens": FORCED[name]}
        out[name] = layer
    return out


def bench_moe(models=tuple(MODELS), tokens=shapes.MOE_TOKENS, variants=VARIANTS, modes=MODES, reps: int = 20,
              log=print) -> list[dict]:
    from blockfp8.bench import timing
    from blockfp8.kernels.deepgemm import version as dg_version
    from blockfp8.quant import reference as R
    from blockfp8.quant.metrics import calc_diff
    from blockfp8.testing.tolerances import E2E_CALC_DIFF

    env = results.environment()
    rows = []
    for model in models:
        cfg = MODELS[model]
        e, k, h, i = cfg["num_experts"], cfg["top_k"], cfg["hidden"], cfg["intermediate"]
        torch.manual_seed(0)
        w13 = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) * h ** -0.5
        w2 = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) * i ** -0.5
        layers = {"bf16": decoders.Bf16GroupedMoE(w13, w2)} if "bf16" in variants else {}
        layers.update(_fp8_variants(w13, w2, variants, log))
        kernels = {n: ("torch._grouped_mm" if n == "bf16" else l.decision.moe_kernel
                       + (f"; dispatch {_plan(l.decision)}" if l.decision.dispatch else ""))
                   for n, l in layers.items()}
        kernels.update({n: f"{v}; deep_gemm {dg_version()}" for n, v in kernels.items() if n.startswith("deepgemm")})
        for t in tokens:
            x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
            tw, ids = decoders.route(torch.randn(t, e, device="cuda"), k)
            us: dict[tuple[str, str], float] = {}
            with torch.inference_mode():
                for name, layer in layers.items():
                    if name == "deepgemm_masked" and t > MASKED_BENCH_MAX_TOKENS:
                        continue
                    if name != "bf16" and t <= CHECK_MAX_TOKENS:
                        p = layer.prepared_moe
                        s13, s2 = _block_scales(p)
                        ref = R.moe_reference(x, p.w13, s13, p.w2, s2, tw, ids, p.block_size)
                        d = calc_diff(layer(x, ids, tw).double(), ref.double())
                        if not d < E2E_CALC_DIFF:
                            raise AssertionError(f"moe {model} {name} T={t}: calc_diff={d} vs moe_reference")
                    for mode in modes:
                        def fn(layer=layer, x=x, ids=ids, tw=tw):
                            return layer(x, ids, tw)

                        try:
                            us[name, mode] = timing.wall_us(fn if mode == "eager" else timing.cuda_graphed(fn), reps)
                        except Exception as exc:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
                            log(f"moe {model} {name} {mode} T={t}: {type(exc).__name__}: {str(exc)[:200]}")
                            us[name, mode] = float("nan")
            flops = 2 * t * k * 3 * i * h
            for (name, mode), v in us.items():
                base = us.get(("bf16", mode), math.nan)
                triton = us.get(("triton", mode), math.nan)
                rows.append({"bench": "moe", "m": t, "n": f"{model}:E{e}xI{i}", "k": h, "variant": f"{name}_{mode}",
                             "us": v, "tflops": flops / v / 1e6, "speedup_vs_bf16": base / v,
                             "speedup_vs_scaled_mm": math.nan,
                             "extra": f"top{k}; {kernels[name]}; vs triton {triton / v:.3f}x", **env})
            log(f"[{model} tokens={t}] " + "  ".join(f"{n}_{m}={v:.0f}us" for (n, m), v in us.items()))
        del layers, w13, w2
        torch.cuda.empty_cache()
    return rows


def _plan(decision) -> str:
    return " ".join(f"<={m}:{b}" for m, b in decision.dispatch)


def _block_scales(p):
    """The prepared weights' scales as float32 blocks (SM100 packs them per row)."""
    if p.w13_scale.dtype != torch.int32:
        return p.w13_scale, p.w2_scale
    from blockfp8.quant.layouts import unpack_ue8m0_per_row
    from blockfp8.quant.reference import cdiv

    return (unpack_ue8m0_per_row(p.w13_scale, cdiv(p.w13.shape[2], 128)),
            unpack_ue8m0_per_row(p.w2_scale, cdiv(p.w2.shape[2], 128)))


def summarize(rows: list[dict]) -> list[str]:
    """One line per model and FP8 variant: its speedup over bf16 (and over Triton) at each token count."""
    lines = []
    for model in dict.fromkeys(r["n"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["n"] == model):
            if variant.startswith("bf16"):
                continue
            mine = [r for r in rows if r["n"] == model and r["variant"] == variant]
            lines.append(f"{model} {variant}: vs bf16 " + ", ".join(f"T={r['m']} {r['speedup_vs_bf16']:.2f}x"
                                                                  for r in mine))
    return lines
