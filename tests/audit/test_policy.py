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


def _plan_report(tmp_path, safe: bool) -> str:
    """A calibrated report of three layers whose plan keeps the worst on float32 scales."""
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(3)]
    rows = [{"name": n, "shape": [576, 1536], "tokens": 64, "bits_fp32": 5.0, "bits_ue8m0": 5.0 - lost,
             "bits_lost": lost} for n, lost in zip(names, (2.0, 0.01, 0.01) if not safe else (0.01,) * 3,
                                                   strict=True)]
    ci = {"value": 1.0, "ci": [0.5, 1.5]}
    plan = {"float32_layers": names[:1], "ue8m0_layers": 2, "layers": 3, "ue8m0_flop_share": 2 / 3,
            "tolerance": {"kl_share": 0.2}, "within_tolerance": True,
            "e2e": {"kl_increase_pct": ci, "ppl_increase_pct": ci, "kl_share_of_ue8m0": 0.1,
                    "all_ue8m0": {"kl_increase_pct": ci, "ppl_increase_pct": ci}}}
    report = build_report(model="m", model_type="llama", level="calibrated", block_size=(128, 128), rows=rows,
                          thresholds=Thresholds(), plan=plan)
    write_report_folder(report, tmp_path / f"plan-{safe}")
    return str(tmp_path / f"plan-{safe}" / "report.json")


def test_a_plan_decides_per_layer(tmp_path, monkeypatch, capsys):
    fake_deep_gemm.install(monkeypatch)
    path = _plan_report(tmp_path, safe=False)
    verdict = load_verdict(path)
    assert verdict.float32_layers == {"model.layers.0.mlp.down_proj"} and len(verdict.ue8m0_layers) == 2
    config = BlockFP8Config(model_type="llama", audit=verdict)
    blackwell = platform_mod.detect(arch="sm_100")
    picks = {layer: select.resolve(GemmProblem(576, 1536), config, blackwell, layer=layer)
             for layer in ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_other", None)}
    assert str(picks["model.layers.1.mlp.down_proj"].backend) == "deepgemm"  # the plan allows UE8M0 here
    assert str(picks["model.layers.1.mlp.down_proj"].act_scale_fmt) == "ue8m0"
    kept = picks["model.layers.0.mlp.down_proj"]
    assert str(kept.backend) != "deepgemm" and str(kept.act_scale_fmt) == "float32" and kept.source == "audit"
    assert any("audit plan keeps float32 scales for model.layers.0.mlp.down_proj" in r for r in kept.reasons)
    for unplanned in ("lm_other", None):  # a layer the plan does not name follows the (unsafe) model verdict
        assert str(picks[unplanned].backend) != "deepgemm"
    # explicit settings still win over the plan
    forced = select.resolve(GemmProblem(576, 1536), BlockFP8Config(model_type="llama", audit=verdict,
                                                                   use_deep_gemm=True), blackwell,
                            layer="model.layers.0.mlp.down_proj")
    assert str(forced.backend) == "deepgemm" and forced.source == "config"
    monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", "0")
    off = select.resolve(GemmProblem(576, 1536), config, blackwell, layer="model.layers.1.mlp.down_proj")
    assert str(off.backend) != "deepgemm" and off.source == "env"
    monkeypatch.delenv("BLOCKFP8_USE_DEEP_GEMM")
    # explain --audit lists every audited layer's decision
    code, out = explain(capsys, "--arch", "sm_100", "--audit", path)
    layers = {c["layer"]: c for c in out["layers"]}
    assert code == 0 and len(layers) == 3
    assert layers["model.layers.0.mlp.down_proj"]["pick"] == "triton/float32"
    assert layers["model.layers.0.mlp.down_proj"]["guard"] == "DeepGEMM kept off"
    assert layers["model.layers.2.mlp.down_proj"]["pick"] == "deepgemm/ue8m0"
    assert main(["explain", "--arch", "sm_100", "--audit", path]) == 0
    text = capsys.readouterr().out
    assert "per layer (3 audited dense layers):" in text and "2 layers: deepgemm/ue8m0" in text


def test_plan_naming_unknown_layers_is_refused(tmp_path):
    path = _plan_report(tmp_path, safe=True)
    data = json.loads(open(path).read())
    data["plan"]["float32_layers"] = ["model.layers.9.mlp.up_proj"]
    open(path, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match="plan.float32_layers names layers the report does not have"):
        load_verdict(path)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_emit_says_a_plan_cannot_be_expressed(tmp_path, engine):
    from blockfp8.audit import emit
    from blockfp8.audit.report import AuditReport

    unsafe = AuditReport.load(_plan_report(tmp_path, safe=False))
    text = emit.emit(engine, unsafe)
    assert f"cannot be expressed in {engine}" in text and "its UE8M0 layers lose the fast kernel" in text
    assert ("VLLM_USE_DEEP_GEMM=0" if engine == "vllm" else "SGLANG_ENABLE_JIT_DEEPGEMM=0") in text
    safe = emit.emit(engine, AuditReport.load(_plan_report(tmp_path, safe=True)))
    assert "its 1 float32 layers lose their protection" in safe and "nothing to set" in safe
