"""Result rows: one long-format CSV row per (benchmark, shape, variant), stamped with the machine and code."""

from __future__ import annotations

import csv
import datetime
import math
from pathlib import Path

from blockfp8 import atomic

FIELDS = ("bench", "m", "n", "k", "variant", "us", "tflops", "gbps", "speedup_vs_scaled_mm", "speedup_vs_bf16",
          "extra", "gpu", "torch", "cuda", "triton", "date", "commit")


def environment() -> dict:
    """The machine and code columns of FIELDS, from ``platform.run_environment``. ``date`` is a UTC timestamp to the
    second rather than the day, so that the rows of several runs on one day keep their order."""
    import torch

    from blockfp8.platform import run_environment

    env = run_environment("cuda" if torch.cuda.is_available() else "cpu", commit=True)
    return {
        "gpu": env["gpu"] or "cpu", "torch": env["torch"], "cuda": env["cuda"], "triton": env["triton"],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": env["commit"],
    }


def gpu_dirname(gpu: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in gpu).strip("_").lower() or "unknown"


def append_csv(path: str | Path, rows: list[dict], fields: tuple[str, ...] = FIELDS) -> None:
    """Append rows (header written when the file is new); written to a temp file and renamed."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            if old:
                f.write(old)
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if not old:
                w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k, "")) for k in fields})

    atomic.write_with(path, write)


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return v


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def geomean(values) -> float:
    vals = [v for v in values if v and v > 0 and not math.isnan(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def table(rows: list[dict], cols: tuple[str, ...]) -> str:
    """A fixed-width text table."""
    cells = [[_fmt(r.get(c, "")) if not isinstance(r.get(c), float) else f"{r[c]:.3g}" for c in cols] for r in rows]
    widths = [max(len(c), *(len(str(row[i])) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def plot_gemm(rows: list[dict], path: str | Path) -> bool:
    """One PNG: speedup vs blockwise scaled_mm per cell, one series per variant. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cells = sorted({(int(r["n"]), int(r["k"]), int(r["m"])) for r in rows})
    variants = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "scaled_mm"]
    fig, ax = plt.subplots(figsize=(max(10, len(cells) * 0.28), 4.5))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        ys = []
        for n, k, m in cells:
            hit = [r for r in rows if r["variant"] == v and (int(r["n"]), int(r["k"]), int(r["m"])) == (n, k, m)]
            s = float(hit[0]["speedup_vs_scaled_mm"]) if hit and hit[0]["speedup_vs_scaled_mm"] not in ("", None) else 0
            ys.append(s)
        ax.bar([j + i * width for j in range(len(cells))], ys, width=width, label=v)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 for j in range(len(cells))])
    ax.set_xticklabels([f"{n}x{k}\nM={m}" for n, k, m in cells], rotation=90, fontsize=6)
    ax.set_ylabel("speed vs blockwise scaled_mm")
    ax.legend(fontsize=7, ncol=len(variants))
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return True
