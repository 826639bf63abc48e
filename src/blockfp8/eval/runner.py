"""Run an evaluation config: load the model once, build each variant (blockfp8.nn.quantize_model for the FP8
ones), score the task on the same items, then compare every variant with the baseline on those items."""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Sequence

from blockfp8.datasets import load_gsm8k, load_lambada
from blockfp8.eval import stats
from blockfp8.eval.config import EvalConfig, Variant
from blockfp8.eval.generate import Timing, generate_greedy, pad_id, score_continuations
from blockfp8.eval.tasks import (
    GSM8K_STOP,
    extract_flexible,
    extract_strict,
    gsm8k_prompt,
    lambada_target_tokens,
)

RESULT_SCHEMA = 1


class EvalError(RuntimeError):
    """A variant could not be built or run; the message names the variant."""


def _bits(values: Sequence[bool]) -> str:
    return "".join("1" if v else "0" for v in values)


def build_variant(base_model, variant: Variant, device: str, copy_model: bool):
    """The base model (or a copy of it) on ``device``, converted to block FP8 when the variant asks for it."""
    model = copy.deepcopy(base_model) if copy_model else base_model
    model.to(device)
    qcfg = variant.quant_config()
    report = None
    if qcfg is not None:
        try:
            from blockfp8.nn import quantize_model
        except ImportError as exc:
            raise EvalError(f"variant {variant.name!r} needs blockfp8.nn.quantize_model: {exc}") from exc
        if variant.plan_layers is None:
            report = quantize_model(model, qcfg)
        else:
            report = _quantize_plan(model, qcfg, variant, quantize_model)
    model.eval()
    return model, report


def _quantize_plan(model, qcfg, variant: Variant, quantize_model):
    """A plan variant: UE8M0 scales (weights and activations) everywhere but the plan's float32 layers, which are
    quantized in a second pass (``quantize_model`` converts only what is still float)."""
    from dataclasses import replace

    f32 = variant.plan_layers
    first = quantize_model(model, replace(qcfg, scale_fmt="ue8m0", ignored_layers=(*qcfg.ignored_layers, *f32)))
    second = quantize_model(model, replace(qcfg, scale_fmt="float32"))
    missing = sorted(f32 - set(second.converted))
    if missing:
        raise EvalError(f"variant {variant.name!r}: the plan names layers this model does not quantize: "
                        f"{', '.join(missing[:3])}")
    first.converted += second.converted
    first.backends.update(second.backends)
    first.bytes_before += second.bytes_before
    first.bytes_after += second.bytes_after
    first.weight_scale_fmt = f"plan: ue8m0, float32 for {len(f32)} layers"
    first.skipped = {k: v for k, v in first.skipped.items() if k not in f32}
    return first


def _summarize_quantization(report) -> dict | None:
    """A JSON-able digest of quantize_model's QuantizeReport: counts, skip reasons, backends, bytes."""
    if report is None:
        return None
    from collections import Counter

    return {
        "converted": len(getattr(report, "converted", [])),
        "converted_experts": len(getattr(report, "converted_experts", [])),
        "skipped": dict(Counter(getattr(report, "skipped", {}).values())),
        "backends": dict(getattr(report, "backends", {})),
        "weight_scale_fmt": getattr(report, "weight_scale_fmt", None),
        "bytes_before": getattr(report, "bytes_before", None),
        "bytes_after": getattr(report, "bytes_after", None),
    }


def evaluate(
    cfg: EvalConfig,
    *,
    device: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    model_and_tokenizer=None,
) -> dict:
    """Run every variant of ``cfg`` (or those named in ``only``) and return the results dict (see report.py).

    ``model_and_tokenizer`` lets a caller (a test) pass an already loaded base model; it is copied per variant.
    """
    import torch

    from blockfp8.platform import DeviceError, resolve_device

    log = log or (lambda msg: None)
    try:
        device = resolve_device(device)
    except DeviceError as exc:  # the device cannot run this evaluation: a failed run, like a variant that fails
        raise EvalError(str(exc)) from None
    n = min(cfg.num_questions, limit) if limit else cfg.num_questions
    bs = batch_size or cfg.batch_size
    variants = [v for v in cfg.variants if not only or v.name in only]
    if only:
        missing = sorted(set(only) - {v.name for v in cfg.variants})
        if missing:
            raise EvalError(f"--variants: {', '.join(missing)} not in {cfg.path}; known: "
                            f"{', '.join(v.name for v in cfg.variants)}")
    dtype = getattr(torch, cfg.dtype)

    t0 = time.perf_counter()
    if model_and_tokenizer is None:
        from blockfp8.models import load_causal_lm

        base, tokenizer = load_causal_lm(cfg.model, dtype=dtype, device="cpu")
    else:
        base, tokenizer = model_and_tokenizer
        base = copy.deepcopy(base).to(dtype)
    load_s = time.perf_counter() - t0
    log(f"loaded {cfg.model} ({cfg.dtype}) in {load_s:.1f}s; task {cfg.task}, {n} items, device {device}, batch {bs}")

    task = _TASKS[cfg.task](cfg, tokenizer, n)
    results: dict[str, dict] = {}
    for k, variant in enumerate(variants):
        t1 = time.perf_counter()
        try:
            model, qreport = build_variant(base, variant, device, copy_model=k < len(variants) - 1)
        except EvalError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the variant, keep the cause
            raise EvalError(f"variant {variant.name!r}: building the model failed: {exc}") from exc
        build_s = time.perf_counter() - t1
        warmup_s = 0.0
        if device == "cuda":  # JIT compilation (Triton), autotuning and library handles stay out of the timing
            t2 = time.perf_counter()
            task.warmup(model, tokenizer, device=device, batch_size=bs)
            warmup_s = time.perf_counter() - t2
        timing = Timing()
        outcome = task.run(model, tokenizer, device=device, batch_size=bs, timing=timing)
        entry = {
            "blockfp8": variant.blockfp8,
            "build_s": round(build_s, 3),
            "warmup_s": round(warmup_s, 3),
            "quantization": _summarize_quantization(qreport),
            **outcome,
            "throughput": timing.as_dict(),
        }
        entry.update(_accuracy_block(entry["correct"], len(entry["per_item"]["correct"]), variant))
        results[variant.name] = entry
        log(
            f"{variant.name}: accuracy {entry['accuracy']:.4f} "
            f"[{entry['ci95_wilson'][0]:.4f}, {entry['ci95_wilson'][1]:.4f}]"
            + (f", ppl {entry['perplexity']:.3f}" if "perplexity" in entry else "")
            + f", {timing.as_dict()['questions_per_s']} q/s, {'pass' if entry['passed'] else 'FAIL'}"
        )
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    baseline = cfg.baseline if cfg.baseline in results else next(iter(results))
    comparisons = [
        compare(results[baseline], results[name], baseline, name, cfg) for name in results if name != baseline
    ]
    return {
        "schema": RESULT_SCHEMA,
        "config": {
            "path": cfg.path,
            "model": cfg.model,
            "task": cfg.task,
            "num_questions": n,
            "num_fewshot": cfg.num_fewshot,
            "max_new_tokens": cfg.max_new_tokens if cfg.task == "gsm8k" else None,
            "batch_size": bs,
            "dtype": cfg.dtype,
            "seed": cfg.seed,
            "bootstrap_samples": cfg.bootstrap_samples,
            "baseline": baseline,
            "description": cfg.description,
        },
        "environment": _environment(device, load_s),
        "variants": results,
        "comparisons": comparisons,
        "passed": all(r["passed"] for r in results.values()),
    }


def _accuracy_block(correct: int, n: int, variant: Variant) -> dict:
    acc = correct / n
    return {
        "n": n,
        "accuracy": acc,
        "ci95_wilson": stats.wilson_interval(correct, n).as_list(),
        "ci95_clopper_pearson": stats.clopper_pearson_interval(correct, n).as_list(),
        "accuracy_threshold": variant.accuracy_threshold,
        "tolerance": variant.tolerance,
        "passed": variant.passes(acc),
    }


def compare(a: dict, b: dict, name_a: str, name_b: str, cfg: EvalConfig) -> dict:
    """Paired comparison of variant b against baseline a on the same items."""
    ca = [c == "1" for c in a["per_item"]["correct"]]
    cb = [c == "1" for c in b["per_item"]["correct"]]
    out = {
        "baseline": name_a,
        "variant": name_b,
        "accuracy_diff": b["accuracy"] - a["accuracy"],
        "mcnemar": stats.mcnemar_exact(ca, cb),
        "bootstrap_accuracy": stats.paired_bootstrap(
            ca, cb, "mean", samples=cfg.bootstrap_samples, seed=cfg.seed
        ),
    }
    if "loglik" in a["per_item"]:
        out["bootstrap_perplexity"] = stats.paired_bootstrap(
            a["per_item"]["loglik"], b["per_item"]["loglik"], "perplexity", samples=cfg.bootstrap_samples, seed=cfg.seed
        )
    if "strict_correct" in a["per_item"]:
        sa = [c == "1" for c in a["per_item"]["strict_correct"]]
        sb = [c == "1" for c in b["per_item"]["strict_correct"]]
        out["strict_mcnemar"] = stats.mcnemar_exact(sa, sb)
    return out


def _environment(device: str, load_s: float) -> dict:
    """``platform.run_environment`` plus the device label of the markdown heading (the GPU, else the CPU's name)
    and the model's load time."""
    import platform as py_platform

    from blockfp8.platform import run_environment

    env = run_environment(device)
    env["device_name"] = env["gpu"] or py_platform.processor() or "cpu"
    env["model_load_s"] = round(load_s, 3)
    return env


# ------------------------------------------------------------------------------------------------------ tasks


class _GSM8K:
    def __init__(self, cfg: EvalConfig, tokenizer, n: int):
        items, shots = load_gsm8k(cfg.data_dir)
        self.items = items[:n]
        self.shots = shots[: cfg.num_fewshot]
        self.max_new_tokens = cfg.max_new_tokens
        self.prompts = [gsm8k_prompt(it.question, self.shots) for it in self.items]

    def warmup(self, model, tokenizer, *, device, batch_size) -> None:
        """A short generation on the longest prompts: prefill and decode shapes of a full batch."""
        longest = sorted(self.prompts, key=len, reverse=True)[:batch_size]
        generate_greedy(model, tokenizer, longest, max_new_tokens=4, stop=GSM8K_STOP, batch_size=batch_size,
                        device=device)

    def run(self, model, tokenizer, *, device, batch_size, timing) -> dict:
        gens = generate_greedy(
            model,
            tokenizer,
            self.prompts,
            max_new_tokens=self.max_new_tokens,
            stop=GSM8K_STOP,
            batch_size=batch_size,
            device=device,
            timing=timing,
        )
        flexible = [extract_flexible(g.text) for g in gens]
        strict = [extract_strict(g.text) for g in gens]
        correct = [p is not None and p == it.label for p, it in zip(flexible, self.items, strict=True)]
        strict_correct = [p is not None and p == it.label for p, it in zip(strict, self.items, strict=True)]
        n = len(self.items)
        return {
            "correct": sum(correct),
            "strict_accuracy": sum(strict_correct) / n,
            "strict_ci95_wilson": stats.wilson_interval(sum(strict_correct), n).as_list(),
            "invalid_rate": sum(p is None for p in flexible) / n,
            "strict_invalid_rate": sum(p is None for p in strict) / n,
            "per_item": {
                "ids": [it.id for it in self.items],
                "correct": _bits(correct),
                "strict_correct": _bits(strict_correct),
                "invalid": _bits(p is None for p in flexible),
            },
            "samples": [
                {"id": it.id, "label": it.label, "flexible": f, "strict": s, "generation": g.text}
                for it, f, s, g in zip(self.items, flexible, strict, gens, strict=True)
            ],
        }


class _Lambada:
    def __init__(self, cfg: EvalConfig, tokenizer, n: int):
        self.items = load_lambada(cfg.data_dir)[:n]
        self.pairs = [lambada_target_tokens(tokenizer, it.context, it.target) for it in self.items]

    def warmup(self, model, tokenizer, *, device, batch_size) -> None:
        longest = sorted(self.pairs, key=lambda p: len(p[0]) + len(p[1]), reverse=True)[:batch_size]
        score_continuations(model, longest, pad=pad_id(tokenizer), batch_size=batch_size, device=device)

    def run(self, model, tokenizer, *, device, batch_size, timing) -> dict:
        import math

        scores = score_continuations(
            model, self.pairs, pad=pad_id(tokenizer), batch_size=batch_size, device=device, timing=timing
        )
        loglik = [s.loglik for s in scores]
        ntok = sum(s.num_tokens for s in scores)
        n = len(scores)
        return {
            "correct": sum(s.greedy for s in scores),
            # per target word (lm-eval-harness's LAMBADA perplexity) and per target token
            "perplexity": math.exp(-sum(loglik) / n),
            "token_perplexity": math.exp(-sum(loglik) / ntok),
            "target_tokens": ntok,
            "per_item": {
                "ids": [it.id for it in self.items],
                "correct": _bits(s.greedy for s in scores),
                "loglik": [round(x, 5) for x in loglik],
            },
            "samples": [
                {
                    "id": it.id,
                    "target": it.target,
                    # the argmax at each target position, given the true preceding tokens (teacher forcing)
                    "argmax_tokens": tokenizer.decode(s.argmax_ids, clean_up_tokenization_spaces=False),
                    "loglik": s.loglik,
                    "correct": s.greedy,
                }
                for it, s in zip(self.items, scores, strict=True)
            ],
        }


_TASKS = {"gsm8k": _GSM8K, "lambada": _Lambada}
