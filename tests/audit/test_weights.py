import json

import torch

from blockfp8 import atomic
from blockfp8.audit import weights


def test_power_of_two_scales_lose_nothing():
    # every block maximum is 448 * 2^k -> float32 scales are already powers of two -> UE8M0 identical
    w = torch.randn(256, 256).clamp(-1, 1)
    w[::128, ::128] = 448.0 * 2.0**-3
    row = weights.audit_weight("pow2", w)
    assert row.pow2_block_share == 1.0 and row.bits_lost == 0.0 and row.scale_inflation_max == 1.0


def test_bits_lost_grows_when_scale_just_above_power_of_two():
    # block maxima just above 448 * 2^k: UE8M0 nearly doubles the scale, costing about one bit of resolution
    w = torch.randn(256, 256) * 0.05
    w[::128, ::128] = 448.0 * 2.0**-3 * 1.01
    row = weights.audit_weight("worst", w)
    assert row.scale_inflation_mean > 1.9
    assert row.bits_lost > 0.5, row


def test_summary_and_json_finite(tmp_path):
    rows = [weights.audit_weight(f"l{i}", torch.randn(130, 200)) for i in range(3)]
    s = weights.summarize(rows)
    assert s["layers"] == 3 and s["max_bits_lost"] >= s["mean_bits_lost"]
    out = atomic.write_json(tmp_path / "r.json", {"layers": [r.as_dict() for r in rows], "summary": s})
    assert json.loads(out.read_text())["summary"]["layers"] == 3


def test_linear_weights_skip_the_unquantized_linears():
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 4), "lm_head": torch.nn.Linear(4, 8),
                                 "embed_tokens": torch.nn.Embedding(8, 4)})
    assert weights.UNQUANTIZED_LINEARS == ("lm_head",)
    assert [n for n, _ in weights.linear_weights(model)] == ["proj"]
    assert [n for n, _ in weights.linear_modules(model, skip=())] == ["proj", "lm_head"]
