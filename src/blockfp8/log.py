"""Logging: one `blockfp8` logger; warn_once / info_once de-duplicate by message text."""

from __future__ import annotations

import functools
import logging

_ROOT = "blockfp8"


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
