"""Which programs can load a block-FP8 folder we write, checked where a check is possible without loading them.

* ``blockfp8.load_fp8_checkpoint``: any shape (ragged last blocks included).
* transformers (``quant_method: fp8``): its loader derives the block from the scale grid (``N // rows``), so every
  quantized weight must be a whole number of blocks: ``N % bn == 0`` and ``K % bk == 0``. A ragged weight is
  refused ("not divisible by scale grid") or, when ``N`` happens to divide by the grid, read with the wrong block.
  The compatible choice is a block size that divides every shape (:func:`dividing_block`).
* vLLM and SGLang read the same HF ``fp8`` format; they are not run here, so nothing is claimed beyond that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_BLOCK = 128  # the block side DeepGEMM and cuBLASLt take; a smaller one runs on Triton or the reference
MIN_BLOCK = 16  # Triton tiles need at least 16


@dataclass
class Consumers:
    """What :func:`check_consumers` found for one checkpoint."""

    block_size: tuple[int, int]
    ragged: dict[str, tuple[int, int]] = field(default_factory=dict)  # weight -> [N, K] not whole blocks
    suggested_block: tuple[int, int] | None = None  # divides every shape (None: no power of two >= 16 does)
    checked: int = 0

    @property
    def transformers_ok(self) -> bool:
        return not self.ragged

    def as_dict(self) -> dict:
        return {
            "blockfp8": "loads (any shape)",
            "transformers": "loads" if self.transformers_ok else "refuses: ragged blocks",
            "vllm_sglang": "HF fp8 format (not loaded here)",
            "ragged_weights": {k: list(v) for k, v in self.ragged.items()},
            "suggested_block": list(self.suggested_block) if self.suggested_block else None,
        }

    def lines(self) -> list[str]:
        bn, bk = self.block_size
        out = ["loads with: blockfp8.load_fp8_checkpoint (any shape)"]
        if self.transformers_ok:
            out.append(f"loads with: transformers (quant_method fp8): all {self.checked} quantized weights are whole "
                       f"[{bn}, {bk}] blocks")
        else:
            name, (n, k) = next(iter(self.ragged.items()))
            fix = (f"--block {self.suggested_block[0]},{self.suggested_block[1]} divides every shape (DeepGEMM and "
                   "cuBLASLt take only 128,128; other sizes run on Triton or the reference backend)"
                   if self.suggested_block else "no power-of-two block >= 16 divides every shape")
            out.append(f"NOT loadable by transformers: {len(self.ragged)} of {self.checked} quantized weights are not "
                       f"whole [{bn}, {bk}] blocks (e.g. {name} [{n}, {k}]) and its fp8 loader refuses ragged blocks; "
                       f"{fix}")
        out.append("vLLM / SGLang: written in the HF fp8 format they read (not loaded here)")
        return out


def _largest_power_of_two_divisor(values: Iterable[int], cap: int = MAX_BLOCK) -> int:
    g = 0
    for v in values:
        g = math.gcd(g, int(v))
    return min(cap, g & -g) if g else cap


def dividing_block(shapes: Sequence[tuple[int, int]], cap: int = MAX_BLOCK) -> tuple[int, int] | None:
    """The largest power-of-two block (each side <= ``cap``) that divides every ``[N, K]``; None below 16."""
    bn = _largest_power_of_two_divisor((n for n, _ in shapes), cap)
    bk = _largest_power_of_two_divisor((k for _, k in shapes), cap)
    return (bn, bk) if min(bn, bk) >= MIN_BLOCK else None


def check_consumers(shapes: dict[str, tuple[int, int]], block_size: Sequence[int]) -> Consumers:
    """Check the quantized weights ``name -> [N, K]`` written with ``block_size`` against each consumer's rule."""
    bn, bk = int(block_size[0]), int(block_size[1])
    ragged = {name: (n, k) for name, (n, k) in shapes.items() if n % bn or k % bk}
    suggested = dividing_block(list(shapes.values())) if ragged else None
    return Consumers((bn, bk), ragged, suggested, len(shapes))


def checkpoint_shapes(folder, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """``[N, K]`` of the named 2-D tensors of a safetensors folder, read from the headers only."""
    from blockfp8.formats.safetensors_io import SafetensorsCheckpoint

    with SafetensorsCheckpoint(folder) as ckpt:
        return {name: tuple(ckpt.info(name).shape) for name in names}
