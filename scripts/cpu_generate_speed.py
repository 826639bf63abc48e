"""CPU greedy generation speed of the embedded SmolLM2-135M: the unquantized model vs the same model after
``quantize_model`` (block FP8, reference backend, its CPU path on a cached dequantized weight), both in ``--dtype``
(bfloat16 by default; float32 is what the CLI uses on a CPU). Batch 1, KV cache, ``--new`` tokens after a short
prompt, the median of ``--reps`` runs after one warm-up run each.

    python scripts/cpu_generate_speed.py --new 32 --reps 3 [--dtype bfloat16|float32] [--json FILE|-]

Prints one line per variant (seconds per generated token) and the ratio; checks that the FP8 text is the text
``gemm_reference`` itself gives (the cached path is the same arithmetic).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

PROMPT = "The capital of France is"


def _generate(model, ids, new_tokens):
    import torch

    with torch.inference_mode():
        return model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def _time(model, ids, new_tokens, reps):
    _generate(model, ids, new_tokens)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = _generate(model, ids, new_tokens)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / new_tokens, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new", type=int, default=32, help="generated tokens per run (default 32)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per variant (default 3)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="model dtype")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON (- for stdout)")
    args = p.parse_args(argv)

    import torch
    import transformers

    from blockfp8.models import load_causal_lm
    from blockfp8.nn import BlockFP8Linear, quantize_model

    bf16, tok = load_causal_lm("smollm2", dtype=getattr(torch, args.dtype))
    ids = tok(PROMPT, return_tensors="pt")
    fp8 = copy.deepcopy(bf16)
    quantize_model(fp8)
    s_bf16, _ = _time(bf16, ids, args.new, args.reps)
    s_fp8, out = _time(fp8, ids, args.new, args.reps)
    for m in fp8.modules():  # the same model through the gemm_reference operator: the text must not change
        if isinstance(m, BlockFP8Linear):
            m.prepared.extra.pop("dequantized", None)
    same = torch.equal(_generate(fp8, ids, args.new), out)
    result = {
        "model": "smollm2", "dtype": args.dtype, "new_tokens": args.new, "reps": args.reps,
        "threads": torch.get_num_threads(), "s_per_token_unquantized": round(s_bf16, 4),
        "s_per_token_fp8": round(s_fp8, 4), "fp8_speed_vs_unquantized": round(s_bf16 / s_fp8, 3),
        "same_text_as_gemm_reference": same,
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    print(f"{args.dtype}: unquantized {s_bf16:.4f} s/token; FP8 (reference, cached dequantized weight): "
          f"{s_fp8:.4f} s/token; FP8 speed {s_bf16 / s_fp8:.2f}x unquantized; same text as gemm_reference: {same} "
          f"(torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads)",
          file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        from blockfp8 import atomic

        atomic.write_json(args.json, result)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
