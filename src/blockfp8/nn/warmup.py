"""Warm-up before serving: run every block-FP8 layer once per token count through *its own* decision.

Each kernel the policy chose is built (Triton JIT, cuBLASLt heuristics) before the first request, and no kernel
the policy did not choose is touched: warm-up is one more consumer of the decision, not a second probe (vLLM's
warm-up crashed on a DeepGEMM kernel that the configuration had disabled, vLLM issues 47130/47169).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from blockfp8.nn.linear import BlockFP8Linear
from blockfp8.nn.moe import BlockFP8Experts

DEFAULT_TOKENS = (1, 16, 128, 512)


@dataclass(frozen=True)
class WarmupRecord:
    name: str
    kind: str  # "linear" | "moe"
    backend: str  # read from the layer's decision
    tokens: tuple[int, ...]


def _check_tokens(tokens: Sequence[int]) -> tuple[int, ...]:
    out = tuple(tokens)
    if not out or any(isinstance(t, bool) or not isinstance(t, int) or t <= 0 for t in out):
        raise ValueError(f"tokens={tokens!r}: expected a non-empty list of positive token counts")
    return out


def warmup(model: nn.Module, tokens: Sequence[int] = DEFAULT_TOKENS) -> list[WarmupRecord]:
    """Run each BlockFP8Linear and BlockFP8Experts of ``model`` on ``tokens`` rows of zeros; returns what ran."""
    counts = _check_tokens(tokens)
    records = []
    with torch.inference_mode():
        for name, mod in model.named_modules():
            if isinstance(mod, BlockFP8Linear):
                if mod.decision is None:
                    raise RuntimeError(f"{name}: call process_weights_after_loading() before warmup()")
                for m in counts:
                    mod(torch.zeros(m, mod.in_features, dtype=mod.params_dtype, device=mod.weight.device))
                records.append(WarmupRecord(name, "linear", str(mod.decision.backend), counts))
            elif isinstance(mod, BlockFP8Experts):
                if mod.decision is None:
                    raise RuntimeError(f"{name}: call process_weights_after_loading() before warmup()")
                device = mod.w13_weight.device
                for m in counts:
                    # every expert gets tokens, so every per-expert shape / the grouped kernel is exercised
                    idx = (torch.arange(m * 2, device=device) % mod.num_experts).view(m, 2)
                    weights = torch.full((m, 2), 0.5, device=device)
                    mod(torch.zeros(m, mod.hidden_size, dtype=mod.params_dtype, device=device), idx, weights)
                records.append(WarmupRecord(name, "moe", str(mod.decision.backend), counts))
    return records
