"""`blockfp8 bench generate`: transformers' own ``generate`` on a SmolLM2-135M-shaped Llama (its config, random
weights: the embedded model's architecture, hidden 576 and k/v 192 so the FP8 blocks are ragged), bf16 against
the same model after ``blockfp8.quantize_model``, greedy decoding with a static KV cache. Modes: ``eager``
(transformers' automatic compilation switched off), ``compile`` (the forward pass through
``torch.compile(fullgraph=True)``, no CUDA graphs) and ``graph`` (transformers' own static-cache compilation,
``CompileConfig(fullgraph=True, mode="reduce-overhead")``: compiled and replayed from CUDA graphs). Tokens per second
of generated text (prompt excluded), wall time, after a warm-up generation.
"""

from __future__ import annotations

import time

import torch

from blockfp8.bench import results

SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True}
MODES = ("eager", "compile", "graph")
FIELDS = ("model", "mode", "phase", "batch", "tokens", "variant", "ms", "tokens_per_s", "speedup_vs_bf16", "gpu",
          "torch", "cuda", "triton", "date", "commit")


def _model(fp8: bool, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(device=device, dtype=torch.bfloat16).eval()
    if fp8:
        import blockfp8

        blockfp8.quantize_model(model)
    return model


def bench_generate(modes=MODES, batch: int = 1, prompt: int = 64, new_tokens: int = 128, reps: int = 3,
                   device: str = "cuda", log=print) -> list[dict]:
    env = results.environment()
    rows = []
    for variant in ("bf16", "blockfp8"):
        for mode in modes:
            from transformers import CompileConfig

            model = _model(variant == "blockfp8", device)
            ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (batch, prompt), device=device)
            kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          cache_implementation="static", pad_token_id=0)
            if mode == "graph":
                kwargs["compile_config"] = CompileConfig(fullgraph=True, mode="reduce-overhead")
            else:
                kwargs["disable_compile"] = True
                if mode == "compile":
                    model.forward = torch.compile(model.forward, fullgraph=True)
            try:
                with torch.inference_mode():
                    model.generate(ids, **kwargs)  # warm-up: compiles and records graphs
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        model.generate(ids, **kwargs)
                    if device == "cuda":
                        torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / reps * 1e3
            except Exception as exc:  # noqa: BLE001 - a mode that fails is a finding, reported in the row
                log(f"generate {variant} {mode}: {type(exc).__name__}: {str(exc)[:300]}")
                ms = float("nan")
            rows.append({"model": "smollm2-135m-shape", "mode": mode, "phase": "generate", "batch": batch,
                         "tokens": batch * new_tokens, "variant": variant, "ms": ms,
                         "tokens_per_s": batch * new_tokens / ms * 1e3, **env})
            log(f"generate {variant:8s} {mode:7s} {ms:9.1f} ms for {batch}x{new_tokens} tokens "
                f"({batch * new_tokens / ms * 1e3:.0f} tokens/s)")
            del model
            torch._dynamo.reset()
    base = {r["mode"]: r["ms"] for r in rows if r["variant"] == "bf16"}
    for r in rows:
        r["speedup_vs_bf16"] = base.get(r["mode"], float("nan")) / r["ms"]
    return rows
