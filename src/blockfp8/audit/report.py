"""Rendering and writing audit results (text tables, JSON written atomically)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write JSON to a temporary file beside `path`, then rename: never a half-written report.
    Refuses non-finite numbers (a report must be valid JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
