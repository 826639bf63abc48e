"""Logging: one `blockfp8` logger; warn_once / info_once de-duplicate by message text; progress lines for long
steps on stderr (also when stderr is not a terminal), silenced by ``--quiet``."""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

_ROOT = "blockfp8"
T = TypeVar("T")


def get_logger(name: str = _ROOT) -> logging.Logger:
    logger = logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        from blockfp8 import envs

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("blockfp8 %(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(envs.get("BLOCKFP8_LOG_LEVEL"))
        root.propagate = True
    return logger


@functools.cache
def warn_once(message: str) -> None:
    get_logger().warning(message)


@functools.cache
def info_once(message: str) -> None:
    get_logger().info(message)


def reset_once_caches() -> None:
    """For tests: forget which messages were already logged."""
    warn_once.cache_clear()
    info_once.cache_clear()


# ------------------------------------------------------------------------------------------------ progress

PROGRESS_INTERVAL_S = 5.0  # between two progress lines when stderr is not a terminal (a log file, CI)
_TTY_INTERVAL_S = 0.2  # between two redraws of the progress line on a terminal
_quiet = False


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no progress lines from any long step (warnings and errors still print)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


class Progress:
    """Progress of one long step on stderr. On a terminal one line redrawn in place; elsewhere (a log file, a
    pipe, CI) a plain line every :data:`PROGRESS_INTERVAL_S` seconds, from a timer thread, so that a step whose
    items each take long (or that has no items, like loading a model) never looks hung. Silent with
    ``enabled=False`` or after :func:`set_quiet`. Use as a context manager and call :meth:`update`."""

    def __init__(self, desc: str, total: float | None = None, unit: str = "", *, enabled: bool = True,
                 stream=None, interval: float | None = None, scale: float = 1.0):
        self.desc, self.total, self.unit, self.scale = desc, total, unit, scale
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and not _quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (_TTY_INTERVAL_S if self.tty else PROGRESS_INTERVAL_S)
        self.done = 0.0
        self.t0 = self._last = time.monotonic()
        self._printed = False
        self._stop = threading.Event()
        self._timer = None
        if self.enabled and not self.tty and self.interval > 0:
            self._timer = threading.Thread(target=self._beat, name="blockfp8-progress", daemon=True)
            self._timer.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit()

    def _amount(self, value: float) -> str:
        value = value / self.scale
        return f"{value:.0f}" if self.scale == 1 else f"{value:.1f}"

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            pct = 100.0 * self.done / self.total
            what = f"{self._amount(self.done)}/{self._amount(self.total)}{unit} ({pct:.0f}%), "
        else:
            what = f"{self._amount(self.done)}{unit}, " if self.done else ""
        return f"blockfp8: {self.desc}: {what}{elapsed:.0f} s"

    def _emit(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._printed = True

    def update(self, n: float = 1) -> None:
        self.done += n
        if not self.enabled or self._timer is not None:  # off a terminal the timer thread prints
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def close(self) -> None:
        """The last line (on a terminal always; elsewhere only when a line was printed already, so short steps
        stay silent)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        if self.enabled and (self.tty or self._printed):
            self._emit(final=True)
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T], desc: str, unit: str = "", *, total: int | None = None,
             enabled: bool = True) -> Iterator[T]:
    """``iterable`` with a :class:`Progress` line per item."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(desc, total, unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def step(message: str) -> None:
    """One line on stderr announcing a long step that has no count of its own (loading a model); silent after
    :func:`set_quiet`."""
    if not _quiet:
        print(f"blockfp8: {message}", file=sys.stderr, flush=True)
