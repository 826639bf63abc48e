"""`blockfp8 explain`: the JSON keys, the truth with and without DeepGEMM, checkpoints, exit codes, and the same
decision as the Python API."""

from __future__ import annotations

import itertools
import json

import pytest

from blockfp8 import platform as platform_mod
from blockfp8.backends import select
from blockfp8.backends.base import GemmProblem
from blockfp8.cli import main as cli_main
from blockfp8.cli.main import main
from blockfp8.config import BlockFP8Config
from tests import fake_deep_gemm

QC = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    # Only this subcommand: a sibling subcommand under construction must not break these tests.
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", {"explain": cli_main.SUBCOMMANDS["explain"]})
    for name in ("BLOCKFP8_USE_DEEP_GEMM", "BLOCKFP8_MOE_USE_DEEP_GEMM", "BLOCKFP8_GEMM_BACKEND",
                 "BLOCKFP8_DISABLED_BACKENDS", "BLOCKFP8_ARCH"):
        monkeypatch.delenv(name, raising=False)


def explain_json(capsys, *argv) -> tuple[int, dict]:
    code = main(["explain", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_done_when_without_deep_gemm(monkeypatch, capsys):
    fake_deep_gemm.hide(monkeypatch)
    code, out = explain_json(capsys, "--model-type", "qwen3_5_text", "--arch", "sm_100")
    assert code == 0
    for key in ("linear", "moe", "use_deep_gemm", "source", "reasons", "warnings"):
        assert key in out
    assert (out["linear"]["backend"], out["linear"]["scale_fmt"], out["moe"]["backend"], out["moe"]["scale_fmt"]) == \
        ("triton", "float32", "triton", "float32")
    assert out["source"] == {"linear": "default", "moe": "default"}
    assert out["use_deep_gemm"] == {"linear": False, "moe": False}
    assert "deepgemm: skipped: deep_gemm not installed" in out["reasons"]["linear"]
    assert out["warnings"] == [] and out["plan_only"] is True


def test_done_when_with_a_fake_deep_gemm(monkeypatch, capsys):
    fake_deep_gemm.install(monkeypatch)
    code, out = explain_json(capsys, "--model-type", "qwen3_5_text", "--arch", "sm_100", "--moe")
    assert code == 0
    assert out["linear"]["backend"] == "triton" and out["source"] == {"linear": "guard", "moe": "guard"}
    assert len(out["warnings"]) == 2  # one per layer kind, each naming the backend actually selected
    assert all("model_type=qwen3_5_text" in w and "UE8M0" in w and "Selected triton" in w for w in out["warnings"])
    code, out = explain_json(capsys, "--model-type", "qwen3_5_text", "--arch", "sm_100", "--use-deep-gemm", "on")
    assert (out["linear"]["backend"], out["linear"]["scale_fmt"], out["source"]["linear"]) == \
        ("deepgemm", "ue8m0", "config")
    assert len(out["warnings"]) == 1 and "accuracy risk" in out["warnings"][0]


def test_moe_warnings_count_only_for_models_with_moe_layers(monkeypatch, capsys):
    fake_deep_gemm.install(monkeypatch)
    _, dense_only = explain_json(capsys, "--model-type", "qwen3_5_text", "--arch", "sm_100")
    assert dense_only["has_moe"] is False and len(dense_only["warnings"]) == 1
    assert dense_only["moe"]["backend"] == "triton"  # still shown, for reference


CLI_CELLS = list(itertools.product(("sm_89", "sm_90", "sm_100"), (True, False), ("qwen3_5_text", "llama"),
                                   (None, "0", "1"), ("auto", "on", "off")))


@pytest.mark.parametrize("arch,dg,model_type,env,flag", CLI_CELLS)
def test_cli_and_api_reach_the_same_decision(arch, dg, model_type, env, flag, monkeypatch, capsys):
    (fake_deep_gemm.install if dg else fake_deep_gemm.hide)(monkeypatch)
    if env is not None:
        monkeypatch.setenv("BLOCKFP8_USE_DEEP_GEMM", env)
    code, out = explain_json(capsys, "--model-type", model_type, "--arch", arch, "--use-deep-gemm", flag, "--moe")
    config = BlockFP8Config(model_type=model_type, use_deep_gemm={"auto": None, "on": True, "off": False}[flag])
    plat = platform_mod.detect(arch)
    for kind in ("linear", "moe"):
        problem = GemmProblem(7168, 7168, grouped=kind == "moe", num_experts=8 if kind == "moe" else 1)
        try:
            api = select.resolve(problem, config, plat, kind=kind).as_dict()
        except select.BackendUnavailableError as exc:
            assert out[kind] == {"kind": kind, "error": str(exc)} and code == 1
            continue
        assert out[kind] == api, (arch, dg, model_type, env, flag, kind)


def test_checkpoint_config_json(tmp_path, monkeypatch, capsys):
    fake_deep_gemm.install(monkeypatch)
    cfg = {"model_type": "qwen3_5_moe", "quantization_config": {**QC, "modules_to_not_convert": ["lm_head"]},
           "text_config": {"model_type": "qwen3_5_moe_text", "hidden_size": 2048, "num_experts": 256}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, out = explain_json(capsys, "--checkpoint", str(tmp_path), "--arch", "sm_100")
    assert code == 0
    assert (out["model_type"], out["has_moe"], out["problem"]["n"], out["problem"]["num_experts"]) == \
        ("qwen3_5_moe_text", True, 2048, 256)
    assert out["source"] == {"linear": "guard", "moe": "guard"} and len(out["warnings"]) == 2
    cfg["quantization_config"]["scale_fmt"] = "ue8m0"  # UE8M0 on disk and asked for: nothing to guard against
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _, out = explain_json(capsys, "--checkpoint", str(tmp_path / "config.json"), "--arch", "sm_100")
    assert out["linear"]["backend"] == "deepgemm" and out["linear"]["requant_weight_ue8m0"] is False


@pytest.mark.parametrize("content,message", [(None, "config.json not found"), ("{not json", "not valid JSON"),
                                             ('{"model_type": "llama"}', "no quantization_config"),
                                             (json.dumps({"quantization_config": {**QC, "fmt": "e5m2"}}), "fmt")])
def test_bad_checkpoint_is_a_usage_error(content, message, tmp_path, capsys):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    assert main(["explain", "--checkpoint", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name,value,valid", [("BLOCKFP8_USE_DEEP_GEMM", "on", "valid values: 0, 1"),
                                              ("BLOCKFP8_GEMM_BACKEND", "fast", "valid values: auto, deepgemm"),
                                              ("BLOCKFP8_ARCH", "b200", "examples of valid values")])
def test_invalid_env_exits_2_listing_valid_values(name, value, valid, monkeypatch, capsys):
    monkeypatch.setenv(name, value)
    assert main(["explain", "--model-type", "llama"]) == 2
    err = capsys.readouterr().err
    assert name in err and valid in err


@pytest.mark.parametrize("bad", ["hopper", "sm_42", "9"])
def test_bad_arch_flag_exits_2_listing_the_valid_values(bad, capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "--arch", bad])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--arch: {bad!r}" in err and "sm_90, sm_100" in err and len(err.strip().splitlines()[-1]) < 300


def test_conflicting_sources_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "--model-type", "x", "--checkpoint", str(tmp_path)])
    assert info.value.code == 2


def test_an_explicit_choice_that_cannot_run_exits_1_with_the_reason(monkeypatch, capsys):
    fake_deep_gemm.hide(monkeypatch)
    code, out = explain_json(capsys, "--arch", "sm_100", "--use-deep-gemm", "on")
    assert code == 1 and "deep_gemm not installed" in out["linear"]["error"]


def test_text_output(monkeypatch, capsys):
    fake_deep_gemm.install(monkeypatch)
    assert main(["explain", "--model-type", "qwen3_5_text", "--arch", "sm_100"]) == 0
    text = capsys.readouterr().out
    assert "dense layers: triton, float32 activation scales, float32 weight scales, source: guard" in text
    assert "a plan for that GPU" in text and "warnings that would be logged (once each):" in text
