"""Verdicts: is UE8M0 (power-of-two scales, what DeepGEMM takes on Blackwell) safe for this layer and this model?

A layer is ``unsafe`` when its bits lost exceed ``layer_bits_lost``. The model verdict has two rules:

* with an end-to-end measurement that includes next-token accuracy, the task rule (``audit.predict``): unsafe when
  the predicted downstream accuracy loss of all-UE8M0 against float32 scales exceeds the loss boundary calibrated
  on measured task deltas. The thresholds below then apply only where the user set them (``given``), each adding
  its reason as before;
* otherwise (checkpoint, weights-only, calibrated-only levels) the thresholds: unsafe when the mean bits lost
  exceeds ``mean_bits_lost``, more than ``unsafe_layer_share`` of the layers are unsafe, or (end to end, when
  measured) perplexity over FP8/float32 rises by more than ``ppl_increase`` / the KL divergence to the
  unquantized model by more than ``kl_increase`` (relative), each with its 95% interval's lower end above 0.

The defaults are chosen from our own measurements; docs/audit.md says how. Each threshold's ``help`` (its field
metadata) is the one description the CLI flags show. ``load_verdict`` turns a report JSON into the
:class:`blockfp8.config.AuditVerdict` the accuracy guard reads, with the report's per-layer plan when it has one
(``audit.report`` builds on this module, hence the imports inside the functions that read a report).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockfp8.config import AuditVerdict

if TYPE_CHECKING:
    from blockfp8.audit.report import AuditReport

SAFE, UNSAFE = "safe", "unsafe"
SCHEMA = "blockfp8.audit/1"


class VerdictError(ValueError):
    """A report or threshold is unusable; the message names the file or field."""


def _threshold(default: float, meaning: str) -> Any:
    return field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class Thresholds:
    layer_bits_lost: float = _threshold(0.25, "a layer is unsafe above this many bits lost")
    mean_bits_lost: float = _threshold(0.10, "the model is unsafe above this mean bits lost per layer")
    unsafe_layer_share: float = _threshold(0.10, "the model is unsafe when more than this share of layers is unsafe")
    ppl_increase: float = _threshold(
        0.01, "the model is unsafe when UE8M0 raises perplexity over float32 scales by more (relative)")
    kl_increase: float = _threshold(
        0.25, "the model is unsafe when UE8M0 raises the KL to the unquantized model by more (relative)")

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise VerdictError(f"threshold {f.name}={v!r} must be a finite number >= 0")
            object.__setattr__(self, f.name, float(v))
        if self.unsafe_layer_share > 1:
            raise VerdictError(f"threshold unsafe_layer_share={self.unsafe_layer_share} must be <= 1")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise VerdictError(f"unknown thresholds {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))


def layer_verdict(bits_lost: float, thresholds: Thresholds) -> str:
    return UNSAFE if bits_lost > thresholds.layer_bits_lost else SAFE


def summarize(rows: Sequence[Mapping[str, Any]], thresholds: Thresholds) -> dict:
    """Summary over layer rows (each with name, bits_fp32, bits_ue8m0, bits_lost, verdict)."""
    if not rows:
        raise VerdictError("no layers to summarize")
    lost = [float(r["bits_lost"]) for r in rows]
    worst = max(rows, key=lambda r: r["bits_lost"])
    unsafe = [r["name"] for r in rows if r["verdict"] == UNSAFE]
    return {
        "layers": len(rows),
        "mean_bits_fp32": sum(float(r["bits_fp32"]) for r in rows) / len(rows),
        "mean_bits_ue8m0": sum(float(r["bits_ue8m0"]) for r in rows) / len(rows),
        "mean_bits_lost": sum(lost) / len(lost),
        "max_bits_lost": max(lost),
        "worst_layer": worst["name"],
        "unsafe_layers": len(unsafe),
        "unsafe_layer_share": len(unsafe) / len(rows),
    }


def _threshold_reasons(summary: Mapping[str, Any], t: Thresholds, e2e: Mapping[str, Any] | None,
                       given: Collection[str]) -> list[str]:
    reasons: list[str] = []
    if "mean_bits_lost" in given and summary["mean_bits_lost"] > t.mean_bits_lost:
        reasons.append(f"mean bits lost per layer {summary['mean_bits_lost']:.3f} > {t.mean_bits_lost:g}")
    if "unsafe_layer_share" in given and summary["unsafe_layer_share"] > t.unsafe_layer_share:
        reasons.append(f"{summary['unsafe_layers']}/{summary['layers']} layers lose more than {t.layer_bits_lost:g} "
                       f"bit (share {summary['unsafe_layer_share']:.2f} > {t.unsafe_layer_share:g}); worst "
                       f"{summary['worst_layer']} {summary['max_bits_lost']:.3f} bit")
    if e2e:
        d = e2e["ue8m0_vs_fp32"]
        ppl, ppl_ci = d["ppl_increase"], d["ppl_increase_ci"]
        if "ppl_increase" in given and ppl > t.ppl_increase and ppl_ci[0] > 0:
            reasons.append(f"perplexity +{100 * ppl:.2f}% vs FP8/float32 (95% CI {100 * ppl_ci[0]:.2f}..."
                           f"{100 * ppl_ci[1]:.2f}%) > {100 * t.ppl_increase:g}%")
        kl, kl_ci = d["kl_increase"], d["kl_increase_ci"]
        if "kl_increase" in given and kl > t.kl_increase and kl_ci[0] > 0:
            reasons.append(f"KL to the unquantized model +{100 * kl:.1f}% vs FP8/float32 (95% CI "
                           f"{100 * kl_ci[0]:.1f}...{100 * kl_ci[1]:.1f}%) > {100 * t.kl_increase:g}%")
    return reasons


def prediction_line(p: Mapping[str, Any], what: str = "UE8M0") -> str:
    """One line: the predicted task effect of ``p`` (``summary.prediction[...]``) with its intervals."""
    a, q = p["acc_change_pp"], p["ppl_increase_pct"]
    return (f"predicted {p['task']} effect of {what} vs float32 scales: accuracy {a['value']:+.2f} pp "
            f"[{a['interval'][0]:+.2f}, {a['interval'][1]:+.2f}], perplexity {q['value']:+.2f}% "
            f"[{q['interval'][0]:+.2f}, {q['interval'][1]:+.2f}]"
            + (" (from the target words)" if q.get("from") == "target_words" else ""))


def model_verdict(summary: Mapping[str, Any], thresholds: Thresholds, e2e: Mapping[str, Any] | None = None,
                  prediction: Mapping[str, Any] | None = None, given: Collection[str] | None = None
                  ) -> tuple[str, list[str]]:
    """(verdict, reasons): every reason names the number and the threshold it crossed (or, if safe, stayed under).
    ``given``: the thresholds the user set (None: those that differ from the defaults)."""
    t = thresholds
    if given is None:
        given = {k for k, v in t.as_dict().items() if v != getattr(Thresholds(), k)}
    if prediction is None:  # no task-level prediction: every threshold applies
        given = {f.name for f in fields(Thresholds)}
    reasons = _threshold_reasons(summary, t, e2e, given)
    if prediction is not None:
        p, cal = prediction["ue8m0"], prediction["calibration"]
        bound = f"calibrated loss boundary {cal['loss_boundary_pp']:.2f} pp ({cal['points']} points: " \
                f"{', '.join(cal['models'])})"
        line = prediction_line(p)
        if p["unsafe"]:
            reasons.insert(0, f"{line}; loss {-p['acc_change_pp']['value']:.2f} pp > {bound}")
    if reasons:
        return UNSAFE, reasons
    if prediction is not None:
        return SAFE, [f"{line}; loss within the {bound}"]
    ok = [f"mean bits lost {summary['mean_bits_lost']:.3f} <= {t.mean_bits_lost:g}",
          f"unsafe layers {summary['unsafe_layers']}/{summary['layers']} (share <= {t.unsafe_layer_share:g})"]
    if e2e:
        d = e2e["ue8m0_vs_fp32"]
        ok.append(f"perplexity {100 * d['ppl_increase']:+.2f}%, KL {100 * d['kl_increase']:+.1f}% vs FP8/float32 "
                  "within limits")
    return SAFE, ok


def evidence(report: AuditReport | Mapping[str, Any], source: str | None = None) -> str:
    """One line saying what was measured, for warnings and ``explain``. ``report`` may also be a report JSON dict."""
    from blockfp8.audit.report import AuditReport

    if not isinstance(report, AuditReport):
        report = AuditReport.from_dict(report, source or "audit report")
    s = report.summary
    calib = report.calibration or {}
    what = f"blockfp8 audit ({report.level}"
    if calib:
        what += f", {calib['samples']}x{calib['seq_len']} tokens of {calib['source']}"
    what += f") of {report.model}: {s.verdict}; mean {s.mean_bits_lost:.3f} bit lost per layer, max " \
            f"{s.max_bits_lost:.3f} ({s.worst_layer})"
    if report.e2e:
        d = report.e2e["ue8m0_vs_fp32"]
        what += f"; end to end UE8M0 vs float32 perplexity {100 * d['ppl_increase']:+.2f}%"
    if report.plan:
        p = report.plan
        what += f"; plan: {len(p['float32_layers'])} layers on float32 scales, " \
                f"{100 * p['ue8m0_flop_share']:.1f}% of GEMM FLOPs on UE8M0"
    if source:
        what += f" [{source}]"
    return what


def load_verdict(path: str | Path) -> AuditVerdict:
    """The guard's input from an audit report JSON (a report folder's report.json, or the folder itself)."""
    from blockfp8.audit.report import REPORT_JSON, AuditReport

    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    return verdict_of(AuditReport.load(path), str(path))


def verdict_of(report: AuditReport, source: str | None = None) -> AuditVerdict:
    """The model verdict and, when the report has a plan, the layers it keeps on float32 scales and those it lets
    run UE8M0 (``source``: the file, named in the evidence and in errors)."""
    plan = report.plan
    if plan is None:
        return AuditVerdict(ue8m0_ok=report.safe, evidence=evidence(report, source), model_type=report.model_type)
    float32 = frozenset(plan["float32_layers"])
    unknown = float32 - {r["name"] for r in report.layers}
    if unknown:
        raise VerdictError(f"{source or 'audit report'}: field plan.float32_layers names layers the report does not "
                           f"have: {', '.join(sorted(unknown)[:3])}")
    return AuditVerdict(ue8m0_ok=report.safe, evidence=evidence(report, source), model_type=report.model_type,
                        float32_layers=float32,
                        ue8m0_layers=frozenset(r["name"] for r in report.layers) - float32)
