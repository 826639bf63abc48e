"""Building, rendering and writing audit reports: the JSON (schema in docs/audit.md), a markdown summary and two
PNG plots (bits lost per layer; scale-inflation histogram), each written to a temporary file and renamed."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from blockfp8.audit.verdict import SCHEMA, UNSAFE, Thresholds, layer_verdict, model_verdict, summarize

REPORT_JSON, REPORT_MD = "report.json", "report.md"
PLOT_BITS, PLOT_INFLATION = "bits_lost.png", "scale_inflation.png"


# --------------------------------------------------------------------------------------------- atomic writes


def _write_atomic(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return _write_atomic(path, write)


def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write JSON to a temporary file beside `path`, then rename: never a half-written report.
    Refuses non-finite numbers (a report must be valid JSON)."""
    text = json.dumps(payload, indent=2, allow_nan=False)
    return write_text_atomic(path, text + "\n")


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


# --------------------------------------------------------------------------------------------- building


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
    run: Mapping[str, Any] | None = None,
) -> dict:
    """The report dict: per-layer verdicts, summary with the model verdict and its reasons. Everything except
    ``run`` (timings, world size, versions) is a pure function of the measurements, so a distributed run gives the
    same report as a single process."""
    from blockfp8.audit.checkpoint import INFLATION_LOG2_EDGES

    layers = []
    for r in rows:
        d = dict(r)
        d["verdict"] = layer_verdict(float(d["bits_lost"]), thresholds)
        layers.append(d)
    summary = summarize(layers, thresholds)
    verdict, reasons = model_verdict(summary, thresholds, e2e)
    summary.update(verdict=verdict, reasons=reasons, thresholds=thresholds.as_dict())
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "model": model,
        "model_type": model_type,
        "level": level,
        "block_size": [int(block_size[0]), int(block_size[1])],
        "layers": layers,
        "summary": summary,
    }
    if histograms:
        report["histograms"] = {
            "scale_inflation": {"log2_edges": list(INFLATION_LOG2_EDGES), **{k: list(v) for k, v in histograms.items()}}
        }
    if calibration:
        report["calibration"] = dict(calibration)
    if e2e:
        report["e2e"] = dict(e2e)
    if checkpoint:
        report["checkpoint"] = dict(checkpoint)
    report["run"] = dict(run or {})
    json.dumps(report, allow_nan=False)  # fail here, naming nothing half-written, if a number is not finite
    return report


def comparable(report: Mapping[str, Any]) -> dict:
    """The report without its ``run`` section: what must be identical between equivalent runs."""
    return {k: v for k, v in report.items() if k != "run"}


# --------------------------------------------------------------------------------------------- rendering


def verdict_lines(report: Mapping[str, Any]) -> list[str]:
    s = report["summary"]
    head = f"verdict for UE8M0 scales: {s['verdict'].upper()}"
    return [head, *(f"  - {r}" for r in s["reasons"])]


def render_markdown(report: Mapping[str, Any], top: int = 15) -> str:
    s, t = report["summary"], report["summary"]["thresholds"]
    out = [f"# UE8M0 audit of {report['model']}", ""]
    out += [f"Level: **{report['level']}**; block size {report['block_size']}; model type "
            f"`{report.get('model_type')}`.", ""]
    out += [f"## Verdict: **{s['verdict']}**", ""] + [f"- {r}" for r in s["reasons"]] + [""]
    out += ["| | value |", "|---|---|",
            f"| layers | {s['layers']} |",
            f"| mean bits, float32 scales | {s['mean_bits_fp32']:.3f} |",
            f"| mean bits, UE8M0 scales | {s['mean_bits_ue8m0']:.3f} |",
            f"| mean bits lost | {s['mean_bits_lost']:.3f} |",
            f"| max bits lost | {s['max_bits_lost']:.3f} (`{s['worst_layer']}`) |",
            f"| unsafe layers | {s['unsafe_layers']} ({100 * s['unsafe_layer_share']:.0f}%) |", ""]
    out += ["Thresholds: " + ", ".join(f"`{k}`={v:g}" for k, v in t.items()), ""]
    e2e = report.get("e2e")
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
    rows = sorted(report["layers"], key=lambda r: -r["bits_lost"])[:top]
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
    calib = report.get("calibration")
    if calib:
        out += [f"Calibration: {calib['samples']} windows x {calib['seq_len']} tokens of {calib['source']}.", ""]
    run = report.get("run") or {}
    if run.get("command"):
        out += [f"Command: `{run['command']}`", ""]
    return "\n".join(out)


def write_plots(report: Mapping[str, Any], folder: str | os.PathLike) -> list[Path]:
    """bits_lost.png and scale_inflation.png; none (and no error) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder = Path(folder)
    written = []
    layers = report["layers"]
    t = report["summary"]["thresholds"]["layer_bits_lost"]
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, 0.06 * len(layers) + 4)), 4))
    colors = ["tab:red" if r["verdict"] == UNSAFE else "tab:blue" for r in layers]
    ax.bar(range(len(layers)), [r["bits_lost"] for r in layers], color=colors, width=0.9)
    ax.axhline(t, color="black", linestyle="--", linewidth=1, label=f"layer threshold {t:g} bit")
    ax.set_xlabel("layer (module order)")
    ax.set_ylabel("bits lost (float32 - UE8M0 scales)")
    ax.set_title(f"{report['model']}: UE8M0 loss per layer ({report['level']}), verdict "
                 f"{report['summary']['verdict']}")
    ax.legend()
    fig.tight_layout()
    written.append(_write_atomic(folder / PLOT_BITS, lambda tmp: fig.savefig(tmp, format="png", dpi=110)))
    plt.close(fig)
    hist = (report.get("histograms") or {}).get("scale_inflation")
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
        ax.set_title(f"{report['model']}: UE8M0 scale inflation s_UE8M0 / s_float32")
        ax.legend()
        fig.tight_layout()
        written.append(_write_atomic(folder / PLOT_INFLATION, lambda tmp: fig.savefig(tmp, format="png", dpi=110)))
        plt.close(fig)
    return written


def write_report_folder(report: Mapping[str, Any], folder: str | os.PathLike) -> list[Path]:
    """report.json, report.md and the plots, each written atomically into ``folder`` (created if needed)."""
    folder = Path(folder)
    written = [write_json_atomic(folder / REPORT_JSON, dict(report)),
               write_text_atomic(folder / REPORT_MD, render_markdown(report))]
    written += write_plots(report, folder)
    return written
