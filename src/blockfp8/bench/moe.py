"""`blockfp8 bench moe`: the fused Triton block-FP8 MoE vs a per-expert loop of blockwise scaled_mm and a bf16
per-expert loop, on Qwen3-30B-A3B shapes (128 experts, top-8, hidden 2048, expert intermediate 768)."""

from __future__ import annotations

import torch

from blockfp8.bench import results, shapes, timing


def _loop(x, w13, w2, tw, ids, gemm, quant):
    """Per-expert loop: gather the expert's tokens, two GEMMs, scatter-add. One host sync for the routing."""
    t, h = x.shape
    i = w13[0][0].shape[0] // 2 if isinstance(w13, list) else w13.shape[1] // 2
    out = torch.zeros((t, h), dtype=torch.float32, device=x.device)
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=len(w13)).tolist()
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        pairs = order[start:start + c]
        start += c
        tok = pairs // ids.shape[1]
        inter = gemm(quant(x[tok]), w13[e])[: c]
        act = (torch.nn.functional.silu(inter[:, :i].float()) * inter[:, i:].float()).to(torch.bfloat16)
        y = gemm(quant(act), w2[e])[: c]
        out.index_add_(0, tok, y.float() * tw.reshape(-1)[pairs, None])
    return out.to(x.dtype)


def bench_moe(tokens=shapes.MOE_TOKENS, reps: int = 20, log=print) -> list[dict]:
    from blockfp8.kernels.scaled_mm import blockwise_gemm, pad_weight_scale
    from blockfp8.kernels.triton import act_quant as triton_quant
    from blockfp8.kernels.triton import moe as triton_moe
    from blockfp8.quant import reference as R
    from blockfp8.quant.metrics import calc_diff

    cfg = shapes.QWEN3_30B_A3B_MOE
    e, k, h, i = cfg["num_experts"], cfg["top_k"], cfg["hidden"], cfg["intermediate"]
    env = results.environment()
    flush = timing.L2Flusher()
    w13 = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) * 0.02
    q13, s13 = map(torch.stack, zip(*(R.quantize_weight(w13[x], (128, 128)) for x in range(e)), strict=True))
    q2, s2 = map(torch.stack, zip(*(R.quantize_weight(w2[x], (128, 128)) for x in range(e)), strict=True))
    rows = []
    for t in tokens:
        x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
        tw, ids = torch.topk(torch.softmax(torch.randn(t, e, device="cuda"), -1), k, dim=-1)
        tw = tw / tw.sum(-1, keepdim=True)

        def fused(x=x, tw=tw, ids=ids):
            return triton_moe.fused_moe(x, q13, s13, q2, s2, tw, ids)

        def sm_loop(x=x, tw=tw, ids=ids):
            return _loop(x, list(zip(q13, s13, strict=True)), list(zip(q2, s2, strict=True)), tw, ids,
                         lambda a, w: blockwise_gemm(a[0], a[1], w[0], pad_weight_scale(w[1])),
                         lambda v: triton_quant.quantize_act(v, 128, "float32", "mn_major", pad_m=4))

        def bf16_loop(x=x, tw=tw, ids=ids):
            return _loop(x, w13, w2, tw, ids, lambda a, w: a @ w.t(), lambda v: v)

        ref = R.moe_reference(x, q13, s13, q2, s2, tw, ids)
        for name, fn in (("triton_fused", fused), ("scaled_mm_loop", sm_loop)):
            d = calc_diff(fn().double(), ref.double())
            if not d < 1e-3:
                raise AssertionError(f"moe variant={name} T={t}: calc_diff={d} vs the per-expert reference")
        # host-synchronising loops: time them with launch overhead included for every variant (no spin)
        times = timing.time_interleaved({"triton_fused": fused, "scaled_mm_loop": sm_loop, "bf16_loop": bf16_loop},
                                        reps=reps, flush=flush, hide_launch_us=0)
        flops = 2 * t * k * (2 * i * h + h * i)
        med = {name: timing.median(ts) for name, ts in times.items()}
        for variant, us in med.items():
            rows.append({"bench": "moe", "m": t, "n": f"E{e}xI{i}", "k": h, "variant": variant, "us": us,
                         "tflops": flops / us / 1e6, "speedup_vs_scaled_mm": med["scaled_mm_loop"] / us,
                         "speedup_vs_bf16": med["bf16_loop"] / us, "extra": f"top{k}", **env})
        log("  ".join(f"{r['variant']}={r['us']:.0f}us" for r in rows[-3:]) + f"  [tokens={t}]")
    return rows
