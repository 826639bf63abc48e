"""Host-side cost of one BlockFP8Linear call at decode size, against the bare kernels it runs.

    PYTHONPATH=src python benchmarks/layer_overhead.py [--n 2112 --k 7168 --m 1 --calls 2000 --backend auto]

Prints µs per call (wall, averaged over back-to-back calls, synchronized once at the end) for bf16 ``F.linear``, the
layer, the backend's quantize_act + gemm called directly, the Triton launchers alone, and the layer captured in a
CUDA graph (replay); then the top functions of a cProfile of the layer calls.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from blockfp8.bench import timing
from blockfp8.config import BlockFP8Config
from blockfp8.nn import BlockFP8Linear


def per_call_us(fn, calls: int) -> float:
    return timing.wall_us(fn, calls, warmup=20)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2112)
    ap.add_argument("--k", type=int, default=7168)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--backend", default="auto", help="linear backend (auto, triton, scaled_mm, deepgemm)")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    lin = torch.nn.Linear(args.k, args.n, bias=False, device="cuda", dtype=torch.bfloat16)
    layer = BlockFP8Linear.from_linear(lin, BlockFP8Config(linear_backend=args.backend), name="probe")
    x = torch.randn(args.m, args.k, device="cuda", dtype=torch.bfloat16)
    backend_id = layer.decision.backend_for_m(args.m)
    backend, decision, prepared = layer._runners[backend_id]
    print(f"decision {layer.decision.backend}, runs {backend_id} at M={args.m}")

    def direct():
        q, s = backend.quantize_act(x, decision, 128)
        return backend.gemm(q, s, prepared, torch.bfloat16)

    w_bf16 = lin.weight.detach()
    rows = {"bf16 F.linear": per_call_us(lambda: torch.nn.functional.linear(x, w_bf16), args.calls),
            "layer.forward": per_call_us(lambda: layer(x), args.calls),
            "backend quantize_act+gemm": per_call_us(direct, args.calls)}
    if str(backend_id) == "triton":
        from blockfp8.kernels.triton import act_quant as triton_quant
        from blockfp8.kernels.triton import gemm as triton_gemm

        q, s = triton_quant.quantize_act(x, 128, "float32", "row_major")
        rows["triton_quant.quantize_act"] = per_call_us(lambda: triton_quant.quantize_act(x, 128, "float32",
                                                                                           "row_major"), args.calls)
        rows["triton_gemm.fp8_block_gemm"] = per_call_us(
            lambda: triton_gemm.fp8_block_gemm(q, s, prepared.weight, prepared.scale), args.calls)
    # the same call captured in a CUDA graph (how serving engines run decode): replay cost and output check
    static_x = x.clone()
    eager = layer(static_x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            layer(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = layer(static_x)
    graph.replay()
    torch.cuda.synchronize()
    rows["layer in a CUDA graph (replay)"] = per_call_us(graph.replay, args.calls)
    print(f"graph replay output equals eager: {torch.equal(static_out, eager)}")
    for name, us in rows.items():
        print(f"{name:32s} {us:8.1f} us/call  ({us / rows['bf16 F.linear']:.2f}x bf16)")
    if args.no_profile:
        return 0
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(500):
        layer(x)
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
