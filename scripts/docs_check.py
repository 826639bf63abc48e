"""Re-run the commands behind the CPU numbers in README.md and docs/, and compare with what the docs say.

    python scripts/docs_check.py            # the cheap ones (a few minutes on 2 cores)
    python scripts/docs_check.py --full     # also `blockfp8 check` (the demo transcript)
    python scripts/docs_check.py --only eval-ci

Each check reads its numbers out of the doc with a regular expression, runs the command that produced them, and
compares within a tolerance stated in the table below (counts of items: exact or +-1 item; ratios of times: the
documented bound only, since timings on a shared machine move). The static part (links resolve inside the
repository, the README's demo block is the committed transcript) is also a test: tests/test_docs.py.
Exit 0 when every check holds, 1 otherwise; prints one line per check with the versions it ran under.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRANSCRIPT = ROOT / "benchmarks" / "results" / "cpu" / "demo_check.txt"


def _run_json(*argv: str) -> dict:
    """``python -m blockfp8 ARGV --json --quiet`` (or a script) and its JSON from stdout."""
    cmd = [sys.executable, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def _say(text: str) -> None:
    print(f"  {text}", flush=True)


def _find(path: Path, pattern: str) -> re.Match:
    m = re.search(pattern, path.read_text(), re.S)
    if m is None:
        raise RuntimeError(f"{path.relative_to(ROOT)}: the documented numbers ({pattern!r}) are not there")
    return m


def check_eval_ci() -> list[str]:
    """docs/eval.md's CPU paragraph: per-variant correct counts (+-1 item) and target-word perplexity (2 %)."""
    doc = ROOT / "docs" / "eval.md"
    m = _find(doc, r"bf16 (\d+)/30 \([\d.]+ %, ppl ([\d.]+)\), fp8-float32 (\d+)/30 \([\d.]+ %, ppl ([\d.]+)\),"
                   r"\s+fp8-ue8m0\s+(\d+)/30 \([\d.]+ %, ppl ([\d.]+)\)")
    want = {"bf16": m.group(1, 2), "fp8-float32": m.group(3, 4), "fp8-ue8m0": m.group(5, 6)}
    got = _run_json("-m", "blockfp8", "eval", "configs/smollm2-lambada-ci.yaml", "--device", "cpu", "--json",
                    "--quiet")["variants"]
    bad = []
    _say("run: " + ", ".join(f"{n} {got[n]['correct']}/30 ppl {got[n]['perplexity']:.1f}" for n in want))
    for name, (count, ppl) in want.items():
        c, p = got[name]["correct"], got[name]["perplexity"]
        if abs(c - int(count)) > 1 or abs(p / float(ppl) - 1) > 0.02:
            bad.append(f"{name}: doc {count}/30 ppl {ppl}, run {c}/30 ppl {p:.1f}")
    return bad


def check_weights_audit() -> list[str]:
    """README: the most any SmolLM2 layer's weights lose to UE8M0 (within 10 %)."""
    m = _find(ROOT / "README.md", r"at most ([\d.]+) bit per layer, `blockfp8 audit --model smollm2\s+--weights-only`")
    report = _run_json("-m", "blockfp8", "audit", "--model", "smollm2", "--weights-only", "--json", "--quiet")
    got = report["summary"]["max_bits_lost"]
    _say(f"run: max {got:.4f} bit lost per layer")
    return [] if abs(got / float(m.group(1)) - 1) <= 0.10 else [f"doc {m.group(1)} bit, run {got:.4f} bit"]


def check_cpu_speed() -> list[str]:
    """README: FP8 generation on CPU at least the documented fraction of bf16's speed, same text as the operator."""
    m = _find(ROOT / "README.md", r"at least ([\d.]+)×\s+the\s+speed\s+of\s+bf16")
    got = _run_json("scripts/cpu_generate_speed.py", "--new", "16", "--reps", "3", "--json", "-")
    ratio = got["fp8_speed_vs_unquantized"]
    _say(f"run: {got['s_per_token_unquantized']} vs {got['s_per_token_fp8']} s/token, {ratio}x")
    bad = [] if ratio >= float(m.group(1)) else [f"run {ratio}x < doc bound"]
    return bad + ([] if got["same_text_as_gemm_reference"] else ["FP8 text differs from gemm_reference's"])


def check_demo() -> list[str]:
    """The demo transcript (README and benchmarks/results/cpu/demo_check.txt): bits lost (2 %), perplexities
    (0.5 %), the UE8M0 perplexity increase (0.3 percentage points), the verdict (exact)."""
    text = TRANSCRIPT.read_text()
    mean = float(re.search(r"lost per layer: mean ([\d.]+)", text).group(1))
    ppl = [float(x) for x in re.search(r"perplexity: unquantized ([\d.]+), FP8/float32 ([\d.]+), FP8/UE8M0 ([\d.]+)",
                                       text).groups()]
    inc = float(re.search(r"UE8M0 ([+-][\d.]+)% \[", text).group(1))
    verdict = re.search(r"verdict for UE8M0 scales: (\w+)", text).group(1).lower()
    r = _run_json("-m", "blockfp8", "check", "--out", "reports/docs-check", "--json", "--quiet")["model"]
    s, e2e = r["summary"], r["e2e"]
    got_ppl = [e2e["base"]["ppl_base"], e2e["fp32"]["ppl_fp32"], e2e["ue8m0"]["ppl_ue8m0"]]
    bad = []
    if abs(s["mean_bits_lost"] / mean - 1) > 0.02:
        bad.append(f"mean bits lost: doc {mean}, run {s['mean_bits_lost']:.4f}")
    if any(abs(g / w - 1) > 0.005 for g, w in zip(got_ppl, ppl, strict=True)):
        bad.append(f"perplexities: doc {ppl}, run {[round(g, 3) for g in got_ppl]}")
    got_inc = 100 * (got_ppl[2] / got_ppl[1] - 1)
    if abs(got_inc - inc) > 0.3:
        bad.append(f"UE8M0 perplexity increase: doc {inc:+.2f} %, run {got_inc:+.2f} %")
    if s["verdict"] != verdict:
        bad.append(f"verdict: doc {verdict}, run {s['verdict']}")
    return bad


CHECKS = {"eval-ci": check_eval_ci, "weights-audit": check_weights_audit, "cpu-speed": check_cpu_speed}
FULL = {"demo": check_demo}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="also re-run `blockfp8 check` (the demo)")
    p.add_argument("--only", choices=(*CHECKS, *FULL), action="append", help="run only this check (repeatable)")
    args = p.parse_args(argv)
    import torch
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    chosen = args.only or [*CHECKS, *(FULL if args.full else ())]
    failed = 0
    for name in chosen:
        try:
            bad = {**CHECKS, **FULL}[name]()
        except (RuntimeError, KeyError, ValueError) as exc:
            bad = [f"could not check: {exc}"]
        failed += bool(bad)
        print(f"docs-check {name}: {'ok' if not bad else 'MISMATCH: ' + '; '.join(bad)} ({versions})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
