"""Every BLOCKFP8_* environment variable, in one table of lazy getters.

Values are read when asked for (never at import), so tests can monkeypatch os.environ.
Booleans are 0/1; an unknown value raises EnvError listing the valid ones.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blockfp8.paths import quote


class EnvError(ValueError):
    """An environment variable holds a value we do not accept (CLI exit code 2)."""


def _bool01(name: str, raw: str) -> bool:
    value = raw.strip()
    if value in ("0", "1"):
        return value == "1"
    raise EnvError(f"{name}={quote(raw)} is not valid; valid values: 0, 1 (or unset)")


def _tristate(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    return _bool01(name, raw)


def _str(name: str) -> str | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip()


def _csv(name: str) -> tuple[str, ...]:
    raw = os.environ.get(name, "")
    return tuple(part.strip().lower() for part in raw.split(",") if part.strip())


# The backend ids as plain strings (blockfp8.backends.base.BackendId holds the same values; a test keeps them equal).
# Kept here so that envs stays stdlib-only and can validate BLOCKFP8_GEMM_BACKEND without importing the backends.
BACKEND_IDS = ("auto", "deepgemm", "scaled_mm", "cute", "triton", "reference")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _choice(name: str, valid: tuple[str, ...], upper: bool = False) -> str | None:
    value = _str(name)
    if value is None:
        return None
    value = value.upper() if upper else value.lower()
    if value not in valid:
        raise EnvError(f"{name}={quote(value)} is not valid; valid values: {', '.join(valid)} (or unset)")
    return value


def _csv_choices(name: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    values = _csv(name)
    bad = [v for v in values if v not in valid]
    if bad:
        listed = ", ".join(map(quote, bad[:8]))
        raise EnvError(f"{name}: {listed} not valid; valid values: a comma list of {', '.join(valid)}")
    return values


_ARCH_RE = re.compile(r"^(?:sm_?)?(\d+)(?:\.(\d))?([af]?)$", re.IGNORECASE)


def parse_arch(text: str) -> tuple[int, int]:
    """'sm_90', '90', '9.0', 'sm_100a', '100', '10.3', 'sm_120' -> (major, minor); raises EnvError otherwise."""
    m = _ARCH_RE.match(text.strip())
    if not m:
        raise EnvError(
            f"arch {quote(text)} is not valid; examples of valid values: sm_89, sm_90, 90, 9.0, sm_100a, sm_103, sm_120"
        )
    digits, minor = m.group(1), m.group(2)
    if minor is not None:
        return int(digits), int(minor)
    if len(digits) < 2:
        raise EnvError(f"arch {quote(text)} is not valid; give major and minor, e.g. sm_90 or 9.0")
    return int(digits[:-1]), int(digits[-1])


def _arch(name: str) -> str | None:
    value = _str(name)
    if value is not None:
        try:
            parse_arch(value)
        except EnvError as exc:
            raise EnvError(f"{name}: {exc}") from None
    return value


@dataclass(frozen=True)
class EnvVar:
    name: str
    values: str
    default: str
    help: str
    getter: Callable[[], Any]


ENV_VARS: dict[str, EnvVar] = {
    v.name: v
    for v in (
        EnvVar(
            "BLOCKFP8_USE_DEEP_GEMM", "unset | 0 | 1", "unset",
            "1 forces DeepGEMM on (even for a guarded model, with a warning); 0 disables it for dense and MoE.",
            lambda: _tristate("BLOCKFP8_USE_DEEP_GEMM"),
        ),
        EnvVar(
            "BLOCKFP8_MOE_USE_DEEP_GEMM", "unset | 0 | 1", "unset",
            "Same as BLOCKFP8_USE_DEEP_GEMM for MoE layers only; overrides it there.",
            lambda: _tristate("BLOCKFP8_MOE_USE_DEEP_GEMM"),
        ),
        EnvVar(
            "BLOCKFP8_GEMM_BACKEND", "auto | deepgemm | scaled_mm | cute | triton | reference", "auto",
            "Backend for dense layers; an explicit choice that cannot run raises.",
            lambda: _choice("BLOCKFP8_GEMM_BACKEND", BACKEND_IDS),
        ),
        EnvVar(
            "BLOCKFP8_DISABLED_BACKENDS", "comma list of deepgemm, scaled_mm, cute, triton, reference", "empty",
            "Backends never chosen automatically (an explicit choice still wins).",
            lambda: _csv_choices("BLOCKFP8_DISABLED_BACKENDS", BACKEND_IDS[1:]),
        ),
        EnvVar(
            "BLOCKFP8_ARCH", "sm_90, 90, 9.0, sm_100a, ...", "unset (the real GPU)",
            "Pretend to be this SM capability, to plan any GPU's decision on a CPU box.",
            lambda: _arch("BLOCKFP8_ARCH"),
        ),
        EnvVar(
            "BLOCKFP8_COMMIT", "any text (a commit id)", "unset (git, else unknown)",
            "The source commit stamped on benchmark and eval results: for a copy of the tree without git history.",
            lambda: _str("BLOCKFP8_COMMIT"),
        ),
        EnvVar(
            "BLOCKFP8_LOG_LEVEL", "DEBUG | INFO | WARNING | ERROR", "WARNING",
            "Level of the blockfp8 logger.",
            lambda: _choice("BLOCKFP8_LOG_LEVEL", LOG_LEVELS, upper=True) or "WARNING",
        ),
    )
}


def get(name: str) -> Any:
    """The parsed value of a BLOCKFP8_* variable (raises EnvError on a bad value)."""
    return ENV_VARS[name].getter()


def is_set(name: str) -> bool:
    """True when the variable is present and non-empty: "explicitly set" in the precedence table."""
    raw = os.environ.get(name)
    return raw is not None and raw.strip() != ""


def __getattr__(attr: str) -> Any:
    # envs.BLOCKFP8_USE_DEEP_GEMM reads the environment now, not at import.
    if attr in ENV_VARS:
        return get(attr)
    raise AttributeError(f"module 'blockfp8.envs' has no attribute {attr!r}")


def validate_all() -> None:
    """Parse every variable once so a typo fails early with the valid values listed; a ``BLOCKFP8_*`` name that
    is not in the table (``BLOCKFP8_USE_DEEPGEMM``) is refused too, since it would silently do nothing. Every
    problem is reported in one :class:`EnvError`."""
    problems = []
    for name in ENV_VARS:
        try:
            get(name)
        except EnvError as exc:
            problems.append(str(exc))
    for name in sorted(n for n in os.environ if n.startswith("BLOCKFP8_") and n not in ENV_VARS):
        close = difflib.get_close_matches(name, ENV_VARS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        problems.append(f"{quote(name)} is not a blockfp8 variable; {hint}known: {', '.join(ENV_VARS)}")
    if problems:
        raise EnvError("; ".join(problems))
