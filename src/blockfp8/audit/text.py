"""Real text for the calibrated and end-to-end levels: the vendored LAMBADA (OpenAI) test passages.

Passages (context + target word) are joined with blank lines, tokenized and cut into windows of ``seq_len``
tokens. Calibration windows come from the head of the file, evaluation windows from its tail (read backwards),
so the two never share a passage as long as together they need fewer tokens than the file holds (~400k with
SmolLM2's tokenizer); :func:`windows` checks that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blockfp8.datasets import load_lambada

SOURCE = "LAMBADA (OpenAI) test, vendored in data/"


@dataclass(frozen=True)
class Windows:
    ids: torch.Tensor  # [n, seq_len] int64
    source: str
    split: str  # "calibration" (head of the file) | "evaluation" (tail, backwards)
    passages: int  # how many passages were tokenized to fill them

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())


def windows(tokenizer, n: int, seq_len: int, split: str, data_dir=None) -> Windows:
    """``n`` windows of ``seq_len`` tokens from the head ("calibration") or the tail ("evaluation")."""
    if n <= 0 or seq_len <= 1:
        raise ValueError(f"need n >= 1 windows of seq_len >= 2 tokens, got n={n}, seq_len={seq_len}")
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split={split!r}: expected 'calibration' or 'evaluation'")
    items = load_lambada(data_dir)
    order = items if split == "calibration" else items[::-1]
    need = n * seq_len
    ids: list[int] = []
    used = 0
    for item in order:
        ids += tokenizer(item.context + " " + item.target + "\n\n", add_special_tokens=False)["input_ids"]
        used += 1
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"LAMBADA holds only {len(ids)} tokens; {n} windows of {seq_len} need {need}")
    if used > len(items) // 2:
        raise ValueError(f"{n} windows of {seq_len} tokens need {used} of {len(items)} passages: calibration and "
                         "evaluation text would overlap; ask for fewer tokens")
    return Windows(torch.tensor(ids[:need], dtype=torch.long).view(n, seq_len), SOURCE, split, used)
