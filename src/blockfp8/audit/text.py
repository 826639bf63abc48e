"""Real text for the calibrated and end-to-end levels: the vendored LAMBADA (OpenAI) test passages.

Passages (context + target word) are joined with blank lines, tokenized and cut into windows of ``seq_len``
tokens. Calibration windows come from the head of the file, evaluation windows from its tail (read backwards),
so the two never share a passage as long as together they need fewer tokens than the file holds (~400k with
SmolLM2's tokenizer); :func:`windows` checks that.

Each passage ends with LAMBADA's target word, the word the task asks a model to predict from the long context
before it. ``Windows.targets`` marks those tokens (from the tokenizer's character offsets, so the windows are
tokenized exactly as without it), so the end-to-end level can report the task's own positions beside the
average over every position.
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
    # [n, seq_len] bool: the token is part of a passage's target word (None: the tokenizer gives no offsets)
    targets: torch.Tensor | None = None

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
    marks: list[bool] | None = []
    used = 0
    for item in order:
        passage = item.context + " " + item.target + "\n\n"
        start, end = len(item.context) + 1, len(item.context) + 1 + len(item.target)
        try:
            enc = tokenizer(passage, add_special_tokens=False, return_offsets_mapping=marks is not None)
        except (NotImplementedError, ValueError, TypeError):  # a tokenizer without offsets: no target marks
            marks = None
            enc = tokenizer(passage, add_special_tokens=False)
        ids += enc["input_ids"]
        if marks is not None:
            offsets = enc.get("offset_mapping")
            if offsets is None or len(offsets) != len(enc["input_ids"]):
                marks = None
            else:
                marks += [a < end and b > start for a, b in offsets]
        used += 1
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"LAMBADA holds only {len(ids)} tokens; {n} windows of {seq_len} need {need}")
    if used > len(items) // 2:
        raise ValueError(f"{n} windows of {seq_len} tokens need {used} of {len(items)} passages: calibration and "
                         "evaluation text would overlap; ask for fewer tokens")
    targets = None if marks is None else torch.tensor(marks[:need], dtype=torch.bool).view(n, seq_len)
    return Windows(torch.tensor(ids[:need], dtype=torch.long).view(n, seq_len), SOURCE, split, used, targets)
