"""Prompts and answer extraction (pure text; no model, no torch).

GSM8K follows vLLM's ``tests/evals/gsm8k`` conventions: few-shot ``"Question: {q}\\nAnswer: {a}\\n\\n"`` blocks then
``"Question: {q}\\nAnswer:"``, greedy decoding, the generation cut at the first ``"Question"``, and the answer is the
last integer after removing commas ("flexible"). One deliberate difference: the integer may carry a minus sign
(vLLM's ``\\d+`` drops it, which makes the two negative GSM8K labels unreachable). The "strict" answer is the number
after ``#### `` or ``the answer is`` (the format of the few-shot exemplars), reported separately.
A generation with no number is *invalid* (counted, never an error).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from blockfp8.datasets import FewShot

GSM8K_STOP = "Question"
MAX_FEWSHOT = 8

_INT_RE = re.compile(r"-?\d+")
_STRICT_RE = re.compile(r"(?:####|[Tt]he answer is)\s*\$?\s*(-?[\d,]*\d)")


def gsm8k_prompt(question: str, shots: Sequence[FewShot]) -> str:
    blocks = "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots)
    return f"{blocks}Question: {question}\nAnswer:"


def truncate_at_stop(text: str, stop: str = GSM8K_STOP) -> str:
    """The generation up to (not including) the first stop string."""
    cut = text.find(stop)
    return text if cut < 0 else text[:cut]


def extract_flexible(text: str) -> int | None:
    """Last integer in the text after removing commas; None when there is none (an invalid answer)."""
    numbers = _INT_RE.findall(text.replace(",", ""))
    return int(numbers[-1]) if numbers else None


def extract_strict(text: str) -> int | None:
    """The number after the first ``#### `` or ``the answer is``; None when neither appears."""
    m = _STRICT_RE.search(text)
    return int(m.group(1).replace(",", "")) if m else None


def lambada_target_tokens(tokenizer, context: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of the context and of the continuation ``" " + target``.

    The pair is tokenized as one string and split where the context's own tokens end (as lm-eval-harness does),
    so the continuation's tokens are exactly those the model would see; when the boundary merges across
    (the joint tokenization does not start with the context's), the two are tokenized separately.
    """
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    whole = tokenizer(context + " " + target, add_special_tokens=False).input_ids
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx) :]
    return ctx, tokenizer(" " + target, add_special_tokens=False).input_ids
