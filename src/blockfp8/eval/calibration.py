"""Calibration points for the audit's task-level verdict (``blockfp8 calibrate``): each pair of variants an
evaluation ran (FP8/UE8M0 vs FP8/float32, vs bf16, a plan vs FP8/float32, ...) with what the end-to-end audit of
the same model measured for that pair and what the task measured.

Reads the two JSON files as plain data (an audit report and ``blockfp8 eval --json`` results); the audit reads the
points back (``blockfp8.audit.predict``), so eval and audit stay independent. The file format is documented in
docs/audit.md ("Re-calibrating the verdict").
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from blockfp8.eval import stats

SCHEMA = "blockfp8.verdict-calibration/1"
# (variant, reference) pairs, in the audit's variant names
PAIRS = (("fp32", "base"), ("ue8m0", "base"), ("plan", "base"), ("ue8m0", "fp32"), ("plan", "fp32"))


class CalibrationInputError(ValueError):
    """An audit report or eval result that cannot be paired; the message names the file and the field."""


def audit_variant(settings: Mapping[str, Any] | None, plan_layers: Collection[str] | None = None) -> str | None:
    """The e2e variant an eval variant corresponds to: base (unquantized), fp32, ue8m0, plan (only when its float32
    layers are the audit plan's, ``plan_layers``), or None (another plan: nothing to pair with)."""
    if settings is None:
        return "base"
    if settings.get("plan"):
        same = plan_layers is not None and set(settings.get("plan_float32_layers", ())) == set(plan_layers)
        return "plan" if same else None
    return "ue8m0" if settings.get("scale_fmt") == "ue8m0" else "fp32"


def _target_ppl(e2e: Mapping[str, Any], v: str) -> float | None:
    """The perplexity of the held-out target words under audit variant ``v``, where the audit measured them."""
    value = (e2e.get(v) or {}).get(f"tppl_{v}")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _audit_numbers(e2e: Mapping[str, Any], v: str, where: str) -> tuple[float, float]:
    """(next-token accuracy, perplexity) of audit variant ``v``."""
    block = e2e.get(v)
    if not isinstance(block, dict) or f"acc_{v}" not in block:
        raise CalibrationInputError(f"{where}: field e2e.{v}.acc_{v} is missing (re-run the audit with --e2e"
                                    f"{' and a plan' if v == 'plan' else ''})")
    return float(block[f"acc_{v}"]), float(block[f"ppl_{v}"])


def calibration_points(report: Mapping[str, Any], results: Mapping[str, Any], report_source: str,
                       results_source: str) -> list[dict]:
    """One point per pair in ``PAIRS`` that both files hold."""
    e2e = report.get("e2e")
    if not isinstance(e2e, dict):
        raise CalibrationInputError(f"{report_source}: field e2e is missing: audit with --e2e")
    variants = results.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise CalibrationInputError(f"{results_source}: field variants is missing: not `blockfp8 eval --json` output")
    plan_layers = (report.get("plan") or {}).get("float32_layers")
    by_audit = {audit_variant(v.get("blockfp8"), plan_layers): name for name, v in variants.items()}
    task, items = results["config"]["task"], results["config"]["num_questions"]
    points = []
    for v, ref in PAIRS:
        if v not in by_audit or ref not in by_audit:
            continue
        acc_v, ppl_v = _audit_numbers(e2e, v, report_source)
        acc_r, ppl_r = _audit_numbers(e2e, ref, report_source)
        a, b = variants[by_audit[ref]], variants[by_audit[v]]
        ca = [c == "1" for c in a["per_item"]["correct"]]
        cb = [c == "1" for c in b["per_item"]["correct"]]
        mc = stats.mcnemar_exact(ca, cb)
        delta: dict[str, Any] = {"acc_change_pp": 100 * (b["accuracy"] - a["accuracy"]), "mcnemar_p": mc["p_value"],
                                 "discordant": mc["only_a_correct"] + mc["only_b_correct"]}
        if "loglik" in a["per_item"]:
            boot = stats.paired_bootstrap(a["per_item"]["loglik"], b["per_item"]["loglik"], "perplexity",
                                          samples=2000, seed=0)
            delta["ppl_increase_pct"] = 100 * (boot["ratio"] - 1)
            delta["ppl_increase_ci"] = [100 * (boot["ratio_ci"][0] - 1), 100 * (boot["ratio_ci"][1] - 1)]
        audit = {"acc_change_pp": 100 * (acc_v - acc_r), "ppl_increase_pct": 100 * (ppl_v / ppl_r - 1),
                 "tokens": e2e.get("tokens")}
        tv, tr = _target_ppl(e2e, v), _target_ppl(e2e, ref)
        if tv is not None and tr is not None and tr > 0:
            audit["target_ppl_increase_pct"] = 100 * (tv / tr - 1)
        points.append({
            "model": report.get("model"), "task": task, "items": items, "pair": [v, ref],
            "variants": [by_audit[v], by_audit[ref]],
            "audit": audit,
            "task_delta": delta,
            "sources": [report_source, results_source],
        })
    if not points:
        raise CalibrationInputError(f"{results_source}: no variant pair to calibrate on (needs two of bf16, "
                                    "float32 scales, UE8M0 scales, a plan)")
    return points
