"""Results as JSON (atomic write) and as a markdown table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from blockfp8 import atomic


def split_samples(results: dict) -> dict[str, list[dict]]:
    """Remove the per-item generations from ``results`` (they stay out of the JSON) and return them by variant."""
    return {name: entry.pop("samples", []) for name, entry in results["variants"].items()}


_NUMBER_LIST = re.compile(r"\[\s*(?:[-+0-9.eE]+|null)(?:,\s*(?:[-+0-9.eE]+|null))*\s*\]")


def dumps(obj) -> str:
    """Indented JSON with every list of numbers on one line (per-item arrays stay compact)."""
    text = json.dumps(obj, indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",")) + "]", text)


def write_json(obj, path: str | Path) -> None:
    atomic.write_text(path, dumps(obj) + "\n")


def samples_text(samples: dict[str, list[dict]]) -> str:
    """One JSON line per generation / prediction, tagged with its variant."""
    return "".join(json.dumps({"variant": variant, **row}) + "\n" for variant, rows in samples.items() for row in rows)


def write_samples(samples: dict[str, list[dict]], path: str | Path) -> None:
    atomic.write_text(path, samples_text(samples))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _ci(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def markdown(results: dict) -> str:
    cfg, env = results["config"], results["environment"]
    task = cfg["task"]
    base = cfg["baseline"]
    comps = {c["variant"]: c for c in results["comparisons"]}
    lines = [
        f"### {cfg['model']} · {task} · {cfg['num_questions']} items"
        + (f" · {cfg['num_fewshot']}-shot" if task == "gsm8k" else "")
        + f" · {env['device_name']}",
        "",
    ]
    if task == "lambada":
        head = ["variant", "acc %", "95% CI (Wilson)", "Δacc vs " + base, "McNemar p", "ppl (word)", "Δppl [95% CI]"]
    else:
        head = ["variant", "acc % (flexible)", "95% CI (Wilson)", "Δacc vs " + base, "McNemar p", "strict %",
                "invalid %"]
    head += ["threshold − tol", "pass", "q/s", "tok/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["variants"].items():
        c = comps.get(name)
        if c is None:
            delta, p = "—", "—"
        else:
            lo, hi = c["bootstrap_accuracy"]["diff_ci"]
            delta = f"{100 * c['accuracy_diff']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
            p = _p(c["mcnemar"]["p_value"])
        row = [name, _pct(r["accuracy"]), _ci(r["ci95_wilson"]), delta, p]
        if task == "lambada":
            if c is None:
                dppl = "—"
            else:
                bp = c["bootstrap_perplexity"]
                dppl = f"{bp['diff']:+.3f} [{bp['diff_ci'][0]:+.3f}, {bp['diff_ci'][1]:+.3f}]"
            row += [f"{r['perplexity']:.3f}", dppl]
        else:
            row += [_pct(r["strict_accuracy"]), _pct(r["invalid_rate"])]
        tp = r["throughput"]
        tok = tp["generated_tokens_per_s"] if task == "gsm8k" else tp["tokens_per_s"]
        row += [
            f"{_pct(r['accuracy_threshold'])} − {_pct(r['tolerance'])}",
            "yes" if r["passed"] else "**no**",
            f"{tp['questions_per_s']:.1f}",
            f"{tok:.0f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Accuracy in %; Δ in percentage points with a paired-bootstrap 95% interval "
        f"({cfg['bootstrap_samples']} resamples, seed {cfg['seed']}); McNemar = exact two-sided test on the "
        "discordant pairs. "
        + (
            "LAMBADA accuracy = every target token is the greedy choice; ppl = exp(−mean log p(target word)). "
            "tok/s = context + target tokens scored per second."
            if task == "lambada"
            else "flexible = last integer in the generation (vLLM convention); strict = the number after "
            "'####' or 'the answer is'; invalid = no number at all. tok/s = generated tokens per second."
        ),
        f"torch {env['torch']}, transformers {env.get('transformers')}, {cfg['dtype']}, batch {cfg['batch_size']}.",
    ]
    return "\n".join(lines) + "\n"
