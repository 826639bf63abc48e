"""The three audit levels as functions that return a finished :class:`~blockfp8.audit.report.AuditReport`:
checkpoint (``audit_checkpoint``), weights-only (``audit_model_weights``), calibrated with an optional end-to-end
comparison (``audit_model``). The CLI (``blockfp8 audit`` / ``blockfp8 check``) is a thin layer over these."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from blockfp8.audit import distributed
from blockfp8.audit.measures import inflation_histogram
from blockfp8.audit.plan import UNQUANTIZED_TENSORS, OpenCheckpoint, plan_checkpoint
from blockfp8.audit.reading import audit_jobs, read_jobs
from blockfp8.audit.report import AuditReport, build_report
from blockfp8.audit.scale_plan import PlanTolerance
from blockfp8.audit.speed import SpeedReport, timed, warm_up
from blockfp8.audit.verdict import Thresholds
from blockfp8.formats.hf_config import text_model_type
from blockfp8.platform import run_environment


def run_info(device: str, seconds: float, **extra: Any) -> dict:
    """The report's ``run`` section: where it ran (``platform.run_environment``), how long, and ``extra``."""
    return {**run_environment(device), "seconds": round(seconds, 3), **extra}


def _progress(enabled: bool, desc: str, unit: str):
    if not enabled:
        return None
    from blockfp8.log import progress

    return lambda it: progress(it, desc, unit)


# --------------------------------------------------------------------------------------------- checkpoint


def audit_checkpoint(
    path: str | Path,
    *,
    block: Sequence[int] | None = None,
    skip: Sequence[str] = UNQUANTIZED_TENSORS,
    thresholds: Thresholds | None = None,
    device: str = "cpu",
    measure_read: bool = False,
    progress: bool = False,
    dist: distributed.DistContext | None = None,
) -> AuditReport | None:
    """The checkpoint level over a safetensors file or folder. With ``dist``, every rank audits its share and rank 0
    returns the report (other ranks return None). ``measure_read`` also times reading the same tensors (the best of
    a pass before and a pass after the audit, each through a fresh memory map) and reports the rate ratio."""
    thresholds = thresholds or Thresholds()
    t_start = time.perf_counter()
    with OpenCheckpoint(path) as ck:
        plan = plan_checkpoint(ck, block, skip)
    jobs = list(plan.jobs)
    mine = list(range(len(jobs)))
    if dist is not None:
        mine = distributed.assign([j.nbytes for j in jobs], dist.world_size)[dist.rank]
    my_jobs = [jobs[i] for i in mine]

    def read_pass() -> float:
        with OpenCheckpoint(path) as c:
            return timed(lambda: read_jobs(c, my_jobs, device), device)[1]

    if measure_read:  # steady state: load the kernels both passes use (CUDA loads modules lazily) before timing
        warm_up(device, plan.block_size)
    read_times = [read_pass()] if measure_read else []
    with OpenCheckpoint(path) as ck:
        rows, audit_s = timed(lambda: audit_jobs(ck, my_jobs, plan.block_size, device,
                                                 _progress(progress, "auditing tensors", "tensor")), device)
    if measure_read:
        read_times.append(read_pass())
    local = {"rows": dict(zip(mine, rows, strict=True)), "audit_s": audit_s,
             "read_s": min(read_times) if read_times else None}
    parts = [local] if dist is None else distributed.gather(local, dist)
    if parts is None:
        return None
    by_index = {i: r for part in parts for i, r in part["rows"].items()}
    ordered = [by_index[i] for i in range(len(jobs))]
    hist = [sum(c) for c in zip(*(r.inflation_hist for r in ordered), strict=True)]
    nbytes = sum(j.nbytes for j in jobs)
    run: dict[str, Any] = {"world_size": 1 if dist is None else dist.world_size}
    if measure_read:
        # ranks work in parallel: the slowest rank's time is the run's time
        speed = SpeedReport(nbytes, max(p["read_s"] for p in parts), max(p["audit_s"] for p in parts))
        run["speed"] = speed.as_dict()
    else:
        run["audit_s"] = max(p["audit_s"] for p in parts)
    return build_report(
        model=str(path),
        model_type=plan.model_type,
        level="checkpoint",
        block_size=plan.block_size,
        rows=[r.as_dict() for r in ordered],
        thresholds=thresholds,
        histograms={"weights": hist},
        checkpoint={"path": str(path), "kind": plan.kind, "quant_method": plan.quant_method,
                    "scale_fmt": plan.scale_fmt, "tensors": len(jobs), "bytes": nbytes, "skipped": plan.skipped},
        run=run_info(device, time.perf_counter() - t_start, **run),
    )


# --------------------------------------------------------------------------------------------- models


def model_type_of(model) -> str | None:
    return text_model_type(getattr(model, "config", None))


def audit_model_weights(model, name: str, *, block: Sequence[int] = (128, 128), thresholds: Thresholds | None = None,
                        device: str = "cpu", progress: bool = False) -> AuditReport:
    """The weights-only level: every linear weight (lm_head excluded) quantized with float32 and UE8M0 scales."""
    from blockfp8.audit import weights
    from blockfp8.quant import reference as ref

    thresholds = thresholds or Thresholds()
    t0 = time.perf_counter()
    named = weights.linear_weights(model)
    items = _progress(progress, "auditing weights", "tensor")
    rows, hist = [], [0] * 64
    for n, w in items(named) if items else named:
        w32 = w.detach().to(torch.float32)
        rows.append(weights.audit_weight(n, w32, block).as_dict())
        s32 = ref.quantize_weight(w32, block, "float32", name=n)[1]
        s8 = ref.quantize_weight(w32, block, "ue8m0", name=n)[1]
        hist = [a + b for a, b in zip(hist, inflation_histogram(s8 / s32), strict=True)]
    return build_report(model=name, model_type=model_type_of(model), level="weights", block_size=block, rows=rows,
                        thresholds=thresholds, histograms={"weights": hist},
                        run=run_info(device, time.perf_counter() - t0))


def audit_model(
    model,
    tokenizer,
    name: str,
    *,
    calib: int,
    seq_len: int,
    eval_windows: int = 0,
    block: Sequence[int] = (128, 128),
    thresholds: Thresholds | None = None,
    device: str = "cpu",
    batch_tokens: int = 2048,
    n_boot: int = 2000,
    progress: bool = False,
    data_dir=None,
    plan: PlanTolerance | None = None,
    plan_windows: int = 16,
    verdict: Mapping[str, Any] | None = None,
    roundings: int = 2,
) -> AuditReport:
    """The calibrated level on ``calib`` windows of ``seq_len`` tokens, plus the end-to-end level on
    ``eval_windows`` held-out windows when > 0. With ``plan`` (and an end-to-end level) it also chooses a per-layer
    scale-format plan on the first ``plan_windows`` calibration windows and measures it end to end
    (``audit.scale_plan``), beside ``roundings`` re-roundings of all-float32 (the rounding floor, ``audit.e2e``).
    ``verdict``: keyword arguments for ``build_report`` (given_thresholds, verdict_calibration, task)."""

    thresholds = thresholds or Thresholds()
    t0 = time.perf_counter()
    # float32 GEMMs must be float32 (TF32 would add an error of the size we measure)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _audit_model(model, tokenizer, name, calib, seq_len, eval_windows, block, thresholds, device,
                            batch_tokens, n_boot, progress, data_dir, t0, plan, plan_windows, dict(verdict or {}),
                            roundings)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _choose_plan(model, rows, ids, block, batch, tolerance, progress, roundings):
    """(float32 layers, search steps, selection tokens, the tolerance used): with ``tolerance.from_rounding_floor``
    its KL share comes from ``roundings`` re-roundings of all-float32 on the selection windows."""
    from blockfp8.audit import e2e, scale_plan, sensitivity

    scores = None
    if tolerance.rank in scale_plan.FISHER_RANKINGS:
        scores = sensitivity.fisher_sensitivity(model, ids, block, batch_size=max(1, batch // 2))
        for r in rows:
            r["ue8m0_sensitivity"] = scores[r["name"]]
    sim = e2e.FP8Simulator(model, block)
    selection = scale_plan.SelectionSet(model, ids, sim, batch)
    if tolerance.from_rounding_floor:
        tolerance = tolerance.with_floor(selection.rounding_shares(roundings))
    float32_layers, steps = scale_plan.choose(rows, selection, tolerance, scores)
    if progress:
        from blockfp8.log import step

        step(f"plan: {len(float32_layers)} layers on float32 scales after {len(steps)} measured plans")
    return float32_layers, steps, int(ids.numel()), tolerance


def _audit_model(model, tokenizer, name, calib, seq_len, eval_windows, block, thresholds, device, batch_tokens,
                 n_boot, progress, data_dir, t0, plan, plan_windows, verdict, roundings) -> AuditReport:
    from blockfp8.audit import calibrated, e2e, scale_plan, text

    cw = text.windows(tokenizer, calib, seq_len, "calibration", data_dir)
    batch = max(1, batch_tokens // seq_len)
    rows, hists = calibrated.audit_calibrated(model, cw.ids, block, batch_size=batch,
                                              progress=_progress(progress, "calibrating", "batch"))
    t_calib = time.perf_counter() - t0
    layer_rows = [r.as_dict() for r in rows]
    e2e_result = plan_result = None
    timings = {"calibrated_s": round(t_calib, 3)}
    if eval_windows > 0:
        ew = text.windows(tokenizer, eval_windows, seq_len, "evaluation", data_dir)
        plans = {}
        if plan is not None:
            t1 = time.perf_counter()
            f32, steps, sel_tokens, plan = _choose_plan(model, layer_rows, cw.ids[:plan_windows], block,
                                                        max(1, batch // 2), plan, progress, roundings)
            plans[scale_plan.PLAN] = f32
            timings["plan_s"] = round(time.perf_counter() - t1, 3)
        t1 = time.perf_counter()
        sums = e2e.measure(model, ew.ids, block, batch_size=max(1, batch // 2), plans=plans, targets=ew.targets,
                           progress=_progress(progress, "end to end", "batch"),
                           roundings=roundings if plan is not None else 0)
        e2e_result = e2e.summarize(sums, seq_len, n_boot=n_boot)
        e2e_result["source"] = ew.source
        e2e_result["model_dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
        timings["e2e_s"] = round(time.perf_counter() - t1, 3)
        if plan is not None:
            plan_result = scale_plan.plan_section(layer_rows, f32, e2e_result, steps, plan, sel_tokens)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return build_report(
        model=name,
        model_type=model_type_of(model),
        level="calibrated+e2e" if e2e_result else "calibrated",
        block_size=block,
        rows=layer_rows,
        thresholds=thresholds,
        histograms=hists,
        calibration={"samples": calib, "seq_len": seq_len, "tokens": cw.tokens, "source": cw.source,
                     "passages": cw.passages, "model_dtype": dtype},
        e2e=e2e_result,
        plan=plan_result,
        run=run_info(device, time.perf_counter() - t0, **timings),
        **verdict,
    )
