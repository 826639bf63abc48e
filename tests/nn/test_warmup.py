"""Warm-up is a consumer of each layer's decision: it runs the chosen backend and never another one."""

import pytest
import torch
from torch import nn

from blockfp8.backends.deepgemm import DeepGemmBackend
from blockfp8.backends.reference import ReferenceBackend
from blockfp8.backends.scaled_mm import ScaledMMBackend
from blockfp8.backends.triton import TritonBackend
from blockfp8.nn import BlockFP8Experts, BlockFP8Linear, warmup


def small_model():
    torch.manual_seed(0)
    lin = BlockFP8Linear.from_linear(nn.Linear(192, 320), name="proj")
    experts = BlockFP8Experts.from_fused(torch.randn(3, 2 * 160, 192) * 0.05, torch.randn(3, 192, 160) * 0.05,
                                         name="experts")
    return nn.ModuleDict({"proj": lin, "experts": experts})


def test_warmup_runs_only_the_decided_backend(monkeypatch):
    model = small_model()
    calls = {}
    for cls in (ReferenceBackend, TritonBackend, ScaledMMBackend, DeepGemmBackend):
        for method in ("gemm", "moe"):
            original = getattr(cls, method, None)
            if original is None:
                continue

            def spy(self, *args, _key=(cls.__name__, method), _original=original, **kwargs):
                calls[_key] = calls.get(_key, 0) + 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, method, spy)
    records = warmup(model, tokens=(1, 5))
    assert [(r.name, r.kind, r.backend, r.tokens) for r in records] == [
        ("proj", "linear", "reference", (1, 5)), ("experts", "moe", "reference", (1, 5))]
    # the linear's GEMM once per token count; the MoE as one grouped call per token count (the reference backend
    # runs a whole MoE as one operator)
    assert calls == {("ReferenceBackend", "gemm"): 2, ("ReferenceBackend", "moe"): 2}


def test_warmup_refuses_unprocessed_layers_and_bad_tokens():
    lin = BlockFP8Linear.from_linear(nn.Linear(128, 128), name="p", process=False)
    with pytest.raises(RuntimeError, match="process_weights_after_loading"):
        warmup(nn.Sequential(lin))
    with pytest.raises(ValueError, match="positive token counts"):
        warmup(small_model(), tokens=(0,))
