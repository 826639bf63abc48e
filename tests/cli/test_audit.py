"""`blockfp8 audit`: exit codes, the printed verdict, --json / --report / --emit, threshold flags."""

import json

import pytest
import torch

from blockfp8.audit.report import comparable
from blockfp8.cli.main import main
from blockfp8.testing.synthetic import synthetic_weight, write_fp8_checkpoint


@pytest.fixture
def three_kinds(tmp_path):
    weights = {f"model.layers.{i}.mlp.down_proj": synthetic_weight((300, 520), kind, seed=i)
               for i, kind in enumerate(("gaussian", "pow2", "outlier"))}
    return write_fp8_checkpoint(tmp_path / "ckpt", weights, extra={"model.embed_tokens.weight": torch.randn(64, 32)})


def test_cli_bad_checkpoint_exits_1_naming_it(three_kinds, capsys):
    (three_kinds / "model.safetensors").write_bytes(b"garbage")
    assert main(["audit", str(three_kinds)]) == 1
    assert "model.safetensors" in capsys.readouterr().err


def test_cli_checkpoint_audit_json_report_and_emit(three_kinds, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["audit", str(three_kinds), "--json", str(out), "--report", str(tmp_path / "rep"),
                 "--emit", "vllm", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "verdict for UE8M0 scales: UNSAFE" in text
    assert "export VLLM_USE_DEEP_GEMM=0" in text and "--linear-backend cutlass" in text
    assert comparable(json.loads(out.read_text())) == comparable(json.loads((tmp_path / "rep/report.json").read_text()))
    assert main(["audit", str(three_kinds), "--strict", "--no-progress"]) == 1
    # a threshold above every loss flips the verdict
    assert main(["audit", str(three_kinds), "--strict", "--no-progress", "--layer-bits-lost", "5",
                 "--mean-bits-lost", "5", "--emit", "sglang"]) == 0
    text = capsys.readouterr().out
    assert "verdict for UE8M0 scales: SAFE" in text and "nothing to set" in text


def test_cli_usage_errors():
    for argv in (["audit"], ["audit", "x", "--model", "smollm2"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert main(["audit", "x", "--calib", "4"]) == 2
    assert main(["audit", "x", "--layer-bits-lost", "-1"]) == 2


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
