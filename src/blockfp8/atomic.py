"""Writes that never leave a half-written file: write beside the target, then rename over it (atomic on POSIX).
Stdlib only, so every layer can use it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` and rename the result onto ``path``; on any error the temporary file is removed
    and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name beside the target (same file system, so the rename is atomic) that keeps the suffix, which
    # writers such as matplotlib's savefig read the format from.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result is readable like any other output
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return write_with(path, _write)


def write_json(path: str | os.PathLike, payload, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """``payload`` as JSON plus a final newline. Non-finite floats are refused (``allow_nan=False``): JSON has
    no NaN, and a report that silently holds one is worse than an error."""
    return write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")
