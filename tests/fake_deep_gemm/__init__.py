"""Make DeepGEMM present (a fake `deep_gemm` on sys.path) or absent (hidden from imports) for one test."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

FAKE_ROOT = Path(__file__).resolve().parent  # holds the fake `deep_gemm` package


def install(monkeypatch) -> object:
    """Put the fake `deep_gemm` first on sys.path for this test; returns the module (its CALLS list is fresh)."""
    monkeypatch.delitem(sys.modules, "deep_gemm", raising=False)
    monkeypatch.syspath_prepend(str(FAKE_ROOT))
    module = importlib.import_module("deep_gemm")
    assert Path(module.__file__).resolve().parent.parent == FAKE_ROOT, "a real deep_gemm shadows the fake"
    module.CALLS.clear()
    return module


def hide(monkeypatch) -> None:
    """Make `import deep_gemm` fail and find_spec return None, even where a real one is installed."""
    monkeypatch.setitem(sys.modules, "deep_gemm", None)
