"""Path safety for every reader and writer. Stdlib only, so every layer can use it.

* Paths are compared after resolving links (``resolved``, ``same_or_nested``): a DST reached through a symlinked
  parent is SRC itself, not a new folder.
* A link found inside a folder is never followed out of it (``link_escapes``), except into the ``blobs/`` folder of
  a Hugging Face cache snapshot, whose files are all links there (``<repo>/snapshots/<rev>/x -> ../../blobs/<sha>``).
* Files are opened only when they are regular files (``open_regular``): a FIFO or a device named like a
  checkpoint would block the reader forever or never end. Reads are bounded (``read_bounded``).
* Parsed JSON and YAML are bounded in nesting (``check_depth``), and an error message quotes a value cut short
  (``quote``), never its full repr, which for a crafted input can be gigabytes.
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any, BinaryIO

MAX_DEPTH = 32  # nesting of a config: transformers' configs nest 3-4 levels, a safetensors header 3


class InputError(ValueError):
    """An input file or value that cannot be used safely (a FIFO, a link out of its folder, too large, nested too
    deeply). The message names the path."""


def resolved(path: str | os.PathLike) -> Path:
    """The absolute path with every symbolic link resolved (the path need not exist)."""
    return Path(os.path.abspath(path)).resolve()


def same_or_nested(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same folder, or one lies inside the other, once links are resolved."""
    ra, rb = resolved(a), resolved(b)
    return ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra)


def _hf_blobs(folder: Path) -> Path | None:
    """``<repo>/blobs`` when ``folder`` is a Hugging Face cache snapshot ``<repo>/snapshots/<rev>``."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent / "blobs"
    return None


def link_escapes(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (an entry of ``folder``) is, or passes through, a link that leads out of ``folder``
    (a Hugging Face cache snapshot's links into its own ``blobs/`` do not count)."""
    root = resolved(folder)
    target = resolved(path)
    if target.is_relative_to(root):
        return False
    blobs = _hf_blobs(root)
    return not (blobs is not None and target.is_relative_to(blobs))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def is_regular(path: str | os.PathLike) -> bool:
    """A regular file (following links), without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading in binary mode, refusing anything but a regular file. The open itself does not
    block (O_NONBLOCK), so a FIFO is refused instead of waiting for a writer that never comes."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{path}: {_kind(mode)}, not a regular file; refusing to read it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, refusing one larger than ``limit`` bytes without reading it all."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path}: larger than {limit / 2**20:g} MiB: not a {what}")
    return data


def check_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """The nesting depth of parsed JSON/YAML (lists and dicts), walked without recursion; raises
    :class:`InputError` (without a path: the caller names the file) when it exceeds ``limit``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        if depth > limit:
            raise InputError(f"nested more than {limit} levels deep")
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8


def quote(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut short, at a cost bounded whatever the value (long strings, huge or deep containers)."""
    if isinstance(value, str):  # names keep their start, which says what they are
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
