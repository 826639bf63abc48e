"""`blockfp8 bench moe`: a whole MoE block's experts, blockfp8 against bf16, on Qwen3-30B-A3B shapes (128 experts,
top-8, hidden 2048, expert intermediate 768), from 1 to 16384 tokens.

``blockfp8`` is the library's ``BlockFP8Experts`` with the backend the policy picks (without DeepGEMM: Triton's
fused MoE, routing aligned on the device); ``bf16`` is a grouped MoE on ``torch._grouped_mm``
(``bench.decoders.Bf16GroupedMoE``). Each runs eager (wall time per call, host overhead included) and replayed from
a CUDA graph (the whole block captured once: routing, alignment, quantization and both grouped GEMMs). The FP8
output is checked against ``quant.reference.moe_reference`` on the same prepared weights first.
"""

from __future__ import annotations

import torch

from blockfp8.bench import decoders, results, shapes, timing

MODES = ("eager", "graph")


def bench_moe(tokens=shapes.MOE_TOKENS, reps: int = 20, log=print) -> list[dict]:
    from blockfp8.config import BlockFP8Config
    from blockfp8.nn import BlockFP8Experts
    from blockfp8.quant import reference as R
    from blockfp8.quant.metrics import calc_diff

    cfg = shapes.QWEN3_30B_A3B_MOE
    e, k, h, i = cfg["num_experts"], cfg["top_k"], cfg["hidden"], cfg["intermediate"]
    env = results.environment()
    torch.manual_seed(0)
    w13 = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) * h ** -0.5
    w2 = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) * i ** -0.5
    variants = {"bf16": decoders.Bf16GroupedMoE(w13, w2),
                "blockfp8": BlockFP8Experts.from_fused(w13, w2, config=BlockFP8Config(use_deep_gemm=False))}
    fp8 = variants["blockfp8"]
    kernel = f"{fp8.decision.backend}{' grouped' if fp8.prepared_moe is not None else ' per-expert loop'}"
    rows = []
    for t in tokens:
        x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
        tw, ids = decoders.route(torch.randn(t, e, device="cuda"), k)
        with torch.inference_mode():
            if fp8.prepared_moe is not None and t <= 4096:  # the per-expert reference is slow at large T
                p = fp8.prepared_moe
                ref = R.moe_reference(x, p.w13, p.w13_scale, p.w2, p.w2_scale, tw, ids, p.block_size)
                d = calc_diff(fp8(x, ids, tw).double(), ref.double())
                if not d < 1e-3:
                    raise AssertionError(f"moe blockfp8 T={t}: calc_diff={d} vs quant.reference.moe_reference")
            us: dict[tuple[str, str], float] = {}
            for name, layer in variants.items():
                for mode in MODES:
                    def fn(layer=layer, x=x, ids=ids, tw=tw):
                        return layer(x, ids, tw)

                    try:
                        us[name, mode] = timing.wall_us(fn if mode == "eager" else timing.cuda_graphed(fn), reps)
                    except Exception as exc:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
                        log(f"moe {name} {mode} T={t}: {type(exc).__name__}: {str(exc)[:200]}")
                        us[name, mode] = float("nan")
        flops = 2 * t * k * (2 * i * h + h * i)
        for (name, mode), v in us.items():
            rows.append({"bench": "moe", "m": t, "n": f"E{e}xI{i}", "k": h, "variant": f"{name}_{mode}", "us": v,
                         "tflops": flops / v / 1e6, "speedup_vs_bf16": us["bf16", mode] / v,
                         "extra": f"top{k}; {kernel}" if name == "blockfp8" else f"top{k}; torch._grouped_mm",
                         **env})
        log("  ".join(f"{n}_{m}={v:.0f}us" for (n, m), v in us.items()) + f"  [tokens={t}]")
    return rows
