"""blockfp8: block-scaled FP8 numerics, layers, kernel selection and UE8M0 accuracy audit for PyTorch.

Importing this package never touches CUDA, Triton or DeepGEMM; heavy pieces load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "quant": "blockfp8.quant",
    # layers and models
    "BlockFP8Linear": "blockfp8.nn",
    "BlockFP8MoE": "blockfp8.nn",
    "quantize_model": "blockfp8.nn",
    "load_fp8_checkpoint": "blockfp8.nn",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if _LAZY[name].endswith(name) else getattr(module, name)
    raise AttributeError(f"module 'blockfp8' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
