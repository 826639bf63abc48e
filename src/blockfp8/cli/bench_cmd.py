"""Benchmark block-FP8 kernels and layers against their peers on this GPU: `gemm` (bf16 cuBLAS, FP8 per-tensor
cuBLAS, blockwise scaled_mm, our Triton kernel, auto-dispatch over the DeepSeek-V3 grid), `quant` (activation
quantizer), `layer` (a whole BlockFP8Linear call per backend vs bf16, CUDA-graph replay, DeepSeek-V3 grid),
`moe` (a MoE block on Qwen3-30B-A3B shapes vs a bf16 grouped MoE, eager and CUDA graph), `model`
(Qwen3-8B- and Qwen3-30B-A3B-shaped decoders, random weights, in eager, torch.compile and CUDA-graph modes, decode
and prefill, bf16 vs blockfp8: model.csv), `generate` (transformers' generate on a SmolLM2-shaped model, static
cache, eager / compiled / CUDA graphs: generate.csv). Prints a table and appends long-format rows (GPU, versions, date,
commit) to a CSV under --out-dir; `gemm` also draws a PNG."""

from __future__ import annotations

import argparse
import sys

from blockfp8.cli.args import add_output_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=("gemm", "layer", "quant", "moe", "model", "generate"), help="which benchmark")
    p.add_argument("--m", default=None, help="comma list of M (gemm; default 1,16,64,128,512,4096) or of token "
                   "counts (moe; default 1,16,64,256,512,4096,16384)")
    p.add_argument("--nk", default=None, help="comma list of NxK pairs (gemm; default the DeepSeek-V3 list)")
    p.add_argument("--variants", default=None, help="comma list (gemm: bf16,fp8_tensor,scaled_mm,triton,auto, "
                   "cute and deepgemm where installed; "
                   "moe: bf16,triton,deepgemm,deepgemm_masked,deepgemm_contiguous)")
    p.add_argument("--reps", type=int, default=50, help="timed calls per variant and shape (median reported)")
    p.add_argument("--scale-fmt", choices=("float32", "ue8m0"), default="float32")
    p.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results/<gpu>)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    add_output_arguments(p, "gemm: the summary")
    p.add_argument("--models", default=None, help="model: comma list of qwen3-8b,qwen3-30b-a3b (default both); "
                   "moe: qwen3-30b-a3b,deepseek-v3 (default both)")
    p.add_argument("--modes", default=None, help="model: comma list of eager,compile,graph (default all); moe: "
                   "eager,graph; layer: chain,graph,eager (default chain: the layer inside a model-sized graph)")
    p.add_argument("--batches", default=None, help="model: decode batch sizes (default 1,8,64)")
    p.add_argument("--prefill", default=None, help="model: prefill lengths (default 2048,8192)")
    p.add_argument("--layers", type=int, default=2, help="model: decoder layers (default 2; every layer is alike)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from blockfp8.bench import results, shapes
    from blockfp8.cli.args import write_json_output

    if not torch.cuda.is_available():
        print("blockfp8 bench: error: needs a CUDA GPU", file=sys.stderr)
        return 1
    gpu = torch.cuda.get_device_name()
    out_dir = Path(args.out_dir or Path("benchmarks") / "results" / results.gpu_dirname(gpu))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    if args.what == "gemm":
        from blockfp8.bench import gemm

        ms = tuple(int(v) for v in args.m.split(",")) if args.m else shapes.GEMM_MS
        nks = (tuple(tuple(int(x) for x in p.split("x")) for p in args.nk.split(",")) if args.nk
               else shapes.DEEPSEEK_V3_NK)
        variants = tuple(args.variants.split(",")) if args.variants else gemm.GEMM_VARIANTS
        rows = gemm.bench_gemm(shapes.gemm_grid(ms, nks), variants, reps=args.reps, scale_fmt=args.scale_fmt)
        print(results.table(rows, gemm.TABLE_COLS))
        summary = gemm.summarize(rows)
        if not args.no_plot:
            results.plot_gemm([{k: str(v) for k, v in r.items()} for r in rows], out_dir / "gemm.png")
    elif args.what == "layer":
        from blockfp8.bench import layer

        ms = tuple(int(v) for v in args.m.split(",")) if args.m else shapes.GEMM_MS
        nks = (tuple(tuple(int(x) for x in p.split("x")) for p in args.nk.split(",")) if args.nk
               else shapes.DEEPSEEK_V3_NK)
        rows = layer.bench_layer(shapes.gemm_grid(ms, nks),
                                 tuple(args.variants.split(",")) if args.variants else layer.VARIANTS,
                                 tuple(args.modes.split(",")) if args.modes else layer.MODES, reps=args.reps)
        print(results.table(rows, layer.TABLE_COLS))
        summary = layer.summarize(rows)
    elif args.what == "quant":
        from blockfp8.bench import quant

        rows = quant.bench_quant(reps=args.reps)
        print(results.table(rows, ("m", "k", "variant", "us", "gbps")))
    elif args.what == "moe":
        from blockfp8.bench import moe

        rows = moe.bench_moe(models=tuple(args.models.split(",")) if args.models else tuple(moe.MODELS),
                             tokens=tuple(int(v) for v in args.m.split(",")) if args.m else shapes.MOE_TOKENS,
                             variants=tuple(args.variants.split(",")) if args.variants else moe.VARIANTS,
                             modes=tuple(args.modes.split(",")) if args.modes else moe.MODES, reps=args.reps)
        print(results.table(rows, ("m", "n", "variant", "us", "tflops", "speedup_vs_bf16", "extra")))
        print("\n".join(moe.summarize(rows)))
    elif args.what == "generate":
        from blockfp8.bench import generate

        rows = generate.bench_generate(modes=tuple(args.modes.split(",")) if args.modes else generate.MODES)
        print(results.table(rows, ("mode", "variant", "ms", "tokens_per_s", "speedup_vs_bf16")))
        results.append_csv(out_dir / "generate.csv", rows, fields=generate.FIELDS)
        return 0
    else:
        from blockfp8.bench import model

        def ints(text, default):
            return tuple(int(v) for v in text.split(",")) if text else default

        rows = model.bench_model(models=tuple(args.models.split(",")) if args.models else tuple(model.MODELS),
                                 modes=tuple(args.modes.split(",")) if args.modes else model.MODES,
                                 decode_batches=ints(args.batches, model.DECODE_BATCHES),
                                 prefill_tokens=ints(args.prefill, model.PREFILL_TOKENS), layers=args.layers,
                                 reps=args.reps)
        print(results.table(rows, ("model", "mode", "phase", "batch", "variant", "ms", "tokens_per_s",
                                   "speedup_vs_bf16")))
        results.append_csv(out_dir / "model.csv", rows, fields=model.FIELDS)
        return 0
    results.append_csv(out_dir / f"{args.what}.csv", rows)
    if summary and args.json is not None:
        wrote = write_json_output(args.json, summary)
        if wrote:
            print(f"wrote {wrote}")
    elif summary:
        def x(v):
            return "n/a" if v is None else f"{v:.3f}x"

        print("\n".join(f"{v}: geomean {x(s['geomean'])} scaled_mm, decode (M<=64) {x(s['decode_geomean'])}, "
                        f"M=4096 {x(s['m4096_geomean'])}, worst cell {x(s['min'])} ({s['cells']} cells)"
                        for v, s in summary.items()))
    return 0
