"""The audit report: one :class:`AuditReport` that every level returns and every printer reads (the text table,
report.md, the plots, ``--emit``, the guard's :func:`blockfp8.audit.verdict.load_verdict`). ``to_dict`` is the
report JSON (schema in docs/audit.md), ``from_dict`` / ``load`` read one back and name what is wrong with it.
Rendering lives in ``audit.render``; every file is written to a temporary name and renamed (``blockfp8.atomic``)."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from blockfp8 import atomic, paths
from blockfp8.audit.measures import INFLATION_LOG2_EDGES
from blockfp8.audit.predict import calibration_for, prediction_section
from blockfp8.audit.render import render_markdown, write_plots
from blockfp8.audit.verdict import (
    SAFE,
    SCHEMA,
    UNSAFE,
    Thresholds,
    VerdictError,
    layer_verdict,
    model_verdict,
    summarize,
)

REPORT_JSON, REPORT_MD = "report.json", "report.md"
# The optional sections, in the order they follow ``summary`` in the JSON; ``run`` always comes last.
SECTIONS = ("histograms", "calibration", "e2e", "plan", "checkpoint")


@dataclass(frozen=True)
class Summary:
    """The model-level numbers and the verdict with its reasons (``summary`` in the JSON)."""

    layers: int
    mean_bits_fp32: float
    mean_bits_ue8m0: float
    mean_bits_lost: float
    max_bits_lost: float
    worst_layer: str
    unsafe_layers: int
    unsafe_layer_share: float
    verdict: str  # SAFE | UNSAFE
    reasons: tuple[str, ...]
    thresholds: dict[str, float]  # Thresholds.as_dict() of the thresholds judged against
    prediction: dict[str, Any] | None = None  # the task-level prediction (audit.predict), when e2e was measured

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(reasons=list(self.reasons), thresholds=dict(self.thresholds))
        if self.prediction is None:
            del d["prediction"]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Summary:
        if not isinstance(d, dict) or d.get("verdict") not in (SAFE, UNSAFE):
            raise VerdictError(f"{where}: field summary.verdict must be 'safe' or 'unsafe'")
        names = [f.name for f in fields(cls) if f.name != "prediction"]
        # the fields a verdict's evidence quotes are named first
        for key in ("mean_bits_lost", "max_bits_lost", "worst_layer", *names):
            if key not in d:
                raise VerdictError(f"{where}: field summary.{key} is missing")
        return cls(**{**{k: d[k] for k in names}, "reasons": tuple(d["reasons"]), "thresholds": dict(d["thresholds"]),
                      "prediction": d.get("prediction")})


@dataclass(frozen=True)
class AuditReport:
    """One audit's result: per-layer rows (dicts whose keys depend on the level, see docs/audit.md), the summary
    with the verdict, the optional sections and ``run`` (timings, versions: the only part that differs between
    equivalent runs)."""

    model: str
    model_type: str | None
    level: str  # "checkpoint" | "weights" | "calibrated" | "calibrated+e2e"
    block_size: tuple[int, int]
    layers: tuple[dict[str, Any], ...]
    summary: Summary
    histograms: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    e2e: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None  # the per-layer scale-format plan (audit.scale_plan)
    checkpoint: dict[str, Any] | None = None
    run: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def safe(self) -> bool:
        return self.summary.verdict == SAFE

    @property
    def worst_row(self) -> dict[str, Any]:
        return next(r for r in self.layers if r["name"] == self.summary.worst_layer)

    def top_layers(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` layers that lose most, worst first."""
        return sorted(self.layers, key=lambda r: -r["bits_lost"])[:n]

    def with_run(self, **extra: Any) -> AuditReport:
        """The same report with ``extra`` added to its ``run`` section (e.g. the command line)."""
        return replace(self, run={**self.run, **extra})

    def to_dict(self) -> dict:
        """The report JSON as a dict, keys in the documented order."""
        d: dict[str, Any] = {
            "schema": self.schema,
            "model": self.model,
            "model_type": self.model_type,
            "level": self.level,
            "block_size": [int(self.block_size[0]), int(self.block_size[1])],
            "layers": [dict(r) for r in self.layers],
            "summary": self.summary.to_dict(),
        }
        for name in SECTIONS:
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        d["run"] = dict(self.run)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "audit report") -> AuditReport:
        """A report from its JSON dict; ``where`` (the file) starts every error message."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise VerdictError(f"{where}: not a blockfp8 audit report (field schema must be {SCHEMA!r})")
        summary = Summary.from_dict(d.get("summary"), where)
        for key in ("model", "level", "block_size", "layers"):
            if key not in d:
                raise VerdictError(f"{where}: field {key} is missing")
        return cls(model=d["model"], model_type=d.get("model_type"), level=d["level"],
                   block_size=(int(d["block_size"][0]), int(d["block_size"][1])), layers=tuple(d["layers"]),
                   summary=summary, **{name: d.get(name) for name in SECTIONS}, run=dict(d.get("run") or {}),
                   schema=d["schema"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> AuditReport:
        """Read a report.json (not its folder); errors name the file."""
        path = Path(path)
        try:
            data = json.loads(paths.read_bounded(path, 256 * 2**20, "audit report"))
            paths.check_depth(data)
        except paths.InputError as exc:
            raise VerdictError(f"{path}: {str(exc).removeprefix(f'{path}: ')}") from None
        except OSError as exc:
            raise VerdictError(f"{path}: cannot read the audit report ({exc.strerror or exc})") from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
            raise VerdictError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
        return cls.from_dict(data, str(path))


def build_report(
    *,
    model: str,
    level: str,
    block_size: Sequence[int],
    rows: Sequence[Mapping[str, Any]],
    thresholds: Thresholds,
    model_type: str | None = None,
    histograms: Mapping[str, Sequence[int]] | None = None,
    calibration: Mapping[str, Any] | None = None,
    e2e: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    plan: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
    given_thresholds: Collection[str] | None = None,
    verdict_calibration: str | os.PathLike | None = None,
    task: str = "lambada",
) -> AuditReport:
    """Per-layer verdicts, the summary with the model verdict and its reasons. Everything except ``run`` (timings,
    world size, versions) is a pure function of the measurements, so a distributed run gives the same report as a
    single process. With an e2e section the verdict follows the task-level prediction for ``task``, calibrated by
    ``verdict_calibration`` (a ``blockfp8 calibrate`` file; default the shipped data); ``given_thresholds`` names
    the thresholds the user set (see ``verdict.model_verdict``)."""
    layers = tuple({**r, "verdict": layer_verdict(float(r["bits_lost"]), thresholds)} for r in rows)
    numbers = summarize(layers, thresholds)
    prediction = None
    if e2e:
        cal, source = calibration_for(task, verdict_calibration)
        prediction = prediction_section(e2e, cal, source)
    verdict, reasons = model_verdict(numbers, thresholds, e2e, prediction, given_thresholds)
    report = AuditReport(
        model=model,
        model_type=model_type,
        level=level,
        block_size=(int(block_size[0]), int(block_size[1])),
        layers=layers,
        summary=Summary(**numbers, verdict=verdict, reasons=tuple(reasons), thresholds=thresholds.as_dict(),
                        prediction=prediction),
        histograms={"scale_inflation": {"log2_edges": list(INFLATION_LOG2_EDGES),
                                        **{k: list(v) for k, v in histograms.items()}}} if histograms else None,
        calibration=dict(calibration) if calibration else None,
        e2e=dict(e2e) if e2e else None,
        plan=dict(plan) if plan else None,
        checkpoint=dict(checkpoint) if checkpoint else None,
        run=dict(run or {}),
    )
    json.dumps(report.to_dict(), allow_nan=False)  # fail here, naming nothing half-written, if a number is not finite
    return report


def rejudge(report: AuditReport, thresholds: Thresholds | None = None, **verdict: Any) -> AuditReport:
    """The same measurements judged again: other thresholds, or another verdict calibration (``verdict``:
    ``given_thresholds``, ``verdict_calibration``, ``task``). Nothing is measured again."""
    thresholds = thresholds or Thresholds.from_dict(report.summary.thresholds)
    rows = [{k: v for k, v in r.items() if k != "verdict"} for r in report.layers]
    hist = (report.histograms or {}).get("scale_inflation")
    return build_report(model=report.model, level=report.level, block_size=report.block_size, rows=rows,
                        thresholds=thresholds, model_type=report.model_type,
                        histograms={k: v for k, v in hist.items() if k != "log2_edges"} if hist else None,
                        calibration=report.calibration, e2e=report.e2e, checkpoint=report.checkpoint,
                        plan=report.plan, run=report.run, **verdict)


def comparable(report: Mapping[str, Any]) -> dict:
    """A report JSON dict without its ``run`` section: what must be identical between equivalent runs."""
    return {k: v for k, v in report.items() if k != "run"}


def write_report_folder(report: AuditReport, folder: str | os.PathLike) -> list[Path]:
    """report.json, report.md and the plots, each written atomically into ``folder`` (created if needed)."""
    folder = Path(folder)
    written = [atomic.write_json(folder / REPORT_JSON, report.to_dict()),
               atomic.write_text(folder / REPORT_MD, render_markdown(report))]
    written += write_plots(report, folder)
    return written
