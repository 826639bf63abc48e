"""Accuracy evaluation: GSM8K and LAMBADA on vendored data, per-variant YAML expectations, paired statistics.

    from blockfp8.eval import load_config, evaluate
    results = evaluate(load_config("configs/smollm2-lambada.yaml"), device="cuda")

The vendored data comes from ``blockfp8.datasets`` (shared with the audit). Submodules: ``tasks`` (prompts,
answer extraction), ``config`` (YAML validation), ``generate`` (batched generation / scoring), ``stats``
(intervals, McNemar, bootstrap), ``runner`` (variants and comparisons), ``report`` (JSON, markdown).
Heavy imports happen on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_config": "blockfp8.eval.config",
    "parse_config": "blockfp8.eval.config",
    "EvalConfigError": "blockfp8.eval.config",
    "evaluate": "blockfp8.eval.runner",
    "markdown": "blockfp8.eval.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'blockfp8.eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
