"""Model-facing pieces: batched greedy generation with a KV cache, and batched continuation scoring.

Both work on any transformers causal LM (plain or with blockfp8 layers). Batches are formed after sorting by
length (less padding) and results come back in the caller's order. Padding is on the left, with explicit position
ids, so every row's real tokens see positions 0..len-1 as they would alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from blockfp8.log import progress


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    generated_tokens: int


@dataclass
class ContinuationScore:
    loglik: float  # sum of log p(target token) over the continuation
    greedy: bool  # every continuation token is the argmax given what precedes it
    num_tokens: int
    context_tokens: int
    argmax_ids: list[int]


@dataclass
class Timing:
    seconds: float = 0.0
    items: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def as_dict(self) -> dict:
        s = max(self.seconds, 1e-9)
        return {
            "seconds": round(self.seconds, 3),
            "questions": self.items,
            "questions_per_s": round(self.items / s, 3),
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            # every token the model processed (prompt + generated) per second
            "tokens_per_s": round((self.prompt_tokens + self.generated_tokens) / s, 1),
            "generated_tokens_per_s": round(self.generated_tokens / s, 1),
        }


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    raise AssertionError("unreachable")


def _left_pad(rows: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), position_ids.to(device)


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (an out-of-memory shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def score_continuations(
    model,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad: int,
    batch_size: int,
    device,
    timing: Timing | None = None,
) -> list[ContinuationScore]:
    """Log-likelihood and greedy match of each continuation given its context, one forward pass per batch.

    Only the last ``max(len(continuation)) + 1`` positions go through the output head (``logits_to_keep``),
    so the vocabulary projection costs little whatever the context length.
    """
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ValueError(f"item {i}: empty {'context' if not ctx else 'continuation'}")
    out: list[ContinuationScore | None] = [None] * len(pairs)
    lengths = [len(c) + len(t) for c, t in pairs]
    _sync(device)
    start = time.perf_counter()
    for batch in progress(_batches(lengths, batch_size), "scoring", "batches"):
        rows = [list(pairs[i][0]) + list(pairs[i][1]) for i in batch]
        ids, mask, pos = _left_pad(rows, pad, device)
        keep = max(len(pairs[i][1]) for i in batch) + 1
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits[:, -keep:, :].float(), dim=-1).cpu()
        argmax = logprobs.argmax(-1)
        for row, i in enumerate(batch):
            ctx, cont = pairs[i]
            c = len(cont)
            # kept position j is absolute position width-keep+j; target t (at width-c+t) is predicted by the
            # position before it, i.e. kept index keep-c-1+t
            idx = torch.arange(keep - c - 1, keep - 1)
            target = torch.tensor(list(cont), dtype=torch.long)
            lp = logprobs[row, idx, target]
            am = argmax[row, idx]
            out[i] = ContinuationScore(
                loglik=float(lp.double().sum()),
                greedy=bool(torch.equal(am, target)),
                num_tokens=c,
                context_tokens=len(ctx),
                argmax_ids=am.tolist(),
            )
    _sync(device)
    if timing is not None:
        timing.seconds += time.perf_counter() - start
        timing.items += len(pairs)
        timing.prompt_tokens += sum(lengths)
    return out  # type: ignore[return-value]


@torch.inference_mode()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop: str,
    batch_size: int,
    device,
    timing: Timing | None = None,
) -> list[Generation]:
    """Greedy completions of ``prompts`` with transformers' ``generate`` (KV cache on), stopping a row at ``stop``
    or at the end-of-sequence token; the returned text is cut before ``stop``."""
    pad = pad_id(tokenizer)
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    out: list[Generation | None] = [None] * len(prompts)
    _sync(device)
    start = time.perf_counter()
    for batch in progress(_batches([len(e) for e in encoded], batch_size), "generating", "batches"):
        ids, mask, _ = _left_pad([encoded[i] for i in batch], pad, device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            stop_strings=[stop],
            tokenizer=tokenizer,
            pad_token_id=pad,
        )
        new = gen[:, ids.shape[1] :].cpu()
        eos = _eos_ids(model, tokenizer)
        for row, i in enumerate(batch):
            tokens = new[row].tolist()
            n = next((k for k, t in enumerate(tokens) if t in eos or t == pad), len(tokens))
            text = tokenizer.decode(tokens[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            cut = text.find(stop)
            out[i] = Generation(
                text=text if cut < 0 else text[:cut], prompt_tokens=len(encoded[i]), generated_tokens=n
            )
    _sync(device)
    if timing is not None:
        timing.seconds += time.perf_counter() - start
        timing.items += len(prompts)
        timing.prompt_tokens += sum(len(e) for e in encoded)
        timing.generated_tokens += sum(g.generated_tokens for g in out)  # type: ignore[union-attr]
    return out  # type: ignore[return-value]


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return {int(i) for i in ids}
