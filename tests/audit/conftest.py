"""Shared audit fixtures: a tiny random Llama with trained-looking weight scales and one dominant input channel,
and token ids for it."""

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=256, intermediate_size=384, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # a trained-looking scale instead of the tiny init
            if p.dim() == 2:
                p.normal_(0, 0.05)
        # an outlier input channel for layer 1's attention projections (q/k/v read input_layernorm's output)
        model.model.layers[1].input_layernorm.weight[7] = 60.0
    return model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(1))
