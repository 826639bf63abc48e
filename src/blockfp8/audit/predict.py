"""The verdict's task-level prediction: what UE8M0 scales (or a plan) are expected to cost on a downstream task,
with an interval, and the safe/unsafe rule calibrated on measured downstream deltas.

Calibration data (``blockfp8/data/verdict_calibration.json``, or a user's file made by ``blockfp8 calibrate``) are
points, each a pair of variants of one model (e.g. FP8/UE8M0 vs FP8/float32) with what the end-to-end audit
measured on held-out text (Δ next-token accuracy in points, Δ perplexity in %) and what an evaluation measured on
a task (Δ accuracy with its paired McNemar p-value and discordant count, Δ perplexity with its interval).

Per task, ``calibrate`` fits the transfer ratio from audit to task (least squares through the origin) and sizes
the prediction interval: the audit's bootstrap interval times the ratio, widened by 1.96 x the root of the fit's
residual variance plus the task's own paired sampling variance at its size. The rule: a pair is *harmful* where
the task delta was negative and significant (McNemar p < ``ALPHA``); the loss boundary is the cut between the
predicted losses of harmless and harmful points that misclassifies fewest (midpoint). A verdict is unsafe when
the predicted task accuracy loss exceeds that boundary.

Task perplexity has a second predictor where the audit measured it: the perplexity of the held-out passages'
LAMBADA target words (``e2e.<v>_vs_fp32.target_ppl_increase``), the task's own positions. Points that carry it
(``audit.target_ppl_increase_pct``) get their own ratio fit; with at least ``MIN_TARGET_POINTS`` of them, a
prediction whose audit measured target words uses it (``ppl_increase_pct.from == "target_words"``). On SmolLM2
(H200) the every-position perplexity predicted +0.1% for a plan that cost +8.3% on LAMBADA; the target words
measured +5.7% for it (docs/audit.md).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from blockfp8.audit.e2e import ROUNDING

CALIBRATION_DATA = "verdict_calibration.json"
CALIBRATION_SCHEMA = "blockfp8.verdict-calibration/1"
ALPHA = 0.05
Z95 = 1.959963984540054
MIN_TARGET_POINTS = 2  # points with a target-word perplexity before that predictor is used


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class TaskCalibration:
    """What the points of one task say: transfer ratios, interval widths and the loss boundary."""

    task: str
    points: int
    acc_ratio: float  # task Δacc (pp) per audit Δ next-token acc (pp)
    acc_sd: float  # pp: residual and task sampling noise together
    ppl_ratio: float  # task Δppl (%) per audit Δppl (%)
    ppl_sd: float
    loss_boundary_pp: float  # predicted accuracy loss above which a variant is unsafe
    separable: bool  # the boundary classifies every point correctly
    models: tuple[str, ...]
    # task Δppl (%) per audit target-word Δppl (%), and its sd; None below MIN_TARGET_POINTS points with it
    target_ppl_ratio: float | None = None
    target_ppl_sd: float | None = None
    target_points: int = 0

    def as_dict(self) -> dict:
        return {"task": self.task, "points": self.points, "acc_ratio": self.acc_ratio, "acc_sd_pp": self.acc_sd,
                "ppl_ratio": self.ppl_ratio, "ppl_sd_pct": self.ppl_sd, "loss_boundary_pp": self.loss_boundary_pp,
                "separable": self.separable, "models": list(self.models), "target_ppl_ratio": self.target_ppl_ratio,
                "target_ppl_sd_pct": self.target_ppl_sd, "target_points": self.target_points}


_POINT_FIELDS = {"audit": ("acc_change_pp", "ppl_increase_pct"),
                 "task_delta": ("acc_change_pp", "mcnemar_p", "discordant", "ppl_increase_pct", "ppl_increase_ci")}
_OPTIONAL = ("ppl_increase_pct", "ppl_increase_ci")  # of task_delta: a generation task (GSM8K) has no perplexity


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CalibrationError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def check_points(points: Any, source: str) -> list[dict]:
    if not isinstance(points, list) or not points:
        raise CalibrationError(f"{source}: field points must be a non-empty list")
    for i, p in enumerate(points):
        where = f"{source}: points[{i}]"
        if not isinstance(p, dict):
            raise CalibrationError(f"{where} must be an object")
        for key in ("model", "task", "items", "pair", "audit", "task_delta"):
            if key not in p:
                raise CalibrationError(f"{where}.{key} is missing")
        if not isinstance(p["items"], int) or p["items"] <= 0:
            raise CalibrationError(f"{where}.items must be a positive integer")
        for section, keys in _POINT_FIELDS.items():
            for key in keys:
                value = p[section].get(key) if isinstance(p[section], dict) else None
                if section == "task_delta" and key in _OPTIONAL and value is None:
                    continue
                if key == "ppl_increase_ci":
                    if not isinstance(value, list) or len(value) != 2:
                        raise CalibrationError(f"{where}.{section}.{key} must be [low, high]")
                    for j, v in enumerate(value):
                        _number(v, f"{where}.{section}.{key}[{j}]")
                else:
                    _number(value, f"{where}.{section}.{key}")
        if isinstance(p["audit"], dict) and p["audit"].get("target_ppl_increase_pct") is not None:
            _number(p["audit"]["target_ppl_increase_pct"], f"{where}.audit.target_ppl_increase_pct")
    return points


def load_points(path: str | Path | None = None) -> tuple[list[dict], str]:
    """The calibration points and where they came from (the shipped file when ``path`` is None)."""
    if path is None:
        ref = resources.files("blockfp8") / "data" / CALIBRATION_DATA
        source, text = f"blockfp8/data/{CALIBRATION_DATA}", ref.read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CalibrationError(f"{source}: cannot read the calibration file ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != CALIBRATION_SCHEMA:
        raise CalibrationError(f"{source}: field schema must be {CALIBRATION_SCHEMA!r}")
    return check_points(data.get("points"), source), source


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ratio through the origin and the residual standard deviation."""
    sxx = sum(x * x for x in xs)
    ratio = sum(x * y for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    resid = [y - ratio * x for x, y in zip(xs, ys, strict=True)]
    sd = math.sqrt(sum(r * r for r in resid) / max(len(resid) - 1, 1))
    return ratio, sd


def _boundary(harmless: Sequence[float], harmful: Sequence[float], sd: float) -> tuple[float, bool]:
    """The cut on predicted loss that misclassifies fewest points (midpoint between neighbours), and whether it
    misclassifies none. Without harmful points nothing measured was harmful: the largest harmless loss (at least 0)
    plus 1.96 ``sd``, the prediction's own noise."""
    if not harmful:
        return max([0.0, *harmless]) + Z95 * sd, True
    if not harmless:
        return min(harmful) / 2, True
    values = sorted(set(harmless) | set(harmful))
    cuts = [values[0] / 2] + [(a + b) / 2 for a, b in zip(values[:-1], values[1:], strict=True)] + [values[-1] * 2]
    errors = [sum(h > c for h in harmless) + sum(h <= c for h in harmful) for c in cuts]
    best = min(range(len(cuts)), key=lambda i: (errors[i], -cuts[i]))
    return cuts[best], errors[best] == 0


def calibrate(points: Sequence[Mapping[str, Any]], task: str) -> TaskCalibration:
    mine = [p for p in points if p["task"] == task]
    if not mine:
        raise CalibrationError(f"no calibration points for task {task!r}")
    a_acc = [p["audit"]["acc_change_pp"] for p in mine]
    t_acc = [p["task_delta"]["acc_change_pp"] for p in mine]
    acc_ratio, acc_resid = _fit(a_acc, t_acc)
    # paired sampling noise of a task accuracy delta: sqrt(discordant) / items, in points
    acc_noise = [100 * math.sqrt(p["task_delta"]["discordant"]) / p["items"] for p in mine]
    with_ppl = [p for p in mine if p["task_delta"].get("ppl_increase_pct") is not None]
    ppl_ratio, ppl_resid = _fit([p["audit"]["ppl_increase_pct"] for p in with_ppl],
                                [p["task_delta"]["ppl_increase_pct"] for p in with_ppl])
    ppl_noise = [_ppl_noise(p) for p in with_ppl] or [0.0]
    with_target = [p for p in with_ppl if p["audit"].get("target_ppl_increase_pct") is not None]
    target_ratio = target_sd = None
    if len(with_target) >= MIN_TARGET_POINTS:
        target_ratio, target_resid = _fit([p["audit"]["target_ppl_increase_pct"] for p in with_target],
                                          [p["task_delta"]["ppl_increase_pct"] for p in with_target])
        target_sd = math.hypot(target_resid, sum(map(_ppl_noise, with_target)) / len(with_target))
    losses = [-acc_ratio * a for a in a_acc]
    harmful = [p["task_delta"]["mcnemar_p"] < ALPHA and p["task_delta"]["acc_change_pp"] < 0 for p in mine]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    acc_sd = math.hypot(acc_resid, mean(acc_noise))
    boundary, separable = _boundary([x for x, h in zip(losses, harmful, strict=True) if not h],
                                    [x for x, h in zip(losses, harmful, strict=True) if h], acc_sd)
    return TaskCalibration(task=task, points=len(mine), acc_ratio=acc_ratio,
                           acc_sd=acc_sd, ppl_ratio=ppl_ratio,
                           ppl_sd=math.hypot(ppl_resid, mean(ppl_noise)), loss_boundary_pp=boundary,
                           separable=separable, models=tuple(dict.fromkeys(p["model"] for p in mine)),
                           target_ppl_ratio=target_ratio, target_ppl_sd=target_sd, target_points=len(with_target))


def _ppl_noise(p: Mapping[str, Any]) -> float:
    """A point's task perplexity sampling sd (%), from its 95% interval."""
    lo, hi = p["task_delta"]["ppl_increase_ci"]
    return (hi - lo) / (2 * Z95)


def _interval(ratio: float, lo: float, hi: float, sd: float) -> list[float]:
    a, b = sorted((ratio * lo, ratio * hi))
    return [a - Z95 * sd, b + Z95 * sd]


def predict(delta: Mapping[str, Any], cal: TaskCalibration) -> dict:
    """The predicted task effect of one e2e comparison (``e2e["ue8m0_vs_fp32"]`` or a plan's), in points and %."""
    acc, acc_ci = 100 * delta["acc_change"], [100 * x for x in delta["acc_change_ci"]]
    ppl, ppl_ci = 100 * delta["ppl_increase"], [100 * x for x in delta["ppl_increase_ci"]]
    audit = {"next_token_acc_change_pp": {"value": acc, "ci": acc_ci}, "ppl_increase_pct": {"value": ppl, "ci": ppl_ci}}
    ppl_pred = {"value": cal.ppl_ratio * ppl, "interval": _interval(cal.ppl_ratio, *ppl_ci, cal.ppl_sd),
                "from": "all_positions"}
    if "target_ppl_increase" in delta:
        tppl, tppl_ci = 100 * delta["target_ppl_increase"], [100 * x for x in delta["target_ppl_increase_ci"]]
        audit["target_ppl_increase_pct"] = {"value": tppl, "ci": tppl_ci}
        if cal.target_ppl_ratio is not None:
            ppl_pred = {"value": cal.target_ppl_ratio * tppl,
                        "interval": _interval(cal.target_ppl_ratio, *tppl_ci, cal.target_ppl_sd),
                        "from": "target_words"}
    return {
        "task": cal.task,
        "acc_change_pp": {"value": cal.acc_ratio * acc, "interval": _interval(cal.acc_ratio, *acc_ci, cal.acc_sd)},
        "ppl_increase_pct": ppl_pred,
        "audit": audit,
        "unsafe": -cal.acc_ratio * acc > cal.loss_boundary_pp,
    }


@functools.lru_cache(maxsize=8)
def _shipped(task: str) -> tuple[TaskCalibration, str]:
    points, source = load_points(None)
    return calibrate(points, task), source


def calibration_for(task: str = "lambada", path: str | Path | None = None) -> tuple[TaskCalibration, str]:
    """The calibration for ``task`` from ``path`` (a user's file) or the shipped data, and its source."""
    if path is None:
        return _shipped(task)
    points, source = load_points(path)
    return calibrate(points, task), source


def prediction_section(e2e: Mapping[str, Any], cal: TaskCalibration, source: str) -> dict | None:
    """``summary.prediction``: the calibration used and the predicted effect of all-UE8M0 and of each plan, or
    None when the e2e section holds no next-token accuracy (a report from an older version)."""
    if "acc_change" not in e2e.get("ue8m0_vs_fp32", {}):
        return None
    out = {"calibration": {**cal.as_dict(), "source": source}}
    for key, value in e2e.items():
        if key.endswith("_vs_fp32") and not key.startswith(ROUNDING):  # the rounding floor is no candidate
            out[key[: -len("_vs_fp32")]] = predict(value, cal)
    return out


def leave_one_out(points: Sequence[Mapping[str, Any]], task: str) -> list[dict]:
    """Each point predicted from a calibration on the others (the audit's point value, no bootstrap interval):
    whether its measured task accuracy and perplexity deltas fall inside the predicted intervals."""
    mine = [p for p in points if p["task"] == task]
    out = []
    for i, p in enumerate(mine):
        cal = calibrate(mine[:i] + mine[i + 1:], task)
        a, q = p["audit"]["acc_change_pp"], p["audit"]["ppl_increase_pct"]
        acc = _interval(cal.acc_ratio, a, a, cal.acc_sd)
        row = {"pair": p["pair"], "acc_interval": acc, "acc": p["task_delta"]["acc_change_pp"]}
        row["acc_covered"] = acc[0] <= row["acc"] <= acc[1]
        if p["task_delta"].get("ppl_increase_pct") is not None:
            t = p["audit"].get("target_ppl_increase_pct")
            by_target = t is not None and cal.target_ppl_ratio is not None
            ppl = (_interval(cal.target_ppl_ratio, t, t, cal.target_ppl_sd) if by_target
                   else _interval(cal.ppl_ratio, q, q, cal.ppl_sd))
            row.update(ppl_interval=ppl, ppl=p["task_delta"]["ppl_increase_pct"],
                       ppl_covered=ppl[0] <= p["task_delta"]["ppl_increase_pct"] <= ppl[1],
                       ppl_from="target_words" if by_target else "all_positions")
        out.append(row)
    return out
