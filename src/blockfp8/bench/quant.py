"""`blockfp8 bench quant`: the fused Triton 1x128 activation quantizer vs the eager torch reference."""

from __future__ import annotations

import torch

from blockfp8.bench import results, timing

QUANT_SHAPES = ((4096, 7168), (16384, 7168), (32768, 7168), (16384, 2048))


def quant_bytes(m: int, k: int, in_bytes: int = 2) -> int:
    return m * k * in_bytes + m * k + 4 * m * -(-k // 128)


def bench_quant(shapes=QUANT_SHAPES, reps: int = 30, log=print) -> list[dict]:
    from blockfp8.kernels.triton import act_quant as triton_quant
    from blockfp8.quant import reference

    env = results.environment()
    flush = timing.L2Flusher()
    rows = []
    for m, k in shapes:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        for fmt in ("float32", "ue8m0"):
            q, s = triton_quant.quantize_act(x[:512], 128, fmt)
            qr, sr = reference.quantize_act(x[:512].cpu(), 128, fmt)  # the reference's bits are the CPU's
            if not (torch.equal(q.view(torch.uint8).cpu(), qr.view(torch.uint8)) and torch.equal(s.cpu(), sr)):
                raise AssertionError(f"quantize_act M={m} K={k} scale_fmt={fmt}: not bit-identical to the reference")
            fns = {
                f"triton_{fmt}": lambda fmt=fmt, x=x: triton_quant.quantize_act(x, 128, fmt),
                f"triton_{fmt}_mn_major": lambda fmt=fmt, x=x: triton_quant.quantize_act(
                    x, 128, fmt, "mn_major", pad_m=4),
                f"torch_reference_{fmt}": lambda fmt=fmt, x=x: reference.quantize_act(x, 128, fmt),
            }
            times = timing.time_kernels(fns, reps=reps, flush=flush)
            for v, t in times.items():
                us = timing.median(t)
                rows.append({"bench": "quant", "m": m, "n": "", "k": k, "variant": v, "us": us,
                             "gbps": quant_bytes(m, k) / us / 1e3, **env})
            log("  ".join(f"{r['variant']}={r['us']:.1f}us ({r['gbps']:.0f} GB/s)" for r in rows[-3:])
                + f"  [M={m} K={k}]")
    return rows
