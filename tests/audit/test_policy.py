"""A measured verdict acts like the guard: `explain --audit report.json` and `BlockFP8Config(audit=load_verdict(...))`
change the decision where DeepGEMM takes only UE8M0 scales, with the evidence in the warning."""

from __future__ import annotations

import json

import pytest

from blockfp8 import platform as platform_mod
from blockfp8.audit.report import build_report, write_report_folder
from blockfp8.audit.verdict import Thresholds, load_verdict
from blockfp8.backends import select
from blockfp8.backends.base import GemmProblem
from blockfp8.cli.main import main
from blockfp8.config import BlockFP8Config
from tests import fake_deep_gemm


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("BLOCKFP8_USE_DEEP_GEMM", "BLOCKFP8_MOE_USE_DEEP_GEMM", "BLOCKFP8_GEMM_BACKEND",
                 "BLOCKFP8_DISABLED_BACKENDS", "BLOCKFP8_ARCH"):
        monkeypatch.delenv(name, raising=False)


def _report(tmp_path, lost: float, model_type: str) -> str:
    rows = [{"name": "model.layers.0.mlp.down_proj", "bits_fp32": 5.0, "bits_ue8m0": 5.0 - lost, "bits_lost": lost}]
    report = build_report(model="m", model_type=model_type, level="calibrated", block_size=(128, 128), rows=rows,
                          thresholds=Thresholds())
    folder = tmp_path / f"{model_type}-{lost}"
    write_report_folder(report, folder)
    return str(folder / "report.json")


def explain(capsys, *argv):
    code = main(["explain", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_unsafe_verdict_keeps_deep_gemm_off_for_an_unlisted_model(tmp_path, monkeypatch, capsys):
    fake_deep_gemm.install(monkeypatch)
    code, plain = explain(capsys, "--arch", "sm_100", "--model-type", "llama")
    assert code == 0 and plain["linear"]["backend"] == "deepgemm"  # llama is not on the hand-kept list
    report = _report(tmp_path, 0.8, "llama")
    code, out = explain(capsys, "--arch", "sm_100", "--audit", report)  # model type taken from the report
    assert code == 0 and out["model_type"] == "llama" and out["audit"]["ue8m0_ok"] is False
    assert out["linear"]["backend"] != "deepgemm" and out["source"]["linear"] == "audit"
    assert len(out["warnings"]) == 1 and "measured by the audit" in out["warnings"][0]
    assert "mean 0.800 bit lost per layer" in out["warnings"][0] and "report.json" in out["warnings"][0]
    # Hopper: DeepGEMM takes float32 scales there, the verdict changes nothing
    code, hopper = explain(capsys, "--arch", "sm_90", "--audit", report)
    assert hopper["linear"]["backend"] == explain(capsys, "--arch", "sm_90", "--model-type", "llama")[1]["linear"][
        "backend"]
    # an explicit choice still outranks the verdict (same precedence as the guard)
    code, forced = explain(capsys, "--arch", "sm_100", "--audit", report, "--use-deep-gemm", "on")
    assert forced["linear"]["backend"] == "deepgemm" and forced["source"]["linear"] == "config"


def test_safe_verdict_lifts_the_lists_verdict(tmp_path, monkeypatch, capsys):
    fake_deep_gemm.install(monkeypatch)
    assert explain(capsys, "--arch", "sm_100", "--model-type", "qwen3_5_text")[1]["source"]["linear"] == "guard"
    code, out = explain(capsys, "--arch", "sm_100", "--audit", _report(tmp_path, 0.01, "qwen3_5_text"))
    assert out["linear"]["backend"] == "deepgemm" and out["warnings"] == []


def test_config_api_reaches_the_same_decision(tmp_path, monkeypatch, capsys):
    fake_deep_gemm.install(monkeypatch)
    report = _report(tmp_path, 0.8, "llama")
    config = BlockFP8Config(model_type="llama", audit=load_verdict(report))
    d = select.resolve(GemmProblem(7168, 7168), config, platform_mod.detect(arch="sm_100"))
    _, out = explain(capsys, "--arch", "sm_100", "--audit", report)
    assert (str(d.backend), d.source) == (out["linear"]["backend"], out["source"]["linear"]) and d.source == "audit"


def test_bad_report_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert main(["explain", "--audit", str(tmp_path / "x.json")]) == 2
    assert "--audit" in capsys.readouterr().err
