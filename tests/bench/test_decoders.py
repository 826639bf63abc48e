"""The model benchmark's decoders: the blockfp8 variant is built from the library's layers, the bf16 grouped MoE
baseline computes what a per-expert loop computes, and both run prefill and decode (CPU, tiny configs)."""

import torch

from blockfp8.bench import decoders
from blockfp8.nn import BlockFP8Experts, BlockFP8Linear

DENSE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             vocab_size=1000, rms_norm_eps=1e-6)
MOE = dict(DENSE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128)


@torch.inference_mode()
def test_bf16_grouped_moe_matches_a_per_expert_loop():
    torch.manual_seed(0)
    e, h, i, t, k = 4, 64, 32, 9, 2
    w13, w2 = torch.randn(e, 2 * i, h) * 0.1, torch.randn(e, h, i) * 0.1
    x = torch.randn(t, h)
    weights, ids = decoders.route(torch.randn(t, e), k)
    got = decoders.Bf16GroupedMoE(w13, w2)(x, ids, weights)
    want = torch.zeros(t, h)
    for tok in range(t):
        for j in range(k):
            g, u = (w13[ids[tok, j]] @ x[tok]).split(i)
            want[tok] += weights[tok, j] * (w2[ids[tok, j]] @ (torch.nn.functional.silu(g) * u))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


@torch.inference_mode()
def test_decoders_use_the_library_layers_and_run_both_phases():
    for cfg in (DENSE, MOE):
        torch.manual_seed(0)
        model = decoders.Decoder(cfg, fp8=True, layers=2, device="cpu")
        kinds = {type(m) for m in model.modules()}
        assert BlockFP8Linear in kinds and not any(isinstance(m, decoders.Bf16Linear) for m in model.modules())
        assert (BlockFP8Experts in kinds) == ("num_experts" in cfg)
        ids = torch.randint(0, cfg["vocab_size"], (2, 5))
        assert tuple(model(ids, torch.arange(5)).shape) == (2, cfg["vocab_size"])
        decode = model(ids[:, :1], torch.tensor([16]), model.new_caches(2, 16))
        assert tuple(decode.shape) == (2, cfg["vocab_size"]) and bool(torch.isfinite(decode.float()).all())
