"""`blockfp8 bench model`: what users run, bf16 against blockfp8 in one run on one GPU.

Two decoders built from configs with random weights (``bench.decoders``; a few layers are enough, every layer is
alike): a Qwen3-8B-shaped dense one and a Qwen3-30B-A3B-shaped MoE one. Each runs in three modes:

* ``eager``: the model called as it is;
* ``compile``: ``torch.compile(model, fullgraph=True)`` (a graph break is an error);
* ``graph``: the compiled model captured once in a CUDA graph and replayed, as serving engines run decode.

Phases: decode (one new token per sequence against a KV cache of ``ctx`` tokens) at several batch sizes, and
prefill of a whole prompt. Each cell is the wall time per forward pass (host loop, synchronised at the end, after
warm-up), reported as tokens per second; ``speedup_vs_bf16`` compares the same model, mode, phase and batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from blockfp8.bench import decoders, results, shapes, timing

MODELS = {"qwen3-8b": shapes.QWEN3_8B, "qwen3-30b-a3b": shapes.QWEN3_30B_A3B}
MODES = ("eager", "compile", "graph")
DECODE_BATCHES = (1, 8, 64)
PREFILL_TOKENS = (2048, 8192)
FIELDS = ("model", "mode", "phase", "batch", "tokens", "variant", "layers", "ms", "tokens_per_s", "speedup_vs_bf16",
          "gpu", "torch", "cuda", "triton", "date", "commit")


def _runner(model: torch.nn.Module, mode: str, args: tuple) -> Callable[[], object]:
    """A zero-argument call of ``model(*args)`` in ``mode``."""
    if mode == "eager":
        return lambda: model(*args)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    if mode == "compile":
        return lambda: compiled(*args)
    return timing.cuda_graphed(lambda: compiled(*args), warmup=3)  # compiles during the warm-up


def _cells(decode_batches, prefill_tokens, modes) -> list[tuple[str, str, int, int]]:
    """(mode, phase, batch, tokens per sequence); prefill is not replayed from a graph (one long launch sequence
    gains nothing from it)."""
    cells = [(m, "decode", b, 1) for m in modes for b in decode_batches]
    return cells + [(m, "prefill", 1, t) for m in modes if m != "graph" for t in prefill_tokens]


def bench_model(models=tuple(MODELS), modes=MODES, decode_batches=DECODE_BATCHES, prefill_tokens=PREFILL_TOKENS,
                layers: int = 2, ctx: int = 1024, reps: int = 20, log=print) -> list[dict]:
    env = results.environment()
    rows = []
    for name in models:
        cfg = MODELS[name]
        for variant in ("bf16", "blockfp8"):
            torch.manual_seed(0)
            with torch.inference_mode():
                model = decoders.Decoder(cfg, fp8=variant == "blockfp8", layers=layers)
                caches = {b: model.new_caches(b, ctx) for b in decode_batches}
                for mode, phase, batch, tokens in _cells(decode_batches, prefill_tokens, modes):
                    ids = torch.randint(0, cfg["vocab_size"], (batch, tokens), device="cuda")
                    if phase == "decode":
                        args = (ids, torch.tensor([ctx], device="cuda"), caches[batch])
                    else:
                        args = (ids, torch.arange(tokens, device="cuda"))
                    torch._dynamo.reset()
                    try:
                        ms = timing.wall_us(_runner(model, mode, args),
                                            reps if phase == "decode" else max(3, reps // 4)) / 1e3
                    except Exception as exc:  # noqa: BLE001 - a mode that fails is a finding, reported in the row
                        log(f"{name} {variant} {mode} {phase} b={batch}: {type(exc).__name__}: {str(exc)[:300]}")
                        ms = float("nan")
                    rows.append({"model": name, "mode": mode, "phase": phase, "batch": batch, "tokens": batch * tokens,
                                 "variant": variant, "layers": layers, "ms": ms,
                                 "tokens_per_s": batch * tokens / ms * 1e3, **env})
                    log(f"{name:14s} {variant:8s} {mode:7s} {phase:7s} batch={batch:<3d} tokens={batch * tokens:<5d} "
                        f"{ms:9.3f} ms  {batch * tokens / ms * 1e3:10.0f} tokens/s")
            del model, caches
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    def cell(r):
        return r["model"], r["mode"], r["phase"], r["batch"], r["tokens"]

    base = {cell(r): r["ms"] for r in rows if r["variant"] == "bf16"}
    for r in rows:
        r["speedup_vs_bf16"] = base.get(cell(r), float("nan")) / r["ms"]
    return rows
