import json

import pytest
import torch

from blockfp8.audit import weights
from blockfp8.cli.main import main


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
    from blockfp8.audit.report import write_json_atomic

    out = write_json_atomic(tmp_path / "r.json", {"layers": [r.as_dict() for r in rows], "summary": s})
    assert json.loads(out.read_text())["summary"]["layers"] == 3


def test_json_writer_refuses_nan_and_leaves_nothing(tmp_path):
    from blockfp8.audit.report import write_json_atomic

    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "r.json", {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_weights_only_audit_on_smollm2(tmp_path, capsys):
    out = tmp_path / "audit.json"
    assert main(["audit", "--model", "smollm2", "--weights-only", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model.layers.29.mlp.down_proj" in text and "summary:" in text
    report = json.loads(out.read_text())
    assert len(report["layers"]) == 210
    row = report["layers"][0]
    assert row["shape"] == [576, 576] and 4.5 < row["bits_fp32"] < 6.0 and 1.0 <= row["scale_inflation_mean"] < 2.0
    assert report["summary"]["mean_bits_fp32"] >= report["summary"]["mean_bits_ue8m0"]
