"""Hypothesis strategies shared by the tests: shapes, block sizes and value distributions."""

import torch
from hypothesis import strategies as st

DISTRIBUTIONS = ("gaussian", "heavy_tailed", "outlier_columns", "zero_blocks", "tiny", "huge", "constant")


def make_tensor(shape, dist: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if dist == "heavy_tailed":  # Student-t with 2 degrees of freedom: rare, very large values
        chi = torch.randn((*shape, 2), generator=g).pow(2).sum(-1)
        x = x / (chi / 2).sqrt().clamp(min=1e-3)
    elif dist == "outlier_columns":  # one column in ~8 is 30x larger: the activation-outlier pattern
        cols = torch.rand(shape[-1], generator=g) < 0.125
        x[..., cols] *= 30.0
    elif dist == "zero_blocks":
        x[..., : shape[-1] // 2] = 0.0
    elif dist == "tiny":
        x = x * 1e-30
    elif dist == "huge":
        x = x * 1e30
    elif dist == "constant":
        x = torch.full(shape, -3.0)
    return x


block_sizes = st.sampled_from([(128, 128), (64, 32), (1, 128), (16, 7), (3, 5)])
dims = st.integers(min_value=1, max_value=300)
distributions = st.sampled_from(DISTRIBUTIONS)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
