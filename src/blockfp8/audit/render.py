"""Rendering an :class:`~blockfp8.audit.report.AuditReport` for people: the text table and summaries the CLI prints
(``blockfp8 audit``, ``blockfp8 check``), report.md, and the two PNG plots (bits lost per layer; scale-inflation
histogram). Nothing here measures or judges; everything reads the report."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from blockfp8 import atomic
from blockfp8.audit.verdict import UNSAFE, prediction_line

if TYPE_CHECKING:
    from blockfp8.audit.report import AuditReport

PLOT_BITS, PLOT_INFLATION = "bits_lost.png", "scale_inflation.png"
# Per-level columns of the text table, after name, bits_fp32, bits_ue8m0, bits_lost and verdict.
TABLE_COLUMNS = {
    "checkpoint": ("rel_err_ue8m0", "scale_inflation_mean", "pow2_block_share"),
    "weights": ("rel_err_fp32", "rel_err_ue8m0", "scale_inflation_mean", "scale_inflation_max"),
}
CALIBRATED_COLUMNS = ("act_bits_lost", "weight_bits_lost", "act_crest", "act_outlier_channels", "act_group_dominance")


def format_table(headers: Sequence[str], rows: Sequence[Sequence], floatfmt: str = ".4g") -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "inf" if math.isinf(v) else format(v, floatfmt)
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=False)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        cells = (v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def verdict_lines(report: AuditReport) -> list[str]:
    s = report.summary
    head = f"verdict for UE8M0 scales: {s.verdict.upper()}"
    return [head, *(f"  - {r}" for r in s.reasons)]


_VARIANT_LABELS = (("fp32", "FP8 float32 scales"), ("ue8m0", "FP8 UE8M0 scales "), ("plan", "FP8 per-layer plan"))


def _acc(d: dict, v: str) -> str:
    return f"  next-token accuracy {d[f'acc_{v}']:.4f}" if f"acc_{v}" in d else ""


def _ci(d: dict, unit: str, fmt: str = "+.2f") -> str:
    return f"{format(d['value'], fmt)}{unit} [{format(d['ci'][0], fmt)}, {format(d['ci'][1], fmt)}]"


def plan_lines(report: AuditReport, shown: int = 12) -> list[str]:
    """The per-layer plan: its float32 layers, the FLOP share left on UE8M0, its held-out deltas beside
    all-UE8M0's, and its predicted task effect."""
    plan = report.plan
    if not plan:
        return []
    f32, e = plan["float32_layers"], plan["e2e"]
    names = ", ".join(f32[:shown]) + (f" ... ({len(f32) - shown} more)" if len(f32) > shown else "")
    u = e["all_ue8m0"]
    tol = plan["tolerance"]
    tol_text = (f"the rounding floor on the selection windows, {100 * tol['kl_share']:.1f}%"
                if tol.get("from_rounding_floor") else f"{100 * tol['kl_share']:g}%")
    out = [f"per-layer plan: {len(f32)} of {plan['layers']} layers keep float32 scales, "
           f"{100 * plan['ue8m0_flop_share']:.1f}% of GEMM FLOPs stay on UE8M0 (tolerance: "
           f"{tol_text} of all-UE8M0's KL increase)",
           f"  float32 layers: {names or 'none'}",
           f"  held out, vs all-float32: plan KL {_ci(e['kl_increase_pct'], '%', '+.1f')}, perplexity "
           f"{_ci(e['ppl_increase_pct'], '%')}; all-UE8M0 KL {_ci(u['kl_increase_pct'], '%', '+.1f')}, perplexity "
           f"{_ci(u['ppl_increase_pct'], '%')}",
           f"  the plan keeps {100 * e['kl_share_of_ue8m0']:.1f}% of all-UE8M0's KL increase: "
           f"{'within' if plan['within_tolerance'] else 'OUTSIDE'} the tolerance"]
    if "target_kl_share_of_ue8m0" in e:
        out.append(f"  at the target-word positions it keeps {100 * e['target_kl_share_of_ue8m0']:.1f}% of "
                   f"all-UE8M0's KL increase (plan KL {_ci(e['target_kl_increase_pct'], '%', '+.1f')}, all-UE8M0 "
                   f"{_ci(u['target_kl_increase_pct'], '%', '+.1f')})")
    if "target_ppl_increase_pct" in e and "target_ppl_increase_pct" in u:
        words = plan.get("target_words") or {}
        out.append(f"  on the passages' target words (LAMBADA's task positions), perplexity vs all-float32: plan "
                   f"{_ci(e['target_ppl_increase_pct'], '%')}, all-UE8M0 {_ci(u['target_ppl_increase_pct'], '%')}"
                   + ("; the plan is WORSE than all-UE8M0 there: check it on your task (blockfp8 eval) before using "
                      "it" if words.get("worse_than_all_ue8m0") else ""))
    floor = plan.get("rounding_floor")
    if floor:
        shares = floor["kl_share_of_ue8m0"]
        out.append(f"  rounding floor: all-float32 rounded anew at the same precision ({floor['roundings']} "
                   f"roundings) keeps {_span(shares, 100)}% of all-UE8M0's KL increase, perplexity "
                   f"{_span(floor['ppl_increase_pct'])}%"
                   + (f", target-word perplexity {_span(floor['target_ppl_increase_pct'])}%"
                      if "target_ppl_increase_pct" in floor else "")
                   + ("; the plan is inside that band: as close to all-float32 as another float32 rounding"
                      if floor.get("plan_within") else "; the plan is outside that band"))
    pred = (report.summary.prediction or {}).get("plan")
    if pred:
        out.append("  " + prediction_line(pred, "the plan"))
    return out


def _span(values, scale: float = 1.0) -> str:
    lo, hi = scale * min(values), scale * max(values)
    return f"{lo:+.1f}" if lo == hi else f"{lo:+.1f} to {hi:+.1f}"


# --------------------------------------------------------------------------------------------- text (blockfp8 audit)


def render_text(report: AuditReport, top: int = 0) -> str:
    """The layer table (every layer, or the ``top`` that lose most), the summary, the end-to-end numbers and the
    speed when measured, and the verdict with its reasons."""
    rows = report.layers
    shown = report.top_layers(top) if top else rows
    headers = ["layer", "bits_fp32", "bits_ue8m0", "bits_lost", "verdict"]
    keys = list(TABLE_COLUMNS.get(report.level, CALIBRATED_COLUMNS))
    table = [[r["name"], r["bits_fp32"], r["bits_ue8m0"], r["bits_lost"], r["verdict"], *(r[k] for k in keys)]
             for r in shown]
    s = report.summary
    out = [f"{report.level} audit of {report.model}: block {list(report.block_size)}, {len(rows)} layers",
           format_table(headers + keys, table),
           f"\nsummary: mean bits float32 {s.mean_bits_fp32:.3f}, UE8M0 {s.mean_bits_ue8m0:.3f}; bits lost mean "
           f"{s.mean_bits_lost:.3f}, max {s.max_bits_lost:.3f} ({s.worst_layer}); {s.unsafe_layers} of "
           f"{s.layers} layers unsafe"]
    e2e = report.e2e
    if e2e:
        out.append(f"end to end ({e2e['windows']} x {e2e['seq_len']} held-out tokens, 95% bootstrap intervals):")
        b = e2e["base"]
        out.append(f"  unquantized        perplexity {b['ppl_base']:.3f}" + _acc(b, "base"))
        for v, label in _VARIANT_LABELS:
            if v not in e2e:
                continue
            d = e2e[v]
            out.append(f"  {label} perplexity {d[f'ppl_{v}']:.3f}  KL {d[f'kl_{v}']:.4f} "
                       f"[{d[f'kl_{v}_ci'][0]:.4f}, {d[f'kl_{v}_ci'][1]:.4f}]  top-1 {d[f'top1_{v}']:.4f}"
                       + _acc(d, v))
        d = e2e["ue8m0_vs_fp32"]
        out.append(f"  UE8M0 vs float32: perplexity {100 * d['ppl_increase']:+.2f}% "
                   f"[{100 * d['ppl_increase_ci'][0]:+.2f}, {100 * d['ppl_increase_ci'][1]:+.2f}], KL "
                   f"{100 * d['kl_increase']:+.1f}% [{100 * d['kl_increase_ci'][0]:+.1f}, "
                   f"{100 * d['kl_increase_ci'][1]:+.1f}]")
    out += plan_lines(report)
    speed = report.run.get("speed")
    if speed:
        out.append(f"speed: read {speed['read_gb_per_s']:.2f} GB/s, audit {speed['audit_gb_per_s']:.2f} GB/s: the "
                   f"audit runs at {speed['audit_over_read_rate']:.2f}x the rate of merely reading "
                   f"({speed['bytes'] / 1e6:.1f} MB)")
    out += verdict_lines(report)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- text (blockfp8 check)


def render_check_summary(report: AuditReport) -> str:
    """The short summary ``blockfp8 check`` prints: for a checkpoint the loss per tensor and the audit's speed, for a
    model the GEMM SNR, the five layers that lose most with the statistics that explain them, and the end-to-end
    numbers; then the verdict."""
    s = report.summary
    if report.level == "checkpoint":
        speed = report.run.get("speed", {})
        out = [f"\n== checkpoint {report.model}: {s.layers} tensors ({report.checkpoint['kind']}) ==",
               f"requantizing the scales to UE8M0: bits lost per tensor mean {s.mean_bits_lost:.3f}, max "
               f"{s.max_bits_lost:.3f} ({s.worst_layer}); audit at {speed.get('audit_over_read_rate', 0):.2f}x the "
               "rate of reading the tensors"]
        return "\n".join(out + verdict_lines(report))
    calib = report.calibration or {}
    out = [f"\n== {report.model} ({report.model_type}): {report.level} audit, {s.layers} linear layers, "
           f"{calib.get('tokens', 0)} calibration tokens ==",
           f"GEMM output SNR: float32 scales {s.mean_bits_fp32:.2f} bits, UE8M0 {s.mean_bits_ue8m0:.2f} bits "
           f"(mean over layers); lost per layer: mean {s.mean_bits_lost:.3f}, max {s.max_bits_lost:.3f} "
           f"({s.worst_layer}); {s.unsafe_layers} layers above {s.thresholds['layer_bits_lost']:g} bit"]
    top = report.top_layers(5)
    if top and "act_crest" in top[0]:
        out.append(format_table(
            ["layer", "bits_lost", "act_bits_lost", "weight_bits_lost", "act_crest", "outlier_ch", "group_dom"],
            [[r["name"], r["bits_lost"], r["act_bits_lost"], r["weight_bits_lost"], r["act_crest"],
              r["act_outlier_channels"], r["act_group_dominance"]] for r in top], floatfmt=".3g"))
    e2e = report.e2e
    if e2e:
        d, f, u, b = e2e["ue8m0_vs_fp32"], e2e["fp32"], e2e["ue8m0"], e2e["base"]
        out += [f"end to end on {e2e['tokens']} held-out tokens (95% bootstrap intervals over {e2e['windows']} "
                "windows):",
                f"  perplexity: unquantized {b['ppl_base']:.3f}, FP8/float32 {f['ppl_fp32']:.3f}, FP8/UE8M0 "
                f"{u['ppl_ue8m0']:.3f}: UE8M0 {100 * d['ppl_increase']:+.2f}% [{100 * d['ppl_increase_ci'][0]:+.2f}, "
                f"{100 * d['ppl_increase_ci'][1]:+.2f}] over float32",
                f"  KL to unquantized: float32 {f['kl_fp32']:.4f}, UE8M0 {u['kl_ue8m0']:.4f} "
                f"({100 * d['kl_increase']:+.1f}% [{100 * d['kl_increase_ci'][0]:+.1f}, "
                f"{100 * d['kl_increase_ci'][1]:+.1f}]); top-1 agreement {f['top1_fp32']:.4f} vs "
                f"{u['top1_ue8m0']:.4f}"]
        if "acc_fp32" in f:
            out.append(f"  next-token accuracy: unquantized {b['acc_base']:.4f}, FP8/float32 {f['acc_fp32']:.4f}, "
                       f"FP8/UE8M0 {u['acc_ue8m0']:.4f}" + (f", plan {e2e['plan']['acc_plan']:.4f}"
                                                             if "plan" in e2e else ""))
    return "\n".join(out + plan_lines(report) + verdict_lines(report))


# --------------------------------------------------------------------------------------------- report.md, plots


def render_markdown(report: AuditReport, top: int = 15) -> str:
    s, t = report.summary, report.summary.thresholds
    out = [f"# UE8M0 audit of {report.model}", ""]
    out += [f"Level: **{report.level}**; block size {list(report.block_size)}; model type "
            f"`{report.model_type}`.", ""]
    out += [f"## Verdict: **{s.verdict}**", ""] + [f"- {r}" for r in s.reasons] + [""]
    out += ["| | value |", "|---|---|",
            f"| layers | {s.layers} |",
            f"| mean bits, float32 scales | {s.mean_bits_fp32:.3f} |",
            f"| mean bits, UE8M0 scales | {s.mean_bits_ue8m0:.3f} |",
            f"| mean bits lost | {s.mean_bits_lost:.3f} |",
            f"| max bits lost | {s.max_bits_lost:.3f} (`{s.worst_layer}`) |",
            f"| unsafe layers | {s.unsafe_layers} ({100 * s.unsafe_layer_share:.0f}%) |", ""]
    out += ["Thresholds: " + ", ".join(f"`{k}`={v:g}" for k, v in t.items()), ""]
    e2e = report.e2e
    if e2e:
        out += [f"## End to end ({e2e['windows']} windows x {e2e['seq_len']} tokens, held out)", "",
                "| variant | perplexity | KL to unquantized | top-1 agreement |", "|---|---|---|---|"]
        b = e2e["base"]
        out.append(f"| unquantized | {b['ppl_base']:.3f} [{b['ppl_base_ci'][0]:.3f}, {b['ppl_base_ci'][1]:.3f}] "
                   "| 0 | 1 |")
        for v, label in (("fp32", "FP8, float32 scales"), ("ue8m0", "FP8, UE8M0 scales")):
            d = e2e[v]
            out.append(f"| {label} | {d[f'ppl_{v}']:.3f} [{d[f'ppl_{v}_ci'][0]:.3f}, {d[f'ppl_{v}_ci'][1]:.3f}] | "
                       f"{d[f'kl_{v}']:.4f} [{d[f'kl_{v}_ci'][0]:.4f}, {d[f'kl_{v}_ci'][1]:.4f}] | "
                       f"{d[f'top1_{v}']:.4f} [{d[f'top1_{v}_ci'][0]:.4f}, {d[f'top1_{v}_ci'][1]:.4f}] |")
        d = e2e["ue8m0_vs_fp32"]
        out += ["", f"UE8M0 vs float32: perplexity {100 * d['ppl_increase']:+.2f}% "
                f"[{100 * d['ppl_increase_ci'][0]:+.2f}, {100 * d['ppl_increase_ci'][1]:+.2f}], KL "
                f"{100 * d['kl_increase']:+.1f}% [{100 * d['kl_increase_ci'][0]:+.1f}, "
                f"{100 * d['kl_increase_ci'][1]:+.1f}], top-1 {100 * d['top1_change']:+.2f} points "
                f"[{100 * d['top1_change_ci'][0]:+.2f}, {100 * d['top1_change_ci'][1]:+.2f}] (95% bootstrap over "
                "windows).", ""]
    if report.plan:
        out += ["## Per-layer plan", "", *(line.strip() if not line.startswith("  ") else "- " + line.strip()
                                           for line in plan_lines(report, shown=10**6)), ""]
    rows = report.top_layers(top)
    out += [f"## The {len(rows)} layers that lose most", ""]
    extra = [k for k in ("act_bits_lost", "weight_bits_lost", "act_crest", "act_outlier_channels",
                         "act_group_dominance", "scale_inflation_mean", "pow2_block_share") if rows and k in rows[0]]
    out += ["| layer | bits float32 | bits UE8M0 | bits lost | verdict | " + " | ".join(extra) + " |",
            "|---|---|---|---|---|" + "---|" * len(extra)]
    for r in rows:
        cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in extra]
        out.append(f"| `{r['name']}` | {r['bits_fp32']:.3f} | {r['bits_ue8m0']:.3f} | {r['bits_lost']:.3f} | "
                   f"{r['verdict']} | " + " | ".join(cells) + " |")
    out += ["", f"Plots: `{PLOT_BITS}` (bits lost per layer), `{PLOT_INFLATION}` (scale inflation).", ""]
    calib = report.calibration
    if calib:
        out += [f"Calibration: {calib['samples']} windows x {calib['seq_len']} tokens of {calib['source']}.", ""]
    run = report.run
    if run.get("command"):
        out += [f"Command: `{run['command']}`", ""]
    return "\n".join(out)


def write_plots(report: AuditReport, folder: str | os.PathLike) -> list[Path]:
    """bits_lost.png and scale_inflation.png; none (and no error) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder = Path(folder)
    written = []
    layers = report.layers
    t = report.summary.thresholds["layer_bits_lost"]
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, 0.06 * len(layers) + 4)), 4))
    colors = ["tab:red" if r["verdict"] == UNSAFE else "tab:blue" for r in layers]
    ax.bar(range(len(layers)), [r["bits_lost"] for r in layers], color=colors, width=0.9)
    ax.axhline(t, color="black", linestyle="--", linewidth=1, label=f"layer threshold {t:g} bit")
    ax.set_xlabel("layer (module order)")
    ax.set_ylabel("bits lost (float32 - UE8M0 scales)")
    ax.set_title(f"{report.model}: UE8M0 loss per layer ({report.level}), verdict {report.summary.verdict}")
    ax.legend()
    fig.tight_layout()
    written.append(atomic.write_with(folder / PLOT_BITS, lambda tmp: fig.savefig(tmp, format="png", dpi=110)))
    plt.close(fig)
    hist = (report.histograms or {}).get("scale_inflation")
    if hist:
        edges = hist["log2_edges"]
        centers = [2.0 ** ((a + b) / 2) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        widths = [2.0**b - 2.0**a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, color in (("weights", "tab:blue"), ("activations", "tab:orange")):
            counts = hist.get(key)
            if counts and sum(counts):
                total = sum(counts)
                ax.bar(centers, [c / total for c in counts], width=widths, alpha=0.6, color=color,
                       label=f"{key} ({total} blocks/groups)")
        ax.set_xlabel("scale inflation s_UE8M0 / s_float32")
        ax.set_ylabel("share of blocks")
        ax.set_xlim(0.5, 2.0)
        ax.set_title(f"{report.model}: UE8M0 scale inflation s_UE8M0 / s_float32")
        ax.legend()
        fig.tight_layout()
        written.append(atomic.write_with(folder / PLOT_INFLATION, lambda tmp: fig.savefig(tmp, format="png", dpi=110)))
        plt.close(fig)
    return written
